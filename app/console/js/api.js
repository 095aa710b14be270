// The console's one way to the data: the HTTP API, with the operator's key sent as a Bearer token.

const KEY_STORE = "sola.apiKey";
// The console is served at <root>/console/, the API at <root>/ (so a proxy's path prefix carries over).
const API_ROOT = new URL("../", document.baseURI);
const PAGE_SIZE = 500; // the API's largest page: fewest round trips when walking a whole listing
const FETCH_AT_ONCE = 6; // requests in flight when fetching edits one by one: what a browser runs per host

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status; // 0: no answer at all
    this.code = code;
  }

  // The API's own message, then its status and code: what the CLI prints too.
  get summary() {
    return this.status ? `${this.message} (HTTP ${this.status} ${this.code})` : this.message;
  }
}

// The key lives in sessionStorage: typed once per tab, gone when the tab closes.
export const session = {
  get key() {
    return sessionStorage.getItem(KEY_STORE) ?? "";
  },
  set key(value) {
    if (value) sessionStorage.setItem(KEY_STORE, value);
    else sessionStorage.removeItem(KEY_STORE);
  },
};

// Query values that are undefined, null or "" are left out; arrays repeat the parameter.
export async function api(method, path, { query = {}, body, key = session.key } = {}) {
  const url = new URL(path.replace(/^\//, ""), API_ROOT);
  for (const [name, value] of Object.entries(query)) {
    for (const item of [value].flat()) {
      if (item !== undefined && item !== null && item !== "") url.searchParams.append(name, item);
    }
  }
  const headers = { Accept: "application/json" };
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (err) {
    throw new ApiError(0, "unreachable", `cannot reach the server: ${err.message}`);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    // not JSON: a proxy's error page, say; its first line is the message below
  }
  if (!response.ok) {
    const error = data?.error;
    if (error?.message) throw new ApiError(response.status, String(error.code), String(error.message));
    const firstLine = text.trim().split("\n")[0].slice(0, 200);
    throw new ApiError(response.status, `http_${response.status}`, firstLine || response.statusText);
  }
  return data;
}

// Every item of a paged listing (oldest first), following next_after; stops after `maxItems`.
export async function walk(path, query = {}, maxItems = 100_000) {
  const items = [];
  let after;
  do {
    const page = await api("GET", path, { query: { ...query, limit: PAGE_SIZE, after } });
    items.push(...page.data);
    after = page.has_more ? page.next_after : null;
  } while (after && items.length < maxItems);
  return { items, complete: !after };
}

// There is no "who am I" endpoint. The server checks a key's role before it validates the request, so asking
// to revoke an id that cannot exist tells the role and touches nothing: 403 for a reader, 422 for an admin.
// A 401 (no key, or a wrong one) is thrown to the caller.
export async function probeRole(key = session.key) {
  try {
    await api("DELETE", "/edits/!", { key });
  } catch (err) {
    if (err.status === 401 || err.status === 0) throw err;
    if (err.status === 403) return "reader";
  }
  return "admin";
}

// The edits a page names by id (GET /edits/{id}), each asked once, a few at a time, into `known` (id -> edit,
// or null when the edit could not be read: it shows as its id alone). A page keeps one map for its render, so
// ids already there are not asked again. A 401 is thrown: the key stopped working.
export async function fetchEdits(ids, known = new Map()) {
  const wanted = [...new Set(ids)].filter((id) => id && !known.has(id));
  const next = async () => {
    for (let id = wanted.shift(); id !== undefined; id = wanted.shift()) {
      try {
        known.set(id, await api("GET", `/edits/${encodeURIComponent(id)}`));
      } catch (err) {
        if (err.status === 401) throw err;
        known.set(id, null); // a 404, or no answer: shown as the bare id
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(FETCH_AT_ONCE, wanted.length) }, next));
  return known;
}
