// DOM building shared by the pages. Every value that came from a person
// (titles, bodies, names, links) goes in through textContent or a checked
// attribute, never as HTML.

export const LEVELS = {
  info: "Info",
  success: "Success",
  warning: "Warning",
  critical: "Critical",
};

const ICONS = {
  info: "M12 2a10 10 0 1 0 0 20 10 10 0 0 0 0-20Zm1 15h-2v-6h2v6Zm0-8h-2V7h2v2Z",
  success: "M12 2a10 10 0 1 0 0 20 10 10 0 0 0 0-20Zm-1.5 14.5-4-4 1.4-1.4 2.6 2.6 5.6-5.6 1.4 1.4-7 7Z",
  warning: "M1 21h22L12 2 1 21Zm12-3h-2v-2h2v2Zm0-4h-2v-4h2v4Z",
  critical: "M12 2a10 10 0 1 0 0 20 10 10 0 0 0 0-20Zm1 15h-2v-2h2v2Zm0-4h-2V7h2v6Z",
};

const SVG = "http://www.w3.org/2000/svg";

export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "className") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined && child !== false) node.append(child);
  }
  return node;
}

export function levelOf(value) {
  return Object.hasOwn(LEVELS, value) ? value : "info";
}

export function icon(level) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("class", "icon");
  const path = document.createElementNS(SVG, "path");
  path.setAttribute("d", ICONS[levelOf(level)]);
  path.setAttribute("fill", "currentColor");
  svg.append(path);
  return svg;
}

// Only http(s) links and same-site paths become links (the server checks
// this too; this keeps a javascript: URL from ever reaching an href).
export function safeHref(url) {
  if (typeof url !== "string" || url === "") return null;
  if (url.startsWith("/") && !url.startsWith("//") && !url.startsWith("/\\")) return url;
  try {
    const parsed = new URL(url);
    return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
  } catch {
    return null;
  }
}

const relative = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
const absolute = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

export function timeAgo(iso, now = Date.now()) {
  const then = Date.parse(iso);
  if (Number.isNaN(then)) return "";
  const seconds = Math.round((then - now) / 1000);
  const steps = [
    [60, "second"],
    [3600, "minute", 60],
    [86400, "hour", 3600],
    [604800, "day", 86400],
  ];
  if (Math.abs(seconds) < 45) return "just now";
  for (const [limit, unit, size = 1] of steps) {
    if (Math.abs(seconds) < limit) return relative.format(Math.round(seconds / size), unit);
  }
  return absolute.format(then);
}

export function timeElement(iso) {
  const parsed = Date.parse(iso);
  return el("time", {
    datetime: iso,
    title: Number.isNaN(parsed) ? null : absolute.format(parsed),
    text: timeAgo(iso),
  });
}

export function refreshTimes(root) {
  for (const node of root.querySelectorAll("time[datetime]")) {
    node.textContent = timeAgo(node.getAttribute("datetime"));
  }
}

/** The content of one notification: icon, title (a link when it has one),
 *  body and a meta line. Used by the inbox list, the toasts and the preview. */
export function noteContent(n, { headingLevel = "h3" } = {}) {
  const level = levelOf(n.level);
  const href = safeHref(n.url);
  const title = el(headingLevel, { className: "note__title" });
  if (href) {
    title.append(el("a", { href, text: n.title, className: "note__link" }));
  } else {
    title.textContent = n.title;
  }
  const meta = el(
    "p",
    { className: "note__meta" },
    el("span", { className: `pill pill--${level}`, text: LEVELS[level] }),
    n.created_at ? timeElement(n.created_at) : null,
  );
  if (n.expires_at) {
    meta.append(el("span", { className: "note__expiry", text: `expires ${timeAgo(n.expires_at)}` }));
  }
  return [
    el("span", { className: `note__icon note__icon--${level}` }, icon(level)),
    el(
      "div",
      { className: "note__main" },
      title,
      n.body ? el("p", { className: "note__body", text: n.body }) : null,
      meta,
    ),
  ];
}

// An unread badge: `text` shows the count (99+ above 99), `badge` carries it
// in data-count and hides at 0, `button` (mark all read) is disabled at 0.
// Returns the count, never below 0.
export function showUnread({ text, badge, button }, count) {
  const unread = Math.max(0, count);
  text.textContent = unread > 99 ? "99+" : String(unread);
  badge.dataset.count = String(unread);
  badge.hidden = unread === 0;
  button.disabled = unread === 0;
  return unread;
}
