// #/edits/ID: one edit's fields, its audit trail, revoke / restore (admin keys), and "try it": any questions
// routed (which edit fires for each) and asked with and without edits, side by side.

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
  shortLink,
  training,
  when,
} from "../dom.js";

const MAX_QUESTIONS = 8; // "try it" asks at most this many: each is two generations

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
    h("div", { class: "columns" }, facts(edit, edits), tryIt(edit, edits)),
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

// "Try it": questions, one a line (the edit's prompt to start with), each routed (POST /route: which edit fires)
// and asked with edits and without (POST /generate, chat format), side by side.
function tryIt(edit, edits) {
  const questions = h("textarea", { name: "questions", rows: 3 }, edit.prompt);
  const out = h("div", { id: "try-results" });
  const button = h("button", { type: "button", id: "try-it" }, "Ask");
  button.addEventListener("click", async () => {
    const typed = questions.value.split("\n").map((s) => s.trim()).filter(Boolean);
    if (!typed.length) {
      clear(out, errorBox("Type a question to ask: one a line."));
      return;
    }
    const asked = typed.slice(0, MAX_QUESTIONS);
    button.disabled = true;
    clear(out, h("p", { class: "muted" }, asked.length > 1 ? `Asking ${asked.length} questions…` : "Asking…"));
    try {
      const generate = (prompt, useEdits) =>
        api("POST", "/generate", { body: { prompt, chat: true, use_edits: useEdits } });
      const [routed, answers] = await Promise.all([
        api("POST", "/route", { body: { questions: asked, chat: true } }),
        Promise.all(asked.map((q) => Promise.all([generate(q, true), generate(q, false)]))),
      ]);
      const named = routed.routes.flatMap((r) => [r.edit_id, r.nearest_edit_id, ...r.vetoed]);
      await fetchEdits([...named, ...answers.map(([withEdits]) => withEdits.routed_edit_id)], edits);
      const dropped = typed.length - asked.length;
      const note = `Asked the first ${MAX_QUESTIONS} questions; ${dropped} left out.`;
      clear(
        out,
        dropped ? h("p", { class: "warning" }, note) : null,
        asked.map((q, i) => tryResult(q, routed.routes[i], answers[i], edit, edits)),
      );
    } catch (err) {
      clear(out, errorBox(err));
    } finally {
      button.disabled = false;
    }
  });
  return h(
    "section",
    { class: "card form", id: "try-it-card" },
    h("h2", {}, "Try it"),
    field(
      "Questions",
      questions,
      `One a line, up to ${MAX_QUESTIONS}: each is routed, then asked (chat format) with edits and without.`,
    ),
    h(
      "p",
      { class: "muted hint" },
      "Near misses (another attribute of the same subject, a sibling's name) should show “no edit”.",
    ),
    button,
    out,
  );
}

// One question of "try it": which edit fires for it (this one, another, or none), then both answers.
function tryResult(question, route, [withEdits, without], edit, edits) {
  const thisId = edit.id;
  const fires = !route.edit_id ? "none" : route.edit_id === thisId ? "this" : "other";
  const ref = (id) => (id === thisId ? h("span", { class: "this-edit" }, "this edit") : editRef(id, edits.get(id)));
  // /route and /generate route alike; should they ever differ, say so rather than show one of them.
  const answered = withEdits.routed_edit_id ?? null;
  const differs =
    answered === route.edit_id
      ? null
      : h("p", { class: "warning" }, "Yet the answer with edits came from ", answered ? ref(answered) : "no edit", ".");
  return h(
    "div",
    { class: "try-result", "data-fires": fires },
    h("p", { class: "question" }, h("strong", {}, question)),
    firing(route, fires, ref, edit),
    differs,
    h(
      "div",
      { class: "compare" },
      answerBox("With edits", withEdits, "answer-with"),
      answerBox("Without edits", without, "answer-without"),
    ),
  );
}

function firing(route, fires, ref, edit) {
  const vetoed = route.vetoed.length
    ? [" · vetoed: ", route.vetoed.flatMap((id, i) => (i ? [", ", ref(id)] : [ref(id)]))]
    : [];
  if (fires === "none") {
    // The nearest edit is worth naming only when it scored at all: 0 is no overlap, not a near miss.
    const nearby = route.nearest_edit_id && route.score >= 0.0005;
    const near = nearby ? [" · nearest ", ref(route.nearest_edit_id), `, score ${score(route.score)}`] : [];
    const revoked = edit.status === "active" ? null : ` · this edit is ${edit.status}`;
    return h("p", { class: "fires unrouted" }, h("strong", {}, "No edit fires"), near, vetoed, revoked);
  }
  const other = route.runner_up_id;
  const runnerUp = other === edit.id ? "this edit" : other && shortLink(other);
  const margin = runnerUp ? [`, margin ${score(route.margin)} over `, runnerUp] : [];
  const who =
    fires === "this"
      ? h("strong", {}, "This edit fires")
      : [h("strong", {}, "Another edit fires:"), " ", ref(route.edit_id)];
  return h("p", { class: `fires routed fires-${fires}` }, who, ` · score ${score(route.score)}`, margin, vetoed);
}

function answerBox(title, answer, cls) {
  const text = answer.text.trim() || "(empty)";
  return h("div", { class: `answer ${cls}` }, h("h3", {}, title), h("blockquote", {}, text));
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
