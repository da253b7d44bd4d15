// NotifyClient: the cursor, the listeners and the state; the transports and
// the tab sharing are in stream.js, poll.js and tabs.js, whose methods are
// installed on this class's prototype (they share its fields).

import { polling } from "./poll.js";
import { streaming } from "./stream.js";
import { tabs } from "./tabs.js";
import { toId } from "./util.js";

// URLs have no defaults: they come from Django (see page.js), so the client
// follows whatever prefix the site mounts notify under.
const DEFAULTS = {
  url: null, // the stream, required
  pollUrl: null, // defaults to `${url}poll`
  probeUrl: null, // defaults to the stream's url
  loginUrl: null, // without one, a signed-out client stops without leaving the page
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

export class NotifyClient {
  constructor(options) {
    this.options = { ...DEFAULTS, ...options };
    if (!this.options.url) {
      throw new TypeError("notify: connect() needs the stream's url, e.g. {% url 'notify:events' %}");
    }
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
    if (this.options.redirectOnUnauthorized && this.options.loginUrl) {
      const login = new URL(this.options.loginUrl, location.href);
      login.searchParams.set("next", location.pathname + location.search);
      location.assign(login.href);
    }
  }
}

Object.assign(NotifyClient.prototype, streaming, polling, tabs);
