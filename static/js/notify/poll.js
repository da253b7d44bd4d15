// The long-polling fallback: when the stream's first bytes are held back (a
// buffering proxy, an antivirus), ask GET <pollUrl>?after=<cursor> in a loop
// and try the stream again later, each time after twice as long.
//
// Methods of NotifyClient (client.js), installed on its prototype.

import { retryAfter, sleep, toId, withParams } from "./util.js";

export const polling = {
  fallBackToPolling() {
    if (this.closed || !this.leading) return;
    this.dropStream();
    this.setState({ status: "connecting", transport: "poll" });
    this.pollUntil = Date.now() + this.streamRetry;
    this.streamRetry = Math.min(this.streamRetry * 2, this.options.streamRetryMax);
    this.pollLoop(++this.pollRun);
  },

  stopPolling() {
    this.pollRun += 1;
    this.pollAbort?.abort();
    this.pollAbort = null;
  },

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
  },

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
  },
};
