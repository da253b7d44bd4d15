// One connection for all tabs of an origin: the tab holding a Web Lock leads
// and fans events out on a BroadcastChannel. When it closes, the next tab
// takes the lock and resumes from the highest id it has seen.
//
// Methods of NotifyClient (client.js), installed on its prototype.

import { toId } from "./util.js";

export const tabs = {
  post(message) {
    if (this.leading && this.channel && !this.closed) this.channel.postMessage(message);
  },

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
  },

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
  },

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
  },

  lead(role) {
    if (this.closed) return;
    this.leading = true;
    this.setState({ role, status: "connecting", transport: "stream" });
    this.openStream();
  },
};
