// #/audit: the global event stream (GET /events), newest first, filterable by kind, actor and edit.
//
// The API pages the log oldest first (its cursor is the event seq, which replicas follow), so this view walks
// every matching page (500 events a request) and shows them newest first, SHOWN at a time. That is one
// request per 500 events, up to MAX_EVENTS; past that it says the listing stops short. The edits the shown
// events name are then fetched once each, to show every id with its edit's prompt and target.

import { fetchEdits, walk } from "../api.js";
import { badge, clear, editRef, eventDetail, eventEditIds, field, h, when } from "../dom.js";

const SHOWN = 100;
const MAX_EVENTS = 50_000;
const KINDS = ["", "created", "revoked", "restored", "superseded"];

export async function render(root, params) {
  root.append(h("h1", {}, "Audit log"), filterForm(params));
  const results = h("div", { id: "audit-results" }, h("p", { class: "muted" }, "Loading…"));
  root.append(results);
  const query = { kind: params.get("kind"), actor: params.get("actor"), edit_id: params.get("edit") };
  const { items, complete } = await walk("/events", query, MAX_EVENTS);
  items.reverse();
  const page = Math.max(0, Number(params.get("page") ?? 0) || 0);
  const shown = items.slice(page * SHOWN, (page + 1) * SHOWN);
  const edits = await fetchEdits(shown.flatMap((ev) => [ev.edit_id, ...eventEditIds(ev)]));
  clear(
    results,
    complete ? null : h("p", { class: "warning" }, `Showing the oldest ${items.length} events only.`),
    eventTable(shown, edits),
    pager(params, page, items.length),
  );
}

function filterForm(params) {
  const kind = h(
    "select",
    { name: "kind" },
    KINDS.map((k) => h("option", { value: k, selected: (params.get("kind") ?? "") === k }, k || "any")),
  );
  const input = (name, attrs) => h("input", { name, value: params.get(name) ?? "", ...attrs });
  const form = h(
    "form",
    { class: "filters", id: "audit-filters" },
    field("Kind", kind),
    field("Actor", input("actor", { placeholder: "key name" })),
    field("Edit", input("edit", { placeholder: "ed_…" })),
    h(
      "div",
      { class: "actions" },
      h("button", { type: "submit" }, "Filter"),
      h("a", { href: "#/audit", class: "button secondary" }, "Clear"),
    ),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const next = new URLSearchParams();
    for (const [name, value] of new FormData(form)) if (value) next.set(name, value);
    location.hash = `#/audit?${next}`;
  });
  kind.addEventListener("change", () => form.requestSubmit());
  return form;
}

function eventTable(events, edits) {
  if (!events.length) return h("p", { class: "muted empty" }, "No events match these filters.");
  const head = ["Seq", "When", "Kind", "Actor", "Edit", "Detail"].map((c) => h("th", {}, c));
  const rows = events.map((ev) =>
    h(
      "tr",
      { "data-kind": ev.kind },
      h("td", { class: "mono" }, String(ev.seq)),
      h("td", { class: "nowrap" }, when(ev.at)),
      h("td", {}, badge(ev.kind)),
      h("td", {}, ev.actor),
      h("td", { class: "wrap" }, editRef(ev.edit_id, edits.get(ev.edit_id))),
      h("td", { class: "wrap" }, eventDetail(ev, edits, !edits.get(ev.edit_id))),
    ),
  );
  return h("table", { class: "grid", id: "events-table" }, h("thead", {}, h("tr", {}, head)), h("tbody", {}, rows));
}

function pager(params, page, total) {
  const to = (n) => {
    const next = new URLSearchParams(params);
    if (n) next.set("page", n);
    else next.delete("page");
    return `#/audit?${next}`;
  };
  const pages = Math.max(1, Math.ceil(total / SHOWN));
  return h(
    "div",
    { class: "pager" },
    page > 0 ? h("a", { href: to(page - 1), class: "button secondary" }, "← Newer") : null,
    h("span", { class: "muted" }, `${total} event${total === 1 ? "" : "s"} · page ${page + 1} of ${pages}`),
    page + 1 < pages ? h("a", { href: to(page + 1), class: "button secondary" }, "Older →") : null,
  );
}
