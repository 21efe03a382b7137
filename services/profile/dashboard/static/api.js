// Every call to the profile API: the key travels as the X-API-Key header (no cookies, so no
// cross-site request can borrow the session), every read states its purpose, and a failed
// call becomes an ApiError carrying the problem+json "detail" the server gave.

const KEY_STORAGE = "muisti.dashboard.key";

export class ApiError extends Error {
  constructor(status, detail, errors) {
    super(detail);
    this.status = status;
    this.errors = errors;
  }

  // the detail plus, for a validation error, what each field got wrong
  describe() {
    const fields = this.errors && typeof this.errors === "object"
      ? Object.entries(flatten(this.errors)).map(([name, why]) => `${name}: ${why}`) : [];
    return [this.message, ...fields].join("; ");
  }
}

function flatten(errors, prefix = "") {
  const out = {};
  for (const [name, value] of Object.entries(errors)) {
    const path = prefix ? `${prefix}.${name}` : name;
    if (Array.isArray(value)) out[path] = value.join(" ");
    else if (value && typeof value === "object") Object.assign(out, flatten(value, path));
    else out[path] = String(value);
  }
  return out;
}

export function storedKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

export function storeKey(key) {
  sessionStorage.setItem(KEY_STORAGE, key);
}

export function forgetKey() {
  sessionStorage.removeItem(KEY_STORAGE);
}

export async function request(path, { method = "GET", query, body, key = storedKey() } = {}) {
  const url = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
  }
  const headers = { "X-API-Key": key || "", "X-Purpose": "customer_service", Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(url, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit", cache: "no-store",
    });
  } catch (error) {
    throw new ApiError(0, null);
  }
  const type = response.headers.get("Content-Type") || "";
  const data = type.includes("json") ? await response.json().catch(() => null) : null;
  if (!response.ok) {
    const detail = data?.detail || data?.title || `${response.status} ${response.statusText}`;
    throw new ApiError(response.status, detail, data?.errors);
  }
  return data;
}

export const api = {
  session: (key) => request("/v1/dashboard/session", { key }),
  findProfile: (type, value) => request("/v1/profiles", { query: { type, value } }),
  profile: (id) => request(`/v1/profiles/${encodeURIComponent(id)}`),
  timeline: (id, { channel, before, limit = 20 } = {}) =>
    request(`/v1/profiles/${encodeURIComponent(id)}/timeline`, { query: { channel, before, limit } }),
  consents: (id) => request(`/v1/dashboard/profiles/${encodeURIComponent(id)}/consents`),
  search: (param, value) => request("/v1/profiles/search", { query: { [param]: value } }),
  streamToken: (interest) => request("/v1/dashboard/stream-token", { method: "POST", body: interest }),
};
