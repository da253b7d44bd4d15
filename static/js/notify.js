/**
 * notify.js: live notifications in the browser over Server-Sent Events.
 *
 *   import { connect } from "/static/notify/js/notify.js";
 *   const client = connect({ url: "{% url 'notify:events' %}", lastEventId: 41, shareKey: "7" });
 *   client.on("notification", (n) => …);  // wire JSON; every id exactly once
 *   client.on("read", (change) => …);     // {ids: […]} or {all: true, up_to: N}
 *   client.on("state", (s) => …);         // {status, transport, role}
 *   client.on("reset", () => …);          // the cursor was too old: reload lists
 *   client.close();
 *
 * On a page rendered with {% notify_client %}, `pageClient()` from page.js
 * is the page's one client, configured from Django (URLs, user, cursor).
 *
 * The modules, each for one concern (no build step, no dependencies):
 *   notify/client.js  NotifyClient: cursor, listeners, state, sign-out
 *   notify/stream.js  the EventSource transport: reconnect, probe, Retry-After
 *   notify/poll.js    the long-polling fallback behind buffering proxies
 *   notify/tabs.js    one connection per browser: Web Locks leader, BroadcastChannel
 *   notify/util.js    small helpers
 *
 * status: "connecting" | "live" | "reconnecting" | "closed"
 * transport: "stream" | "poll" | null
 * role: "leader" (this tab holds the connection) | "follower" | "solo"
 */

import { NotifyClient } from "./notify/client.js";

/** Open (or join) the live connection and return its client. */
export function connect(options = {}) {
  return new NotifyClient(options);
}

export { NotifyClient };
