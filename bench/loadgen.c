/* bench/loadgen.c: many SSE streams from one cheap process (see the "Scale"
 * section of docs/PERFORMANCE.md).
 *
 *   loadgen --port P --tokens FILE [--cookie NAME] [--src 127.0.0.2]
 *           [--concurrency 64] [--jitter-ms 1000] [--retry-ms 3000] [--seed S]
 *
 * One thread, one epoll set (level-triggered), non-blocking sockets. Each
 * stream is `GET /events/` with one bearer token (line i of FILE; with
 * --cookie NAME, the cookie NAME=<line i>, e.g. sessionid) and behaves
 * like EventSource: on EOF or reset it reconnects after the last `retry:`
 * (ms) plus a random 0..jitter-ms, sending `Last-Event-ID`. 429 and 503 wait
 * for Retry-After (s) plus the jitter; any other non-200 waits for the retry
 * delay plus the jitter; every non-200 is counted by status.
 *
 * Control is line commands on stdin, one JSON line answered on stdout each:
 *   open N      open streams until N exist (tokens 0..N-1), at most
 *               --concurrency of them connecting at a time (reconnects are
 *               not bounded, like browsers)
 *   stats       counters, CPU (getrusage), ready/reconnect timings
 *   counts      per notification id: streams that got it
 *   arrivals    per id: count, first and last arrival (CLOCK_REALTIME ns)
 *               and a histogram of arrival - first arrival (ms buckets)
 *   reset       zero counters, timings and per-id records (streams stay)
 *   quit
 *
 * Memory per stream is one small struct: the HTTP head, chunk framing and
 * SSE lines are parsed byte by byte through a 64-byte line buffer (only the
 * start of each line matters), reading into one shared buffer.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define LINE 64
#define NB 1024 /* histogram buckets: exact ms below 256, then 64 per octave */
#define MAX_IDS 4096

enum state { IDLE, WAITING, CONNECTING, SENDING, HEAD, BODY };
enum chunk { C_SIZE, C_EXT, C_DATA, C_DATA_CR, C_DATA_LF, C_DONE };

typedef struct {
    int fd;
    uint8_t state, chunk, chunked, counted_connecting, ever_ready;
    uint8_t live, have_ready_id, is_ready_event, head_line, has_data;
    uint16_t line_len, sent;
    int status, retry_after;
    uint32_t chunk_left;
    int64_t last_id;     /* last `id:` received (Last-Event-ID); -1 = none */
    int64_t seen_id;     /* for dup/gap counting: last id or ready's last_id */
    int64_t event_id;    /* `id:` of the event being parsed, -1 none */
    int64_t connect_ns;  /* when this attempt started */
    int64_t lost_ns;     /* when the connection was lost, 0 = not lost */
    int64_t due_ns;      /* WAITING: when to connect */
    int retry_ms;
    char line[LINE];
} stream_t;

typedef struct {
    int64_t id;
    uint32_t count;
    int64_t first_ns, last_ns;
    uint32_t *hist;
} idrec_t;

static stream_t *streams;
static int nstreams, wanted;
static char **tokens;
static int ntokens;
static struct sockaddr_in dst, src;
static int use_src;
static int ep;
static const char *cookie_name; /* --cookie NAME: FILE holds session ids */
static int concurrency = 64, jitter_ms = 1000, default_retry_ms = 3000;
static int connecting_bounded; /* initial opens in flight */
static uint64_t rng = 88172645463325252ULL;

/* heap of waiting streams by due_ns */
static int *heap;
static int heap_n;

/* counters */
static uint64_t c_events, c_dups, c_gaps, c_losses, c_ended, c_reconnects, c_conn_err,
    c_pings, c_opened, c_resets_ev, c_revoked;
static uint64_t c_status[600];
static int64_t first_ready_ns, last_ready_ns;
static uint32_t h_ready[NB], h_reconnect[NB];
static idrec_t ids[MAX_IDS];

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static uint64_t rnd(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static int bucket(int64_t ms) {
    if (ms < 0) ms = 0;
    if (ms < 256) return (int)ms;
    int octave = 63 - __builtin_clzll((uint64_t)ms); /* >= 8 */
    int sub = (int)((ms >> (octave - 6)) & 63);
    int b = 256 + (octave - 8) * 64 + sub;
    return b < NB ? b : NB - 1;
}

static int64_t bucket_lo(int b) {
    if (b < 256) return b;
    int octave = (b - 256) / 64 + 8, sub = (b - 256) % 64;
    return ((int64_t)(64 + sub)) << (octave - 6);
}

/* ---- timer heap ---- */
static void heap_swap(int a, int b) {
    int t = heap[a];
    heap[a] = heap[b];
    heap[b] = t;
}
static void heap_push(int s) {
    int i = heap_n++;
    heap[i] = s;
    while (i > 0) {
        int p = (i - 1) / 2;
        if (streams[heap[p]].due_ns <= streams[heap[i]].due_ns) break;
        heap_swap(i, p);
        i = p;
    }
}
static int heap_pop(void) {
    int top = heap[0];
    heap[0] = heap[--heap_n];
    int i = 0;
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < heap_n && streams[heap[l]].due_ns < streams[heap[m]].due_ns) m = l;
        if (r < heap_n && streams[heap[r]].due_ns < streams[heap[m]].due_ns) m = r;
        if (m == i) break;
        heap_swap(i, m);
        i = m;
    }
    return top;
}

/* ---- connections ---- */
static void start_connect(int i);

static void close_fd(stream_t *s) {
    if (s->fd >= 0) {
        close(s->fd); /* also removes it from the epoll set */
        s->fd = -1;
    }
    if (s->counted_connecting) {
        s->counted_connecting = 0;
        connecting_bounded--;
    }
}

static void schedule(int i, int delay_ms) {
    stream_t *s = &streams[i];
    close_fd(s);
    s->state = WAITING;
    int64_t j = jitter_ms > 0 ? (int64_t)(rnd() % (uint64_t)(jitter_ms + 1)) : 0;
    s->due_ns = now_ns() + ((int64_t)delay_ms + j) * 1000000LL;
    heap_push(i);
}

/* The connection ended or failed: a loss when it was streaming, else a
 * connection error. Either way, retry like EventSource. */
static void lost(int i) {
    stream_t *s = &streams[i];
    if (s->live) {
        s->live = 0;
        s->lost_ns = now_ns();
        c_losses++;
    } else {
        c_conn_err++;
    }
    schedule(i, s->retry_ms);
}

static void start_connect(int i) {
    stream_t *s = &streams[i];
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        c_conn_err++;
        s->fd = -1;
        schedule(i, s->retry_ms);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (use_src) {
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (bind(fd, (struct sockaddr *)&src, sizeof src) < 0) {
            close(fd);
            c_conn_err++;
            s->fd = -1;
            schedule(i, s->retry_ms);
            return;
        }
    }
    s->fd = fd;
    s->state = CONNECTING;
    s->sent = 0;
    s->line_len = 0;
    s->head_line = 0;
    s->status = 0;
    s->retry_after = -1;
    s->chunked = 0;
    s->chunk = C_SIZE;
    s->chunk_left = 0;
    s->event_id = -1;
    s->is_ready_event = 0;
    s->has_data = 0;
    s->connect_ns = now_ns();
    int r = connect(fd, (struct sockaddr *)&dst, sizeof dst);
    if (r < 0 && errno != EINPROGRESS) {
        lost(i);
        return;
    }
    struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = (uint32_t)i};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
}

static int build_request(int i, char *buf, size_t cap) {
    stream_t *s = &streams[i];
    int n = cookie_name
                ? snprintf(buf, cap,
                           "GET /events/ HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: %s=%s\r\n",
                           cookie_name, tokens[i])
                : snprintf(buf, cap,
                           "GET /events/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                           "Authorization: Bearer %s\r\n",
                           tokens[i]);
    n += snprintf(buf + n, cap - n, "Accept: text/event-stream\r\nCache-Control: no-cache\r\n");
    if (s->last_id >= 0) n += snprintf(buf + n, cap - n, "Last-Event-ID: %lld\r\n", (long long)s->last_id);
    n += snprintf(buf + n, cap - n, "\r\n");
    return n;
}

static void on_writable(int i) {
    stream_t *s = &streams[i];
    if (s->state == CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            lost(i);
            return;
        }
        s->state = SENDING;
    }
    char req[1024];
    int n = build_request(i, req, sizeof req);
    ssize_t w = send(s->fd, req + s->sent, (size_t)(n - s->sent), MSG_NOSIGNAL);
    if (w < 0) {
        if (errno == EAGAIN) return;
        lost(i);
        return;
    }
    s->sent += (uint16_t)w;
    if (s->sent < n) return;
    s->state = HEAD;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.u32 = (uint32_t)i};
    epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev);
}

/* ---- per-id records ---- */
/* One slot per id modulo MAX_IDS; a newer id takes over an older one's slot. */
static idrec_t *idrec(int64_t id) {
    idrec_t *r = &ids[id % MAX_IDS];
    if (r->count && r->id != id) {
        if (id < r->id) return NULL;
        r->count = 0;
        memset(r->hist, 0, NB * sizeof(uint32_t));
    }
    r->id = id;
    return r;
}

static void arrival(int64_t id, int64_t t) {
    idrec_t *r = idrec(id);
    if (!r) return;
    if (!r->hist) r->hist = calloc(NB, sizeof(uint32_t));
    if (r->count == 0 || t < r->first_ns) r->first_ns = t;
    if (r->count == 0) r->last_ns = t;
    if (t > r->last_ns) r->last_ns = t;
    r->count++;
    r->hist[bucket((t - r->first_ns) / 1000000)]++;
}

/* ---- SSE ---- */
static int64_t parse_int(const char *p) {
    while (*p == ' ') p++;
    int64_t v = 0;
    int any = 0;
    while (*p >= '0' && *p <= '9') {
        v = v * 10 + (*p++ - '0');
        any = 1;
    }
    return any ? v : -1;
}

static void dispatch(int i, int64_t t) {
    stream_t *s = &streams[i];
    if (s->is_ready_event) {
        if (!s->ever_ready) c_opened++;
        s->ever_ready = 1;
        s->live = 1;
        if (s->counted_connecting) {
            s->counted_connecting = 0;
            connecting_bounded--;
        }
        h_ready[bucket((t - s->connect_ns) / 1000000)]++;
        if (s->lost_ns) {
            h_reconnect[bucket((t - s->lost_ns) / 1000000)]++;
            c_reconnects++;
            s->lost_ns = 0;
        }
        if (!first_ready_ns || t < first_ready_ns) first_ready_ns = t;
        if (t > last_ready_ns) last_ready_ns = t;
    } else if (s->event_id >= 0 && !s->has_data) {
        /* `id:` without data (a stopping worker's last frame): no event, but
         * EventSource's last event id, sent when it reconnects. */
        s->last_id = s->event_id;
    } else if (s->event_id >= 0) {
        int64_t id = s->event_id;
        c_events++;
        if (id <= s->seen_id) {
            c_dups++;
        } else {
            if (s->seen_id > 0 && id > s->seen_id + 1) c_gaps += (uint64_t)(id - s->seen_id - 1);
            s->seen_id = id;
            arrival(id, t);
        }
        s->last_id = id;
    }
    s->event_id = -1;
    s->is_ready_event = 0;
    s->has_data = 0;
}

static void sse_line(int i, int64_t t) {
    stream_t *s = &streams[i];
    char *l = s->line;
    l[s->line_len < LINE ? s->line_len : LINE - 1] = 0;
    if (s->line_len == 0) {
        dispatch(i, t);
        return;
    }
    if (l[0] == ':') {
        if (strncmp(l, ": ping", 6) == 0) c_pings++;
        return;
    }
    if (strncmp(l, "id:", 3) == 0) {
        s->event_id = parse_int(l + 3);
    } else if (strncmp(l, "event:", 6) == 0) {
        const char *v = l + 6;
        while (*v == ' ') v++;
        if (strcmp(v, "ready") == 0) s->is_ready_event = 1;
        else if (strcmp(v, "reset") == 0) c_resets_ev++;
        else if (strcmp(v, "revoked") == 0) c_revoked++;
    } else if (strncmp(l, "retry:", 6) == 0) {
        int64_t v = parse_int(l + 6);
        if (v >= 0) s->retry_ms = (int)v;
    } else if (strncmp(l, "data:", 5) == 0) {
        s->has_data = 1;
        const char *p = s->have_ready_id ? NULL : strstr(l, "\"last_id\":");
        if (p && s->is_ready_event) {
            int64_t v = parse_int(p + 10);
            if (v >= 0 && s->seen_id == 0) s->seen_id = v;
            s->have_ready_id = 1;
        }
    }
}

/* SSE bytes: keep the first LINE-1 bytes of each line, act on each LF
 * (memchr finds it, so the long data lines cost one scan). */
static void sse_bytes(int i, const char *p, size_t n, int64_t t) {
    stream_t *s = &streams[i];
    while (n) {
        const char *nl = memchr(p, '\n', n);
        size_t len = nl ? (size_t)(nl - p) : n;
        size_t room = s->line_len < LINE - 1 ? LINE - 1 - s->line_len : 0;
        size_t copy = len < room ? len : room;
        memcpy(s->line + s->line_len, p, copy);
        size_t total = s->line_len + len;
        s->line_len = (uint16_t)(total < 0xffff ? total : 0xffff);
        if (!nl) return;
        /* the server ends lines with LF; drop a CR before it */
        if (s->line_len && s->line_len <= LINE - 1 && s->line[s->line_len - 1] == '\r') s->line_len--;
        sse_line(i, t);
        s->line_len = 0;
        p = nl + 1;
        n -= len + 1;
    }
}

/* ---- HTTP head ---- */
static int head_line(int i) {
    stream_t *s = &streams[i];
    char *l = s->line;
    int n = s->line_len < LINE ? s->line_len : LINE - 1;
    l[n] = 0;
    if (s->head_line == 0) {
        s->head_line = 1;
        s->status = (int)parse_int(strchr(l, ' ') ? strchr(l, ' ') : l);
        return 0;
    }
    if (n == 0) return 1; /* end of head */
    if (strncasecmp(l, "transfer-encoding:", 18) == 0 && strcasestr(l, "chunked")) s->chunked = 1;
    if (strncasecmp(l, "retry-after:", 12) == 0) s->retry_after = (int)parse_int(l + 12);
    return 0;
}

static void head_done(int i) {
    stream_t *s = &streams[i];
    int st = s->status;
    c_status[st > 0 && st < 600 ? st : 0]++;
    s->line_len = 0;
    if (st == 200) {
        s->state = BODY;
        s->event_id = -1;
        s->have_ready_id = 0;
        return;
    }
    if ((st == 429 || st == 503) && s->retry_after >= 0) {
        schedule(i, s->retry_after * 1000);
    } else {
        schedule(i, s->retry_ms);
    }
}

/* The response ended (its last chunk): EventSource reconnects after `retry:`,
 * whether or not the connection stays open. */
static void ended(int i) {
    c_ended++;
    lost(i);
}

static void body_bytes(int i, const char *p, size_t n, int64_t t) {
    stream_t *s = &streams[i];
    if (!s->chunked) {
        sse_bytes(i, p, n, t);
        return;
    }
    for (size_t k = 0; k < n && s->state == BODY; k++) {
        char c = p[k];
        switch (s->chunk) {
        case C_SIZE:
            if (c == '\n') {
                s->chunk = s->chunk_left ? C_DATA : C_DONE;
            } else if (c == ';') {
                s->chunk = C_EXT;
            } else if (c != '\r') {
                int v = (c >= '0' && c <= '9') ? c - '0' : (c | 32) - 'a' + 10;
                s->chunk_left = s->chunk_left * 16 + (uint32_t)v;
            }
            break;
        case C_EXT:
            if (c == '\n') s->chunk = s->chunk_left ? C_DATA : C_DONE;
            break;
        case C_DATA: {
            size_t take = n - k < s->chunk_left ? n - k : s->chunk_left;
            sse_bytes(i, p + k, take, t);
            k += take - 1;
            s->chunk_left -= (uint32_t)take;
            if (!s->chunk_left) s->chunk = C_DATA_CR;
            break;
        }
        case C_DATA_CR:
            s->chunk = C_DATA_LF;
            break;
        case C_DATA_LF:
            s->chunk = C_SIZE;
            break;
        case C_DONE:
            break; /* not reached: the stream is closed below once it gets here */
        }
        if (s->chunk == C_DONE) {
            ended(i);
            return;
        }
    }
}

static char rbuf[1 << 16];

static void on_readable(int i) {
    stream_t *s = &streams[i];
    ssize_t n = recv(s->fd, rbuf, sizeof rbuf, 0);
    if (n < 0 && errno == EAGAIN) return;
    if (n <= 0) {
        lost(i);
        return;
    }
    int64_t t = now_ns();
    size_t k = 0;
    while (s->state == HEAD && k < (size_t)n) {
        char c = rbuf[k++];
        if (c == '\r') continue;
        if (c == '\n') {
            if (head_line(i)) {
                head_done(i);
                if (s->state != BODY) return;
            }
            s->line_len = 0;
            continue;
        }
        if (s->line_len < LINE - 1) s->line[s->line_len] = c;
        if (s->line_len < 0xffff) s->line_len++;
    }
    if (s->state == BODY && k < (size_t)n) body_bytes(i, rbuf + k, (size_t)n - k, t);
}

/* ---- commands ---- */
static void pump_opens(void) {
    while (nstreams < wanted && connecting_bounded < concurrency) {
        int i = nstreams++;
        streams[i].last_id = -1;  /* no id yet: no Last-Event-ID */
        streams[i].counted_connecting = 1;
        connecting_bounded++;
        start_connect(i);
    }
}

static void print_hist(const uint32_t *h) {
    int first = 1;
    putchar('[');
    for (int b = 0; b < NB; b++) {
        if (!h[b]) continue;
        printf("%s[%lld,%u]", first ? "" : ",", (long long)bucket_lo(b), h[b]);
        first = 0;
    }
    putchar(']');
}

static void cmd_stats(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    int ready = 0, waiting = 0, connecting = 0;
    for (int i = 0; i < nstreams; i++) {
        stream_t *s = &streams[i];
        if (s->live) ready++;
        else if (s->state == WAITING) waiting++;
        else connecting++;
    }
    printf("{\"t\":%lld,\"streams\":%d,\"ready\":%d,\"waiting\":%d,\"connecting\":%d,"
           "\"opened\":%llu,\"events\":%llu,\"dups\":%llu,\"gaps\":%llu,\"losses\":%llu,\"ended\":%llu,"
           "\"reconnects\":%llu,\"conn_errors\":%llu,\"pings\":%llu,\"reset_events\":%llu,"
           "\"revoked\":%llu,\"cpu_user\":%.3f,\"cpu_sys\":%.3f,\"maxrss_kb\":%ld,"
           "\"first_ready_ns\":%lld,\"last_ready_ns\":%lld,\"status\":{",
           (long long)now_ns(), nstreams, ready, waiting, connecting,
           (unsigned long long)c_opened, (unsigned long long)c_events,
           (unsigned long long)c_dups, (unsigned long long)c_gaps,
           (unsigned long long)c_losses, (unsigned long long)c_ended,
           (unsigned long long)c_reconnects,
           (unsigned long long)c_conn_err, (unsigned long long)c_pings,
           (unsigned long long)c_resets_ev, (unsigned long long)c_revoked,
           ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6,
           ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6, ru.ru_maxrss,
           (long long)first_ready_ns, (long long)last_ready_ns);
    int first = 1;
    for (int st = 0; st < 600; st++) {
        if (!c_status[st]) continue;
        printf("%s\"%d\":%llu", first ? "" : ",", st, (unsigned long long)c_status[st]);
        first = 0;
    }
    printf("},\"ready_ms\":");
    print_hist(h_ready);
    printf(",\"reconnect_ms\":");
    print_hist(h_reconnect);
    printf("}\n");
}

static void cmd_ids(int full) {
    printf("{\"ids\":[");
    int first = 1;
    for (int k = 0; k < MAX_IDS; k++) {
        idrec_t *r = &ids[k];
        if (!r->count) continue;
        if (full) {
            printf("%s{\"id\":%lld,\"n\":%u,\"first\":%lld,\"last\":%lld,\"h\":", first ? "" : ",",
                   (long long)r->id, r->count, (long long)r->first_ns, (long long)r->last_ns);
            print_hist(r->hist);
            putchar('}');
        } else {
            printf("%s[%lld,%u]", first ? "" : ",", (long long)r->id, r->count);
        }
        first = 0;
    }
    printf("]}\n");
}

static void cmd_reset(void) {
    c_events = c_dups = c_gaps = c_losses = c_ended = c_reconnects = c_conn_err = c_pings = 0;
    c_resets_ev = c_revoked = 0;
    memset(c_status, 0, sizeof c_status);
    memset(h_ready, 0, sizeof h_ready);
    memset(h_reconnect, 0, sizeof h_reconnect);
    first_ready_ns = last_ready_ns = 0;
    for (int k = 0; k < MAX_IDS; k++) {
        ids[k].count = 0;
        if (ids[k].hist) memset(ids[k].hist, 0, NB * sizeof(uint32_t));
    }
    printf("{\"ok\":true}\n");
}

static char cmdbuf[4096];
static size_t cmdlen;

static int on_stdin(void) {
    ssize_t n = read(0, cmdbuf + cmdlen, sizeof cmdbuf - 1 - cmdlen);
    if (n <= 0) return 0;
    cmdlen += (size_t)n;
    char *nl;
    while ((nl = memchr(cmdbuf, '\n', cmdlen))) {
        *nl = 0;
        if (strncmp(cmdbuf, "open ", 5) == 0) {
            int n_open = atoi(cmdbuf + 5);
            if (n_open > ntokens) n_open = ntokens;
            if (n_open > wanted) wanted = n_open;
            pump_opens();
            printf("{\"ok\":true,\"wanted\":%d}\n", wanted);
        } else if (strcmp(cmdbuf, "stats") == 0) {
            cmd_stats();
        } else if (strcmp(cmdbuf, "counts") == 0) {
            cmd_ids(0);
        } else if (strcmp(cmdbuf, "arrivals") == 0) {
            cmd_ids(1);
        } else if (strcmp(cmdbuf, "reset") == 0) {
            cmd_reset();
        } else if (strcmp(cmdbuf, "quit") == 0) {
            fflush(stdout);
            return 0;
        } else {
            printf("{\"error\":\"unknown command\"}\n");
        }
        fflush(stdout);
        size_t used = (size_t)(nl - cmdbuf) + 1;
        memmove(cmdbuf, cmdbuf + used, cmdlen - used);
        cmdlen -= used;
    }
    if (cmdlen == sizeof cmdbuf - 1) cmdlen = 0;
    return 1;
}

static void load_tokens(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) {
        perror(path);
        exit(2);
    }
    char line[512];
    int cap = 1024;
    tokens = malloc(sizeof(char *) * (size_t)cap);
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = 0;
        if (!line[0]) continue;
        if (ntokens == cap) tokens = realloc(tokens, sizeof(char *) * (size_t)(cap *= 2));
        tokens[ntokens++] = strdup(line);
    }
    fclose(f);
}

int main(int argc, char **argv) {
    const char *token_file = NULL, *src_addr = NULL;
    int port = 0;
    for (int a = 1; a + 1 < argc; a += 2) {
        if (!strcmp(argv[a], "--port")) port = atoi(argv[a + 1]);
        else if (!strcmp(argv[a], "--tokens")) token_file = argv[a + 1];
        else if (!strcmp(argv[a], "--src")) src_addr = argv[a + 1];
        else if (!strcmp(argv[a], "--cookie")) cookie_name = argv[a + 1];
        else if (!strcmp(argv[a], "--concurrency")) concurrency = atoi(argv[a + 1]);
        else if (!strcmp(argv[a], "--jitter-ms")) jitter_ms = atoi(argv[a + 1]);
        else if (!strcmp(argv[a], "--retry-ms")) default_retry_ms = atoi(argv[a + 1]);
        else if (!strcmp(argv[a], "--seed")) rng ^= (uint64_t)strtoull(argv[a + 1], NULL, 10) * 2654435761ULL;
        else {
            fprintf(stderr, "unknown option %s\n", argv[a]);
            return 2;
        }
    }
    if (!port || !token_file) {
        fprintf(stderr, "usage: loadgen --port P --tokens FILE [--cookie NAME] [--src ADDR] [--concurrency N]"
                        " [--jitter-ms MS] [--retry-ms MS] [--seed S]\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    load_tokens(token_file);
    streams = calloc((size_t)ntokens + 1, sizeof(stream_t));
    heap = malloc(sizeof(int) * ((size_t)ntokens + 1));
    for (int i = 0; i < ntokens; i++) {
        streams[i].fd = -1;
        streams[i].retry_ms = default_retry_ms;
    }
    dst.sin_family = AF_INET;
    dst.sin_port = htons((uint16_t)port);
    inet_pton(AF_INET, "127.0.0.1", &dst.sin_addr);
    if (src_addr) {
        src.sin_family = AF_INET;
        src.sin_port = 0;
        if (inet_pton(AF_INET, src_addr, &src.sin_addr) != 1) {
            fprintf(stderr, "bad --src %s\n", src_addr);
            return 2;
        }
        use_src = 1;
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
    struct epoll_event sev = {.events = EPOLLIN, .data.u32 = UINT32_MAX};
    epoll_ctl(ep, EPOLL_CTL_ADD, 0, &sev);
    struct epoll_event evs[512];
    for (;;) {
        int timeout = 100;
        if (heap_n) {
            int64_t wait = (streams[heap[0]].due_ns - now_ns()) / 1000000;
            timeout = wait < 0 ? 0 : wait < 100 ? (int)wait : 100;
        }
        int n = epoll_wait(ep, evs, 512, timeout);
        for (int k = 0; k < n; k++) {
            uint32_t i = evs[k].data.u32;
            if (i == UINT32_MAX) {
                if (!on_stdin()) return 0;
                continue;
            }
            stream_t *s = &streams[i];
            if (s->fd < 0) continue;
            if (s->state == CONNECTING || s->state == SENDING) {
                if (evs[k].events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) on_writable((int)i);
            } else if (evs[k].events & (EPOLLIN | EPOLLERR | EPOLLHUP | EPOLLRDHUP)) {
                on_readable((int)i);
            }
        }
        int64_t t = now_ns();
        while (heap_n && streams[heap[0]].due_ns <= t) {
            int i = heap_pop();
            if (streams[i].state == WAITING) start_connect(i);
        }
        pump_opens();
    }
}
