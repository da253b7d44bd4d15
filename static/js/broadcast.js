// The staff console: compose with a live preview, send through the API,
// and watch recent alerts with how many recipients are connected now.

import { LEVELS, el, levelOf, noteContent, refreshTimes, timeElement } from "./render.js";

const config = JSON.parse(document.getElementById("notify-config").textContent);
const csrf = config.csrf;

const form = document.getElementById("compose");
const targetsField = document.getElementById("targets-field");
const targets = document.getElementById("targets");
const targetsLabel = document.getElementById("targets-label");
const title = document.getElementById("title");
const titleCount = document.getElementById("title-count");
const expires = document.getElementById("expires");
const expiresAt = document.getElementById("expires-at");
const preview = document.getElementById("preview");
const result = document.getElementById("send-result");
const send = document.getElementById("send");
const recent = document.getElementById("recent");
const recentEmpty = document.getElementById("recent-empty");
const recentUpdated = document.getElementById("recent-updated");
const onlineCount = document.getElementById("online-count");

const REFRESH = 3000;

const names = (text) =>
  text
    .split(",")
    .map((name) => name.trim())
    .filter(Boolean);

function audienceKind() {
  return form.elements.audience.value;
}

function expiry() {
  if (expires.value === "") return null;
  if (expires.value === "at") {
    const at = expiresAt.value ? new Date(expiresAt.value) : null;
    return at && !Number.isNaN(at.getTime()) ? at.toISOString() : "";
  }
  return new Date(Date.now() + Number(expires.value) * 1000).toISOString();
}

function payload() {
  const kind = audienceKind();
  const audience = kind === "all" ? "all" : { [kind]: names(targets.value) };
  const data = {
    audience,
    level: form.elements.level.value,
    title: title.value,
    body: form.elements.body.value,
    url: form.elements.url.value.trim() || null,
  };
  const when = expiry();
  if (when !== null) data.expires_at = when;
  return data;
}

// -- preview -----------------------------------------------------------

function renderPreview() {
  const data = payload();
  const level = levelOf(data.level);
  const card = el("div", { className: `toast toast--${level} toast--static` });
  card.append(
    ...noteContent(
      {
        ...data,
        title: data.title || "Your title appears here",
        created_at: new Date().toISOString(),
        expires_at: typeof data.expires_at === "string" && data.expires_at ? data.expires_at : null,
      },
      { headingLevel: "p" },
    ),
  );
  preview.replaceChildren(card);
  preview.classList.toggle("is-placeholder", !data.title);
  titleCount.textContent = `${title.value.length} / 200`;
}

function renderAudience() {
  const kind = audienceKind();
  targetsField.hidden = kind === "all";
  targetsLabel.textContent = kind === "groups" ? "Group names" : "Usernames";
  targets.setAttribute("list", kind === "groups" ? "targets-groups" : "targets-users");
  targets.placeholder = kind === "groups" ? "ops, sales" : "alice, bob";
}

// -- errors ------------------------------------------------------------

function clearErrors() {
  for (const node of form.querySelectorAll("[data-error-for]")) node.textContent = "";
  for (const node of form.querySelectorAll("[aria-invalid]")) node.removeAttribute("aria-invalid");
}

const FIELD_INPUT = { title, body: form.elements.body, url: form.elements.url, audience: targets };

function showErrors(errors) {
  let first = null;
  for (const [field, messages] of Object.entries(errors)) {
    const slot =
      form.querySelector(`[data-error-for="${CSS.escape(field)}"]`) ??
      form.querySelector('[data-error-for="title"]');
    slot.textContent = [].concat(messages).join(" ");
    const input = FIELD_INPUT[field];
    if (input) {
      input.setAttribute("aria-invalid", "true");
      first ??= input;
    }
  }
  first?.focus();
}

function showResult(kind, text) {
  result.className = `alert alert--${kind}`;
  result.textContent = text;
  result.hidden = false;
}

// -- sending -----------------------------------------------------------

async function submit(event) {
  event.preventDefault();
  clearErrors();
  result.hidden = true;
  const data = payload();
  if (data.expires_at === "") {
    showErrors({ expires_at: ["Pick a date and time."] });
    return;
  }
  send.disabled = true;
  send.textContent = "Sending…";
  try {
    const response = await fetch(config.notifications, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRFToken": csrf },
      body: JSON.stringify(data),
    });
    const body = await response.json().catch(() => ({}));
    if (response.status === 201) {
      const people = body.recipients === 1 ? "1 person" : `${body.recipients} people`;
      showResult("success", `Sent “${body.title}” to ${people}.`);
      title.value = "";
      form.elements.body.value = "";
      form.elements.url.value = "";
      renderPreview();
      refreshRecent();
    } else if (response.status === 429) {
      const wait = response.headers.get("Retry-After");
      showResult("warning", `Too many alerts at once. Try again in ${wait || "a few"} seconds.`);
    } else if (body.errors) {
      showErrors(body.errors);
      showResult("critical", "Please correct the highlighted fields.");
    } else {
      showResult("critical", body.error || `The server answered ${response.status}.`);
    }
  } catch {
    showResult("critical", "The server cannot be reached. Nothing was sent.");
  } finally {
    send.disabled = false;
    send.textContent = "Send alert";
  }
}

// -- recent alerts -----------------------------------------------------

function audienceText(item) {
  if (item.audience === "all") return "Everyone";
  const label = item.audience === "group" ? "Groups" : "People";
  return `${label}: ${item.targets.join(", ")}`;
}

function alertRow(item) {
  const level = levelOf(item.level);
  const share = item.recipients ? Math.min(1, item.connected / item.recipients) : 0;
  const bar = el("span", { className: "meter__fill" });
  bar.style.width = `${Math.round(share * 100)}%`;
  const expired = item.expires_at && Date.parse(item.expires_at) <= Date.now();
  return el(
    "li",
    { className: `alert-row alert-row--${level}`, dataset: { id: String(item.id) } },
    el(
      "div",
      { className: "alert-row__main" },
      el("p", { className: "alert-row__title", text: item.title }),
      el(
        "p",
        { className: "alert-row__meta" },
        el("span", { className: `pill pill--${level}`, text: LEVELS[level] }),
        el("span", { text: audienceText(item) }),
        timeElement(item.created_at),
        item.sender ? el("span", { text: `by ${item.sender}` }) : null,
        expired ? el("span", { className: "pill pill--muted", text: "Expired" }) : null,
      ),
    ),
    el(
      "div",
      { className: "alert-row__reach" },
      el(
        "p",
        { className: "reach" },
        el("strong", { className: "reach__connected", text: String(item.connected) }),
        el("span", { text: ` of ${item.recipients} connected` }),
      ),
      el(
        "span",
        {
          className: "meter",
          role: "img",
          "aria-label": `${item.connected} of ${item.recipients} recipients connected now`,
        },
        bar,
      ),
    ),
  );
}

let refreshing = false;

async function refreshRecent() {
  if (refreshing) return;
  refreshing = true;
  try {
    const response = await fetch(config.recent, {
      credentials: "same-origin",
      cache: "no-store",
      headers: { Accept: "application/json" },
    });
    if (response.status === 401) {
      location.assign(`${config.login}?next=${encodeURIComponent(location.pathname)}`);
      return;
    }
    if (!response.ok) throw new Error(String(response.status));
    const body = await response.json();
    recent.replaceChildren(...body.results.map(alertRow));
    recentEmpty.hidden = body.results.length > 0;
    onlineCount.textContent = String(body.connected_users);
    recentUpdated.textContent = `Updated ${new Date().toLocaleTimeString()}`;
  } catch {
    recentUpdated.textContent = "Cannot reach the server; retrying…";
  } finally {
    refreshing = false;
  }
}

// -- start -------------------------------------------------------------

form.addEventListener("input", renderPreview);
form.addEventListener("change", (event) => {
  if (event.target.name === "audience") renderAudience();
  if (event.target === expires) {
    expiresAt.hidden = expires.value !== "at";
    if (!expiresAt.hidden) expiresAt.focus();
  }
  renderPreview();
});
form.addEventListener("reset", () => {
  setTimeout(() => {
    clearErrors();
    result.hidden = true;
    expiresAt.hidden = true;
    renderAudience();
    renderPreview();
  });
});
form.addEventListener("submit", submit);

renderAudience();
renderPreview();
refreshRecent();
setInterval(() => {
  if (!document.hidden) refreshRecent();
  refreshTimes(preview);
}, REFRESH);
