// Small helpers shared by the client's modules.

export const toId = (value) => {
  const id = Number(value);
  return Number.isSafeInteger(id) && id >= 0 ? id : null;
};

// A Retry-After in seconds, spread by up to a second; 0 when there is none.
export function retryAfter(response) {
  const seconds = Number(response.headers.get("Retry-After"));
  if (!(response.status === 429 || response.status === 503) || !(seconds > 0)) return 0;
  return Math.min(seconds, 600) * 1000 + Math.random() * 1000;
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export function withParams(url, params) {
  const target = new URL(url, location.href);
  for (const [name, value] of Object.entries(params)) {
    if (value !== null && value !== undefined) target.searchParams.set(name, value);
  }
  return target.origin === location.origin
    ? target.pathname + target.search
    : target.href;
}
