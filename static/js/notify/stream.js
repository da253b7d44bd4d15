// The stream transport: one EventSource at a time, opened by the leading tab.
// After a fatal close it opens a new one with ?last_event_id= (a new
// EventSource cannot send Last-Event-ID) after a jittered backoff, having
// asked the stream URL with fetch() what the EventSource could not tell: a
// 401 (signed out), or a 429/503 whose Retry-After it waits out. No `ready`
// within readyTimeout: something holds the bytes back, so it long-polls
// (poll.js).
//
// Methods of NotifyClient (client.js), installed on its prototype.

import { retryAfter, toId, withParams } from "./util.js";

export const streaming = {
  later(fn, ms) {
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      fn();
    }, ms);
    this.timers.add(timer);
  },

  clearTimers() {
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    this.disarm();
  },

  // Runs `action` unless `ready` arrives within `ms` (see onReady).
  arm(ms, action) {
    this.disarm();
    this.watchdog = setTimeout(() => {
      this.watchdog = null;
      action();
    }, ms);
  },

  disarm() {
    if (this.watchdog !== null) clearTimeout(this.watchdog);
    this.watchdog = null;
  },

  backoff() {
    const { backoffMin, backoffMax } = this.options;
    const cap = Math.min(backoffMax, backoffMin * 2 ** this.attempt);
    this.attempt += 1;
    return cap / 2 + (Math.random() * cap) / 2;
  },

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
  },

  withJson(event, handler) {
    let value;
    try {
      value = JSON.parse(event.data);
    } catch {
      return;
    }
    handler(value);
  },

  onReady(event) {
    this.disarm();
    this.attempt = 0;
    this.streamRetry = this.options.streamRetry;
    this.withJson(event, (info) => {
      if (this.cursor === null) this.advance(toId(info.last_id));
    });
    this.setState({ status: "live", transport: "stream" });
  },

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
  },

  async afterFailure(retry) {
    const { status, wait } = await this.probe();
    if (this.closed || !this.leading) return;
    if (status === 401) {
      this.unauthorized();
      return;
    }
    this.later(retry, Math.max(wait, this.backoff()));
  },

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
  },

  dropStream() {
    this.disarm();
    if (this.source) {
      this.source.onerror = null;
      this.source.close();
      this.source = null;
    }
  },
};
