/**
 * notify.js: live notifications in the browser over Server-Sent Events.
 *
 *   import { connect } from "/static/js/notify.js";
 *   const client = connect({ url: "/events/", lastEventId: 41, shareKey: "7" });
 *   client.on("notification", (n) => …);  // wire JSON; every id exactly once
 *   client.on("read", (change) => …);     // {ids: […]} or {all: true, up_to: N}
 *   client.on("state", (s) => …);         // {status, transport, role}
 *   client.on("reset", () => …);          // the cursor was too old: reload lists
 *   client.close();
 *
 * What it does beyond the native EventSource:
 * - It keeps the cursor (the highest id seen) itself. When the browser gives
 *   up on a stream (any non-200 answer, such as a 502 during a deploy, or a
 *   network failure), it opens a new one after a jittered backoff with
 *   ?last_event_id=, since a new EventSource cannot send Last-Event-ID.
 *   A 401, or an `event: revoked` (a logout elsewhere, a revoked token, a
 *   deactivated account), means signed out: it stops and sends the person to
 *   the login page. A 429 (too many streams for this user) or a 503 waits
 *   the answer's Retry-After before trying again.
 * - One connection for all tabs of an origin: the tab holding a Web Lock
 *   leads and fans events out on a BroadcastChannel. When it closes, the next
 *   tab takes the lock and resumes from the highest id it has seen. Without
 *   those APIs (e.g. plain http on a public host), each tab connects itself.
 * - If no `ready` event arrives within `readyTimeout` of opening the stream,
 *   something between here and the server is holding the bytes back (a
 *   buffering proxy, an antivirus): it switches to long-polling
 *   /events/poll with the same cursor and tries the stream again later.
 *
 * status: "connecting" | "live" | "reconnecting" | "closed"
 * transport: "stream" | "poll" | null
 * role: "leader" (this tab holds the connection) | "follower" | "solo"
 */

const DEFAULTS = {
  url: "/events/",
  pollUrl: null, // defaults to `${url}poll`
  probeUrl: null, // defaults to the stream's url
  loginUrl: "/accounts/login/",
  lastEventId: null,
  share: true,
  shareKey: "default",
  readyTimeout: 5000,
  pollTimeout: 25,
  streamRetry: 60000, // first retry of the stream after falling back to polling
  streamRetryMax: 600000,
  backoffMin: 500,
  backoffMax: 5000,
  browserRetry: 3000, // the server's `retry:` (NOTIFY_RETRY_MS)
  redirectOnUnauthorized: true,
};

const SEEN_LIMIT = 5000;

const toId = (value) => {
  const id = Number(value);
  return Number.isSafeInteger(id) && id >= 0 ? id : null;
};

// A Retry-After in seconds, spread by up to a second; 0 when there is none.
function retryAfter(response) {
  const seconds = Number(response.headers.get("Retry-After"));
  if (!(response.status === 429 || response.status === 503) || !(seconds > 0)) return 0;
  return Math.min(seconds, 600) * 1000 + Math.random() * 1000;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function withParams(url, params) {
  const target = new URL(url, location.href);
  for (const [name, value] of Object.entries(params)) {
    if (value !== null && value !== undefined) target.searchParams.set(name, value);
  }
  return target.origin === location.origin
    ? target.pathname + target.search
    : target.href;
}

class NotifyClient {
  constructor(options) {
    this.options = { ...DEFAULTS, ...options };
    if (!this.options.pollUrl) this.options.pollUrl = `${this.options.url}poll`;
    this.cursor = toId(this.options.lastEventId);
    this.seen = new Set();
    this.listeners = new Map();
    this.state = { status: "connecting", transport: null, role: null };
    this.closed = false;
    this.leading = false;
    this.attempt = 0;
    this.source = null;
    this.timers = new Set();
    this.watchdog = null;
    this.pollRun = 0;
    this.pollAbort = null;
    this.streamRetry = this.options.streamRetry;
    this.onOnline = () => this.retryNow();
    window.addEventListener("online", this.onOnline);
    // Background tabs run timers late; a tab coming into view cuts short
    // a reconnect delay, its own or the leader's.
    this.onVisible = () => {
      if (document.visibilityState !== "visible" || this.closed) return;
      if (this.leading) this.retryNow();
      else this.channel?.postMessage({ type: "nudge" });
    };
    document.addEventListener("visibilitychange", this.onVisible);

    const shareable =
      this.options.share &&
      typeof BroadcastChannel === "function" &&
      navigator.locks &&
      typeof navigator.locks.request === "function";
    // Let the page subscribe before anything is emitted.
    queueMicrotask(() => {
      if (this.closed) return;
      if (shareable) this.joinTabs();
      else this.lead("solo");
    });
  }

  /** Subscribe to "notification", "read", "state", "reset" or "unauthorized";
   *  returns a function that unsubscribes. */
  on(type, listener) {
    if (!this.listeners.has(type)) this.listeners.set(type, new Set());
    this.listeners.get(type).add(listener);
    if (type === "state" && this.state.role) listener({ ...this.state });
    return () => this.listeners.get(type)?.delete(listener);
  }

  get lastEventId() {
    return this.cursor;
  }

  /** Stop for good: close the connection and hand leadership to another tab. */
  close() {
    if (this.closed) return;
    this.closed = true;
    this.dropStream();
    this.stopPolling();
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    window.removeEventListener("online", this.onOnline);
    document.removeEventListener("visibilitychange", this.onVisible);
    this.lockAbort?.abort();
    this.resign?.();
    this.channel?.close();
    this.setState({ status: "closed", transport: null });
  }

  /** Skip the remaining backoff (e.g. the network came back). */
  retryNow() {
    if (!this.leading || this.closed || this.state.status !== "reconnecting") return;
    if (this.state.transport === "poll") return;
    this.attempt = 0;
    this.clearTimers();
    this.openStream();
  }

  // -- events to the page ------------------------------------------------

  emit(type, value) {
    for (const listener of this.listeners.get(type) ?? []) {
      try {
        listener(value);
      } catch (error) {
        console.error("notify: a listener failed", error);
      }
    }
  }

  setState(patch) {
    const next = { ...this.state, ...patch };
    const changed = Object.keys(next).some((k) => next[k] !== this.state[k]);
    this.state = next;
    if (changed) this.emit("state", { ...next });
    if (this.leading) this.post({ type: "state", state: next, cursor: this.cursor });
  }

  advance(id) {
    if (id !== null && (this.cursor === null || id > this.cursor)) this.cursor = id;
  }

  deliver(notification) {
    const id = toId(notification?.id);
    if (id === null || this.seen.has(id)) return;
    this.seen.add(id);
    if (this.seen.size > SEEN_LIMIT) {
      const drop = [...this.seen].sort((a, b) => a - b).slice(0, SEEN_LIMIT / 5);
      for (const old of drop) this.seen.delete(old);
    }
    this.advance(id);
    this.post({ type: "notification", data: notification });
    this.emit("notification", notification);
  }

  read(change) {
    this.post({ type: "read", data: change });
    this.emit("read", change);
  }

  reset(info) {
    this.post({ type: "reset", data: info });
    this.emit("reset", info);
  }

  unauthorized() {
    if (this.closed) return;
    this.post({ type: "unauthorized" });
    this.close();
    this.emit("unauthorized");
    if (this.options.redirectOnUnauthorized) {
      const next = encodeURIComponent(location.pathname + location.search);
      location.assign(`${this.options.loginUrl}?next=${next}`);
    }
  }

  // -- sharing one connection among tabs ---------------------------------

  post(message) {
    if (this.leading && this.channel && !this.closed) this.channel.postMessage(message);
  }

  joinTabs() {
    const key = String(this.options.shareKey);
    this.channel = new BroadcastChannel(`notify:${key}`);
    this.channel.onmessage = (event) => this.fromLeader(event.data);
    this.joinCursor = this.cursor;
    this.caughtUp = false;
    this.setState({ role: "follower" });
    // The leader answers with its state and cursor; see fromLeader().
    this.channel.postMessage({ type: "hello" });
    this.lockAbort = new AbortController();
    navigator.locks
      .request(`notify-leader:${key}`, { signal: this.lockAbort.signal }, () => {
        if (this.closed) return undefined;
        return new Promise((resolve) => {
          this.resign = resolve;
          this.lead("leader");
        });
      })
      .catch(() => {}); // aborted by close()
  }

  fromLeader(message) {
    if (!message || this.closed) return;
    if (message.type === "hello") {
      if (this.leading) this.post({ type: "state", state: this.state, cursor: this.cursor });
      return;
    }
    if (message.type === "nudge") {
      if (this.leading) this.retryNow();
      return;
    }
    if (this.leading) return;
    switch (message.type) {
      case "notification":
        this.deliver(message.data);
        break;
      case "read":
        this.emit("read", message.data);
        break;
      case "reset":
        this.emit("reset", message.data);
        break;
      case "unauthorized":
        this.unauthorized();
        break;
      case "state": {
        const cursor = toId(message.cursor);
        if (!this.caughtUp && cursor !== null) {
          this.caughtUp = true;
          this.catchUp(this.joinCursor, cursor);
        } else {
          this.advance(cursor);
        }
        this.setState({ ...message.state, role: "follower" });
        break;
      }
      default:
        break;
    }
  }

  // Whatever the leader delivered before this tab joined: ids in
  // (from, through], fetched once; later ones arrive on the channel.
  async catchUp(from, through) {
    if (from === null || from >= through) {
      this.advance(through);
      return;
    }
    let after = from;
    for (let page = 0; page < 20 && after < through && !this.closed; page += 1) {
      try {
        const body = await this.pollOnce(after, 0, null);
        for (const event of body.events) {
          if (event.event === "notification") this.deliver(event.data);
        }
        const last = toId(body.last_id);
        if (last === null || last <= after) break;
        after = last;
      } catch {
        break; // best effort; the list on the page is the fallback
      }
    }
    this.advance(through);
  }

  lead(role) {
    if (this.closed) return;
    this.leading = true;
    this.setState({ role, status: "connecting", transport: "stream" });
    this.openStream();
  }

  // -- the stream --------------------------------------------------------

  later(fn, ms) {
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      fn();
    }, ms);
    this.timers.add(timer);
  }

  clearTimers() {
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    this.disarm();
  }

  // Runs `action` unless `ready` arrives within `ms` (see onReady).
  arm(ms, action) {
    this.disarm();
    this.watchdog = setTimeout(() => {
      this.watchdog = null;
      action();
    }, ms);
  }

  disarm() {
    if (this.watchdog !== null) clearTimeout(this.watchdog);
    this.watchdog = null;
  }

  backoff() {
    const { backoffMin, backoffMax } = this.options;
    const cap = Math.min(backoffMax, backoffMin * 2 ** this.attempt);
    this.attempt += 1;
    return cap / 2 + (Math.random() * cap) / 2;
  }

  openStream() {
    if (this.closed || !this.leading) return;
    this.dropStream();
    const url = withParams(this.options.url, { last_event_id: this.cursor });
    const source = new EventSource(url);
    this.source = source;
    const mine = (handler) => (event) => {
      if (source === this.source) handler(event);
    };
    source.addEventListener("ready", mine((e) => this.onReady(e)));
    source.addEventListener(
      "notification",
      mine((e) => this.withJson(e, (n) => this.deliver(n))),
    );
    source.addEventListener("read", mine((e) => this.withJson(e, (r) => this.read(r))));
    source.addEventListener("reset", mine((e) => this.withJson(e, (r) => this.reset(r))));
    source.addEventListener("revoked", mine(() => this.unauthorized()));
    source.onerror = mine(() => this.onStreamError(source));
    // Nothing within a few seconds of asking: something on the way holds
    // the bytes back (a 502 or a 401 would have been an error by now).
    this.arm(this.options.readyTimeout, () => this.fallBackToPolling());
  }

  withJson(event, handler) {
    let value;
    try {
      value = JSON.parse(event.data);
    } catch {
      return;
    }
    handler(value);
  }

  onReady(event) {
    this.disarm();
    this.attempt = 0;
    this.streamRetry = this.options.streamRetry;
    this.withJson(event, (info) => {
      if (this.cursor === null) this.advance(toId(info.last_id));
    });
    this.setState({ status: "live", transport: "stream" });
  }

  onStreamError(source) {
    if (source.readyState === EventSource.CLOSED) {
      // The browser gave up: a non-200 answer (a 502 while the workers
      // restart, a 401) or a network failure. Start over with our cursor.
      this.dropStream();
      this.setState({ status: "reconnecting", transport: "stream" });
      this.afterFailure(() => this.openStream());
    } else {
      // The browser reconnects by itself (with Last-Event-ID). If that does
      // not come back ready, start over ourselves; a fresh stream then gets
      // the buffering check above.
      this.setState({ status: "reconnecting", transport: "stream" });
      this.arm(this.options.browserRetry + this.options.readyTimeout, () => {
        this.dropStream();
        this.afterFailure(() => this.openStream());
      });
    }
  }

  async afterFailure(retry) {
    const { status, wait } = await this.probe();
    if (this.closed || !this.leading) return;
    if (status === 401) {
      this.unauthorized();
      return;
    }
    this.later(retry, Math.max(wait, this.backoff()));
  }

  // EventSource hides status codes; a plain request tells a signed-out
  // session (401) or a full quota of streams (429) from a server that is
  // away (502, no answer). Without a probeUrl it asks the stream itself and
  // drops the answer's body at once.
  async probe() {
    const abort = new AbortController();
    try {
      const url = this.options.probeUrl || this.options.url;
      const response = await fetch(url, {
        credentials: "same-origin",
        cache: "no-store",
        signal: abort.signal,
      });
      return { status: response.status, wait: retryAfter(response) };
    } catch {
      return { status: 0, wait: 0 };
    } finally {
      abort.abort();
    }
  }

  dropStream() {
    this.disarm();
    if (this.source) {
      this.source.onerror = null;
      this.source.close();
      this.source = null;
    }
  }

  // -- long-polling fallback ---------------------------------------------

  fallBackToPolling() {
    if (this.closed || !this.leading) return;
    this.dropStream();
    this.setState({ status: "connecting", transport: "poll" });
    this.pollUntil = Date.now() + this.streamRetry;
    this.streamRetry = Math.min(this.streamRetry * 2, this.options.streamRetryMax);
    this.pollLoop(++this.pollRun);
  }

  stopPolling() {
    this.pollRun += 1;
    this.pollAbort?.abort();
    this.pollAbort = null;
  }

  async pollOnce(after, timeout, abort = new AbortController()) {
    if (abort) this.pollAbort = abort;
    const url = withParams(this.options.pollUrl, { after, timeout });
    const response = await fetch(url, {
      credentials: "same-origin",
      cache: "no-store",
      headers: { Accept: "application/json" },
      signal: abort?.signal,
    });
    if (!response.ok) {
      const error = new Error(`poll answered ${response.status}`);
      error.status = response.status;
      error.wait = retryAfter(response);
      throw error;
    }
    return response.json();
  }

  async pollLoop(run) {
    // The first request answers at once, so the page learns quickly that
    // this transport works; the following ones wait for news.
    let timeout = 0;
    while (run === this.pollRun && this.leading && !this.closed) {
      if (Date.now() >= this.pollUntil) {
        this.stopPolling();
        this.setState({ status: "connecting", transport: "stream" });
        this.openStream();
        return;
      }
      try {
        const body = await this.pollOnce(this.cursor, timeout);
        if (run !== this.pollRun) return;
        for (const event of body.events) {
          if (event.event === "notification") this.deliver(event.data);
        }
        this.advance(toId(body.last_id));
        this.attempt = 0;
        timeout = this.options.pollTimeout;
        this.setState({ status: "live", transport: "poll" });
      } catch (error) {
        if (run !== this.pollRun || this.closed) return;
        if (error.status === 401) {
          this.unauthorized();
          return;
        }
        this.setState({ status: "reconnecting", transport: "poll" });
        timeout = 0;
        await sleep(Math.max(error.wait || 0, this.backoff()));
      }
    }
  }
}

/** Open (or join) the live connection and return its client. */
export function connect(options = {}) {
  return new NotifyClient(options);
}
