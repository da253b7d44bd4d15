// The inbox page: the list, the unread badge, toasts and read state, kept
// live by notify.js.

import { pageClient, pageConfig } from "./page.js";
import { LEVELS, el, levelOf, noteContent, refreshTimes, showUnread } from "./render.js";

const config = pageConfig();
const csrf = config.csrf;

const list = document.getElementById("notes");
const empty = document.getElementById("empty");
const more = document.getElementById("more");
const loadMore = document.getElementById("load-more");
const loadError = document.getElementById("load-error");
const markAll = document.getElementById("mark-all");
const badge = document.getElementById("unread-badge");
const badgeCount = document.getElementById("unread-count");
const connection = document.getElementById("connection");
const connectionLabel = document.getElementById("connection-label");
const toasts = document.getElementById("toasts");
const announcer = document.getElementById("announcer");
const filters = document.querySelectorAll("[data-filter]");

const PAGE = 30;
const TOAST_LIMIT = 4;
const baseTitle = document.title;

const notes = new Map(); // id -> {data, node}
let unread = 0;
let next = null; // the `before` cursor of older pages, null when all are loaded
let filter = "all";
let countRefresh = null;

// -- requests ----------------------------------------------------------

async function api(url, { method = "GET" } = {}) {
  const response = await fetch(url, {
    method,
    credentials: "same-origin",
    cache: "no-store",
    headers: { Accept: "application/json", "X-CSRFToken": csrf },
  });
  if (response.status === 401) {
    location.assign(`${config.login}?next=${encodeURIComponent(location.pathname)}`);
    throw new Error("signed out");
  }
  if (!response.ok) throw new Error(`${method} ${url} answered ${response.status}`);
  return response.status === 204 ? null : response.json();
}

function listUrl(params) {
  const url = new URL(config.notifications, location.href);
  for (const [name, value] of Object.entries(params)) {
    if (value !== null && value !== undefined) url.searchParams.set(name, value);
  }
  return url.pathname + url.search;
}

// -- unread count ------------------------------------------------------

function setUnread(count) {
  unread = showUnread({ text: badgeCount, badge, button: markAll }, count);
  document.title = unread ? `(${unread}) ${baseTitle}` : baseTitle;
}

// The server's count, when local knowledge is not enough (a read mark for
// a notification this page never loaded).
function refreshCount() {
  clearTimeout(countRefresh);
  countRefresh = setTimeout(async () => {
    try {
      const body = await api(listUrl({ limit: 1 }));
      setUnread(body.unread_count);
    } catch {
      /* the next change tries again */
    }
  }, 200);
}

// -- the list ----------------------------------------------------------

function noteNode(n) {
  const node = el("li", {
    className: `note note--${levelOf(n.level)}`,
    dataset: { id: String(n.id), level: levelOf(n.level) },
  });
  node.append(...noteContent(n));
  const button = el("button", {
    type: "button",
    className: "button button--quiet button--small note__read",
    text: "Mark read",
    "aria-label": `Mark “${n.title}” as read`,
    onclick: () => markRead(n.id),
  });
  node.append(el("div", { className: "note__actions" }, button));
  return node;
}

function paint(entry) {
  const isRead = entry.data.read;
  entry.node.classList.toggle("is-unread", !isRead);
  entry.node.dataset.read = String(isRead);
  const button = entry.node.querySelector(".note__read");
  button.hidden = isRead;
  entry.node.hidden = filter === "unread" && isRead;
}

function updateEmpty() {
  const visible = [...notes.values()].some((entry) => !entry.node.hidden);
  empty.hidden = visible;
  document.getElementById("empty-title").textContent =
    filter === "unread" && notes.size ? "No unread notifications" : "You are all caught up";
  more.hidden = next === null;
  list.setAttribute("aria-busy", "false");
}

// Insert keeping the list newest first; returns false for an id already shown.
function insert(n) {
  const id = Number(n.id);
  if (notes.has(id)) return false;
  const entry = { data: { ...n, read: Boolean(n.read) }, node: noteNode(n) };
  notes.set(id, entry);
  paint(entry);
  const after = [...list.children].find((child) => Number(child.dataset.id) < id);
  list.insertBefore(entry.node, after ?? null);
  return true;
}

function setRead(entry) {
  if (entry.data.read) return false;
  entry.data.read = true;
  paint(entry);
  return true;
}

async function loadPage(before = null) {
  const body = await api(listUrl({ limit: PAGE, before }));
  // Delivered live while the first page was on its way: not in its count.
  const loaded = Math.max(0, ...body.results.map((n) => Number(n.id)));
  let newer = 0;
  for (const [id, entry] of notes) if (before === null && id > loaded && !entry.data.read) newer += 1;
  for (const n of body.results) insert(n);
  next = body.next;
  setUnread(body.unread_count + newer);
  updateEmpty();
  return body;
}

// -- toasts and announcements ------------------------------------------

function announce(text) {
  const line = el("p", { text });
  announcer.append(line);
  setTimeout(() => line.remove(), 10000);
}

function dismiss(toast) {
  toast.classList.add("is-leaving");
  setTimeout(() => toast.remove(), 200);
}

function toast(n) {
  const level = levelOf(n.level);
  const node = el("div", { className: `toast toast--${level}`, dataset: { id: String(n.id) } });
  node.append(...noteContent(n, { headingLevel: "p" }));
  node.append(
    el(
      "button",
      { type: "button", className: "toast__close", "aria-label": "Dismiss", onclick: () => dismiss(node) },
      "×",
    ),
  );
  toasts.prepend(node);
  while (toasts.children.length > TOAST_LIMIT) toasts.lastElementChild.remove();
  setTimeout(() => dismiss(node), level === "critical" ? 15000 : 7000);
}

// -- actions -----------------------------------------------------------

async function markRead(id) {
  const entry = notes.get(Number(id));
  if (!entry || !setRead(entry)) return;
  setUnread(unread - 1);
  updateEmpty();
  try {
    await api(config.read.replace("{id}", String(id)), { method: "POST" });
  } catch {
    entry.data.read = false;
    paint(entry);
    setUnread(unread + 1);
    updateEmpty();
    announce("Could not mark the notification as read. Try again.");
  }
}

async function markAllRead() {
  markAll.disabled = true;
  try {
    await api(config.readAll, { method: "POST" });
    for (const entry of notes.values()) setRead(entry);
    setUnread(0);
    updateEmpty();
    announce("All notifications marked as read.");
  } catch {
    markAll.disabled = unread === 0;
    announce("Could not mark everything as read. Try again.");
  }
}

// A change made in another tab or on another device.
function applyRead(change) {
  if (change.all) {
    const upTo = Number(change.up_to) || 0;
    for (const [id, entry] of notes) {
      if (id <= upTo && setRead(entry)) setUnread(unread - 1);
    }
    const oldest = Math.min(...notes.keys());
    if (next !== null && upTo >= oldest) refreshCount();
  } else {
    for (const raw of change.ids ?? []) {
      const entry = notes.get(Number(raw));
      if (!entry) refreshCount();
      else if (setRead(entry)) setUnread(unread - 1);
    }
  }
  updateEmpty();
}

function onNotification(n) {
  if (!insert(n)) return;
  if (!n.read) setUnread(unread + 1);
  updateEmpty();
  toast(n);
  const level = LEVELS[levelOf(n.level)];
  announce(`${level} notification: ${n.title}`);
}

function sweepExpired() {
  const now = Date.now();
  for (const [id, entry] of notes) {
    const expires = Date.parse(entry.data.expires_at ?? "");
    if (!Number.isNaN(expires) && expires <= now) {
      if (!entry.data.read) setUnread(unread - 1);
      entry.node.remove();
      notes.delete(id);
    }
  }
  updateEmpty();
}

// -- connection state --------------------------------------------------

const STATUS = {
  connecting: ["Connecting…", "Connecting to the live stream"],
  live: ["Live", "New notifications appear as they are sent"],
  reconnecting: ["Reconnecting…", "The connection dropped; nothing will be missed"],
  closed: ["Offline", "Not connected"],
};

function showState(state) {
  let [label, help] = STATUS[state.status] ?? STATUS.connecting;
  if (state.status === "live" && state.transport === "poll") {
    label = "Live · polling";
    help = "A proxy on the way delays the stream, so this page asks for news instead";
  }
  if (state.role === "follower") help += " (shared with your other tabs)";
  connection.dataset.status = state.status;
  connection.dataset.transport = state.transport ?? "";
  connection.dataset.role = state.role ?? "";
  connection.title = help;
  connectionLabel.textContent = label;
}

// -- start -------------------------------------------------------------

for (const button of filters) {
  button.addEventListener("click", () => {
    filter = button.dataset.filter;
    for (const other of filters) other.setAttribute("aria-pressed", String(other === button));
    for (const entry of notes.values()) paint(entry);
    updateEmpty();
  });
}

markAll.addEventListener("click", markAllRead);
loadMore.addEventListener("click", async () => {
  loadMore.disabled = true;
  try {
    await loadPage(next);
  } catch {
    announce("Could not load older notifications.");
  } finally {
    loadMore.disabled = false;
  }
});

async function start() {
  // The page's one client (shared with a bell on the same page). It resumes
  // after the newest notification when the page was rendered, so whatever
  // is published while the list loads reaches it from the stream too, once:
  // insert() skips ids it already shows.
  const client = pageClient();
  client.on("state", showState);
  client.on("notification", onNotification);
  client.on("read", applyRead);
  client.on("reset", () => {
    for (const entry of notes.values()) entry.node.remove();
    notes.clear();
    loadPage().catch(() => refreshCount());
  });
  for (let attempt = 0; ; attempt += 1) {
    try {
      await loadPage();
      loadError.hidden = true;
      break;
    } catch {
      loadError.textContent = "The inbox cannot be reached right now. Retrying…";
      loadError.hidden = false;
      await new Promise((resolve) => setTimeout(resolve, Math.min(1000 * 2 ** attempt, 10000)));
    }
  }
}

setInterval(() => {
  refreshTimes(list);
  sweepExpired();
}, 30000);

start();
