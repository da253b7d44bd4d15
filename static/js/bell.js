// {% notify_bell %}: the unread count and the latest notifications, live from
// the page's one client (page.js). The markup is notify/bell.html; this
// finds its parts by their data-notify-* attributes.

import { csrfToken, pageClient, pageConfig } from "./page.js";
import { el, levelOf, safeHref, showUnread, timeElement } from "./render.js";

const LATEST = 10;

async function api(url, method = "GET") {
  const response = await fetch(url, {
    method,
    credentials: "same-origin",
    cache: "no-store",
    headers: { Accept: "application/json", "X-CSRFToken": csrfToken() },
  });
  if (!response.ok) throw new Error(`${method} ${url} answered ${response.status}`);
  return response.status === 204 ? null : response.json();
}

function bell(root, client, config) {
  const toggle = root.querySelector("[data-notify-toggle]");
  const panel = root.querySelector("[data-notify-panel]");
  const count = root.querySelector("[data-notify-count]");
  const list = root.querySelector("[data-notify-list]");
  const empty = root.querySelector("[data-notify-empty]");
  const readAll = root.querySelector("[data-notify-read-all]");
  const items = new Map(); // id -> notification, the LATEST newest
  let unread = 0;
  let refresh = null;

  function setUnread(value) {
    unread = showUnread({ text: count, badge: count, button: readAll }, value);
    toggle.setAttribute("aria-label", unread ? `Notifications, ${unread} unread` : "Notifications");
  }

  function item(n) {
    const level = levelOf(n.level);
    const href = safeHref(n.url);
    const title = el("p", { className: "notify-bell__item-title" });
    if (href) title.append(el("a", { href, text: n.title }));
    else title.textContent = n.title;
    const read = el("button", {
      type: "button",
      className: "notify-bell__read",
      text: "Mark read",
      "aria-label": `Mark “${n.title}” as read`,
      hidden: n.read,
      onclick: () => markRead(n.id),
    });
    const node = el(
      "li",
      {
        className: `notify-bell__item notify-bell__item--${level}${n.read ? "" : " is-unread"}`,
        dataset: { id: String(n.id), read: String(Boolean(n.read)) },
      },
      el(
        "div",
        { className: "notify-bell__main" },
        title,
        el("p", { className: "notify-bell__meta" }, n.created_at ? timeElement(n.created_at) : null),
      ),
      read,
    );
    return node;
  }

  function paint() {
    const newest = [...items.values()].sort((a, b) => b.id - a.id).slice(0, LATEST);
    items.clear();
    for (const n of newest) items.set(n.id, n);
    list.replaceChildren(...newest.map(item));
    empty.hidden = newest.length > 0;
  }

  // The server's count and list, when local knowledge is not enough.
  async function load() {
    const url = new URL(config.notifications, location.href);
    url.searchParams.set("limit", String(LATEST));
    const body = await api(url.pathname + url.search);
    const loaded = Math.max(0, ...body.results.map((n) => Number(n.id)));
    // Delivered live while the list was on its way: not in its count.
    const newer = [...items.values()].filter((n) => n.id > loaded && !n.read).length;
    for (const n of body.results) items.set(Number(n.id), { ...n, id: Number(n.id) });
    setUnread(body.unread_count + newer);
    paint();
  }

  function reload() {
    clearTimeout(refresh);
    refresh = setTimeout(() => load().catch(() => {}), 200);
  }

  function markLocally(id) {
    const n = items.get(id);
    if (!n || n.read) return false;
    n.read = true;
    return true;
  }

  async function markRead(id) {
    const known = markLocally(id);
    if (known) {
      setUnread(unread - 1);
      paint();
    }
    try {
      await api(config.read.replace("{id}", String(id)), "POST");
    } catch {
      reload();
    }
  }

  readAll.addEventListener("click", async () => {
    readAll.disabled = true;
    try {
      await api(config.readAll, "POST");
      for (const n of items.values()) n.read = true;
      setUnread(0);
      paint();
    } catch {
      reload();
    }
  });

  client.on("notification", (n) => {
    const id = Number(n.id);
    if (items.has(id)) return;
    items.set(id, { ...n, id, read: Boolean(n.read) });
    if (!n.read) setUnread(unread + 1);
    paint();
  });
  client.on("read", (change) => {
    if (change.all) {
      const upTo = Number(change.up_to) || 0;
      for (const n of items.values()) if (n.id <= upTo) n.read = true;
      paint();
      reload(); // older unread ones may remain beyond up_to or the list
      return;
    }
    let unknown = false;
    for (const raw of change.ids ?? []) {
      if (markLocally(Number(raw))) setUnread(unread - 1);
      else if (!items.has(Number(raw))) unknown = true;
    }
    paint();
    if (unknown) reload();
  });
  client.on("reset", () => {
    items.clear();
    reload();
  });
  client.on("state", (state) => {
    root.dataset.status = state.status;
  });

  function open(show) {
    panel.hidden = !show;
    toggle.setAttribute("aria-expanded", String(show));
  }
  toggle.addEventListener("click", () => open(panel.hidden));
  document.addEventListener("click", (event) => {
    // The path as dispatched: a clicked "Mark read" is gone from the list by now.
    if (!panel.hidden && !event.composedPath().includes(root)) open(false);
  });
  root.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && !panel.hidden) {
      open(false);
      toggle.focus();
    }
  });

  load().catch(() => reload());
}

const roots = document.querySelectorAll("[data-notify-bell]");
if (roots.length) {
  const client = pageClient();
  for (const root of roots) bell(root, client, pageConfig());
}
