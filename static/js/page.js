// The page's one client, configured by Django: {% notify_client %} (which
// {% notify_bell %} and notify's own pages include) renders the JSON read
// here. Every widget of the page imports this module, which the browser
// evaluates once, so they share one client; tabs with the same user share
// one connection (notify/tabs.js).

import { connect } from "./notify.js";

let config = null;
let client = null;

/** The URLs and user of this page, from {% notify_client %}. */
export function pageConfig() {
  if (config === null) {
    const element = document.getElementById("notify-client-config");
    if (!element) throw new Error("notify: this page has no {% notify_client %}");
    config = JSON.parse(element.textContent);
  }
  return config;
}

/** The CSRF token for POSTs to notify's API. */
export function csrfToken() {
  return pageConfig().csrf;
}

/** The page's client, connected on first use. */
export function pageClient() {
  if (client === null) {
    const c = pageConfig();
    client = connect({
      url: c.events,
      pollUrl: c.poll,
      loginUrl: c.login,
      lastEventId: c.lastEventId,
      shareKey: c.user,
      browserRetry: c.retry,
    });
    window.notifyClient = client;
  }
  return client;
}
