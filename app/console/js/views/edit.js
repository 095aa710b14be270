// #/edits/ID: one edit's fields, its audit trail, revoke / restore (admin keys), and "try it": its prompt asked
// with and without edits, side by side.

import { api, fetchEdits, walk } from "../api.js";
import {
  badge,
  clear,
  editLink,
  editRef,
  errorBox,
  eventDetail,
  eventEditIds,
  field,
  h,
  score,
  training,
  when,
} from "../dom.js";

export async function render(root, _params, ctx, id) {
  const path = `/edits/${encodeURIComponent(id)}`;
  const [edit, events] = await Promise.all([api("GET", path), walk(`${path}/events`)]);
  // The other edits this page names (the one superseding it, those it superseded), with their prompts.
  const edits = new Map([[edit.id, edit]]);
  await fetchEdits([edit.superseded_by, ...events.items.flatMap(eventEditIds)], edits);
  const rerender = () => render(clear(root), _params, ctx, id).catch((err) => root.append(errorBox(err)));
  root.append(
    h("p", { class: "crumbs" }, h("a", { href: "#/edits" }, "Edits"), " / ", h("span", { class: "mono" }, edit.id)),
    h("h1", {}, edit.prompt, " ", badge(edit.status)),
    actions(edit, path, ctx, rerender),
    h("div", { class: "columns" }, facts(edit, edits), tryIt(edit)),
    negativesEditor(edit, path, ctx, rerender),
    timeline(events.items, edits),
  );
}

// Revoke / restore: the button opens a confirmation dialog that asks for the reason (kept in the audit log).
function actions(edit, path, ctx, done) {
  const reader = ctx.role !== "admin";
  const status = h("div", { id: "action-status" });
  const revoking = edit.status === "active";
  const verb = revoking ? "Revoke" : "Restore";
  const open = h("button", { type: "button", class: revoking ? "danger" : "", id: verb.toLowerCase(), disabled: reader }, verb);
  const reason = h("input", { name: "reason", placeholder: "reason (optional, kept in the audit log)" });
  const confirm = h("button", { type: "submit", class: revoking ? "danger" : "", id: "confirm" }, verb);
  const cancel = h("button", { type: "button", id: "cancel" }, "Cancel");
  const effect = revoking
    ? "Queries will answer as if this edit had never been made. You can restore it later."
    : "The edit will answer its questions again.";
  const dialog = h(
    "dialog",
    { id: "confirm-dialog" },
    h(
      "form",
      { method: "dialog", class: "form" },
      h("h2", {}, `${verb} this edit?`),
      h("p", {}, h("strong", {}, edit.prompt), " → ", edit.target),
      h("p", { class: "muted" }, effect),
      h("label", { class: "field" }, h("span", {}, "Reason"), reason),
      h("div", { class: "actions" }, confirm, cancel),
    ),
  );
  open.addEventListener("click", () => dialog.showModal());
  cancel.addEventListener("click", () => dialog.close());
  dialog.querySelector("form").addEventListener("submit", async (event) => {
    event.preventDefault();
    dialog.close();
    clear(status);
    open.disabled = true;
    const body = reason.value.trim() ? { reason: reason.value.trim() } : undefined;
    try {
      await api(revoking ? "DELETE" : "POST", revoking ? path : `${path}/restore`, { body });
      await done();
    } catch (err) {
      if (err.status === 403) ctx.demote(); // the server's word on the role beats the sign-in probe
      open.disabled = err.status === 403;
      status.append(errorBox(err));
    }
  });
  const note = reader ? h("small", { class: "muted" }, "Revoking and restoring need an admin key.") : null;
  return h("div", { class: "card actions-bar" }, h("div", { class: "row" }, open), note, status, dialog);
}

function facts(edit, edits) {
  const rows = [
    ["Id", h("span", { class: "mono" }, edit.id)],
    ["Prompt", edit.prompt],
    ["Target", h("strong", {}, edit.target)],
    ["Rephrases", edit.rephrases.length ? h("ul", {}, edit.rephrases.map((r) => h("li", {}, r))) : "—"],
    ["Negatives", edit.negatives.length ? h("ul", {}, edit.negatives.map((r) => h("li", {}, r))) : "—"],
    ["Metadata", metadata(edit.metadata)],
    ["Superseded by", edit.superseded_by ? supersededBy(edit.superseded_by, edits) : "—"],
    ["Created", when(edit.created_at), ` by ${edit.created_by}`],
    ["Revoked", edit.revoked_at ? [when(edit.revoked_at), ` by ${edit.revoked_by}`] : "—"],
    ["Training", `${training(edit.train)}, loss ${Number(edit.train.loss).toFixed(4)}`],
    ["Base model", `${edit.base_model} (${edit.base_fingerprint.slice(0, 12)}), layer ${edit.layer}`],
  ];
  return h(
    "section",
    { class: "card" },
    h("h2", {}, "Edit"),
    h("dl", { class: "facts", id: "edit-facts" }, rows.map(([k, ...v]) => [h("dt", {}, k), h("dd", {}, v)])),
  );
}

// Negatives: questions this edit must not answer. Each vetoes this edit (and no other) for questions closer to
// it than to the edit's own wordings; changing them retrains nothing and is kept in the audit log.
function negativesEditor(edit, path, ctx, done) {
  const reader = ctx.role !== "admin";
  const text = h("textarea", { name: "negatives", rows: 3, disabled: reader }, edit.negatives.join("\n"));
  const reason = h("input", { name: "negatives-reason", placeholder: "reason (optional)", disabled: reader });
  const save = h("button", { type: "button", id: "save-negatives", disabled: reader }, "Save negatives");
  const status = h("div");
  save.addEventListener("click", async () => {
    clear(status);
    save.disabled = true;
    const negatives = text.value.split("\n").map((s) => s.trim()).filter(Boolean);
    try {
      await api("PATCH", path, { body: { negatives, ...(reason.value.trim() ? { reason: reason.value.trim() } : {}) } });
      await done();
    } catch (err) {
      if (err.status === 403) ctx.demote();
      save.disabled = err.status === 403;
      status.append(errorBox(err));
    }
  });
  return h(
    "section",
    { class: "card form", id: "negatives" },
    h("h2", {}, "Negatives"),
    field("Questions this edit must not answer", text, "One a line: another attribute of the same subject, a sibling."),
    field("Reason", reason),
    h("div", { class: "actions" }, save),
    reader ? h("small", { class: "muted" }, "Changing negatives needs an admin key.") : null,
    status,
  );
}

function supersededBy(id, edits) {
  const why = h("small", { class: "muted" }, "A newer edit of the same question answers it now.");
  return h("div", { id: "superseded-by" }, editRef(id, edits.get(id)), h("br"), why);
}

function metadata(meta) {
  const entries = Object.entries(meta ?? {});
  if (!entries.length) return "—";
  const text = (v) => (typeof v === "string" ? v : JSON.stringify(v));
  return h("table", { class: "kv" }, entries.map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, text(v)))));
}

function tryIt(edit) {
  const out = h("div", { class: "compare", id: "try-results" });
  const button = h("button", { type: "button", id: "try-it" }, "Ask this prompt");
  button.addEventListener("click", async () => {
    button.disabled = true;
    clear(out, h("p", { class: "muted" }, "Asking…"));
    try {
      const ask = (useEdits) =>
        api("POST", "/generate", { body: { prompt: edit.prompt, chat: true, use_edits: useEdits } });
      const [withEdits, without] = await Promise.all([ask(true), ask(false)]);
      clear(
        out,
        answerCard("With edits", withEdits, edit.id, "answer-with"),
        answerCard("Without edits", without, null, "answer-without", true),
      );
    } catch (err) {
      clear(out, errorBox(err));
    } finally {
      button.disabled = false;
    }
  });
  return h(
    "section",
    { class: "card" },
    h("h2", {}, "Try it"),
    h("p", { class: "muted" }, "Asks the edit's prompt (chat format) with edits and with the unedited model."),
    button,
    out,
  );
}

// One /generate answer: the text, and which edit fired (or the nearest one and its score when none did).
export function answerCard(title, answer, thisEdit, id, editsOff = false) {
  return h(
    "div",
    { class: "answer", id },
    h("h3", {}, title),
    h("blockquote", {}, answer.text.trim() || "(empty)"),
    provenance(answer, thisEdit, editsOff),
  );
}

// `editsOff`: asked with use_edits=false, so no edit was even considered.
export function provenance(answer, thisEdit = null, editsOff = false) {
  if (editsOff) return h("p", { class: "unrouted" }, `Edits off: the unedited ${answer.model} answered.`);
  const mark = (editId) => (editId === thisEdit ? " (this edit)" : "");
  if (answer.routed_edit_id) {
    return h(
      "p",
      { class: "routed" },
      "Answered by edit ",
      editLink(answer.routed_edit_id),
      mark(answer.routed_edit_id),
      `, similarity ${score(answer.similarity)}`,
    );
  }
  const near = answer.nearest_edit_id;
  const nearest = near ? [" Nearest edit ", editLink(near), mark(near), ` scored ${score(answer.similarity)}.`] : [];
  return h("p", { class: "unrouted" }, `No edit fired: ${answer.model} answered alone.`, nearest);
}

function timeline(events, edits) {
  return h(
    "section",
    { class: "card" },
    h("h2", {}, "Timeline"),
    h(
      "ol",
      { class: "timeline", id: "timeline" },
      events.map((ev) =>
        h(
          "li",
          { "data-kind": ev.kind },
          when(ev.at),
          " ",
          badge(ev.kind),
          ` by ${ev.actor} · `,
          eventDetail(ev, edits, false),
        ),
      ),
    ),
  );
}
