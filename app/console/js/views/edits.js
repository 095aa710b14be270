// #/edits: every edit, filtered and paged by the API (GET /edits), oldest first as the API pages them.
//
// The filters and the page live in the URL (#/edits?status=active&q=acme&at=,c1,c2), so back, forward and
// links work. `at` is the trail of cursors that led to this page: "" is the first page, each next page adds
// the `next_after` it came from, "Previous" drops the last.

import { api } from "../api.js";
import { badge, clear, errorBox, field, h, parsePairs, training, when } from "../dom.js";

const FILTERS = ["status", "actor", "q", "meta", "from", "to", "limit"];

export async function render(root, params) {
  root.append(h("h1", {}, "Edits"), filterForm(params));
  const results = h("div", { id: "edit-results" }, h("p", { class: "muted" }, "Loading…"));
  root.append(results);
  const trail = (params.get("at") ?? "").split(",");
  let query;
  try {
    query = apiQuery(params, trail.at(-1));
  } catch (err) {
    clear(results, errorBox(err));
    return;
  }
  const page = await api("GET", "/edits", { query });
  clear(results, editTable(page.data), pager(params, trail, page));
}

function apiQuery(params, after) {
  const local = (name) => (params.get(name) ? new Date(params.get(name)).toISOString() : undefined);
  const meta = parsePairs(params.get("meta") ?? "", /;/, "metadata filter");
  return {
    status: params.get("status"),
    actor: params.get("actor"),
    q: params.get("q"),
    metadata: Object.entries(meta).map(([k, v]) => `${k}=${v}`),
    created_from: local("from"),
    created_to: local("to"),
    limit: params.get("limit") || 50,
    after: after || undefined,
  };
}

function filterForm(params) {
  const input = (name, attrs = {}) => h("input", { name, value: params.get(name) ?? "", ...attrs });
  const status = h(
    "select",
    { name: "status" },
    ["", "active", "revoked"].map((s) => h("option", { value: s, selected: params.get("status") === s }, s || "any")),
  );
  const limit = h(
    "select",
    { name: "limit" },
    ["25", "50", "100", "200"].map((n) => h("option", { value: n, selected: (params.get("limit") || "50") === n }, n)),
  );
  const form = h(
    "form",
    { class: "filters", id: "edit-filters" },
    field("Status", status),
    field("Text", input("q", { type: "search", placeholder: "in prompt or target" })),
    field("Actor", input("actor", { placeholder: "key name" })),
    field("Metadata", input("meta", { placeholder: "ticket=OPS-7; team=search" })),
    field("Created from", input("from", { type: "datetime-local", step: 1 })),
    field("Created before", input("to", { type: "datetime-local", step: 1 })),
    field("Per page", limit),
    h(
      "div",
      { class: "actions" },
      h("button", { type: "submit" }, "Search"),
      h("a", { href: "#/edits", class: "button secondary" }, "Clear"),
    ),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const next = new URLSearchParams();
    for (const name of FILTERS) if (data.get(name)) next.set(name, data.get(name));
    location.hash = `#/edits?${next}`;
  });
  status.addEventListener("change", () => form.requestSubmit());
  return form;
}

function editTable(items) {
  if (!items.length) return h("p", { class: "muted empty" }, "No edits match these filters.");
  const head = ["Prompt", "Target", "Status", "Actor", "Created", "Training"].map((c) => h("th", {}, c));
  const rows = items.map((e) =>
    h(
      "tr",
      { "data-id": e.id },
      h("td", { class: "wrap" }, h("a", { href: `#/edits/${encodeURIComponent(e.id)}` }, e.prompt)),
      h("td", { class: "wrap" }, e.target),
      h("td", {}, badge(e.status), e.superseded_by ? h("small", { class: "muted" }, " superseded") : null),
      h("td", {}, e.created_by),
      h("td", { class: "nowrap" }, when(e.created_at)),
      h("td", { class: "nowrap" }, training(e.train)),
    ),
  );
  return h("table", { class: "grid", id: "edits-table" }, h("thead", {}, h("tr", {}, head)), h("tbody", {}, rows));
}

const count = (n, noun) => `${n} ${noun}${n === 1 ? "" : "s"}`;

function pager(params, trail, page) {
  const go = (nextTrail) => {
    const next = new URLSearchParams(params);
    if (nextTrail.length > 1) next.set("at", nextTrail.join(","));
    else next.delete("at");
    return `#/edits?${next}`;
  };
  const first = page.data[0];
  return h(
    "div",
    { class: "pager" },
    trail.length > 1 ? h("a", { href: go(trail.slice(0, -1)), class: "button secondary" }, "← Previous") : null,
    h("span", { class: "muted" }, `Page ${trail.length}`, first ? ` · ${count(page.data.length, "edit")}` : ""),
    page.has_more && page.next_after
      ? h("a", { href: go([...trail, page.next_after]), class: "button secondary", id: "next-page" }, "Next →")
      : null,
  );
}
