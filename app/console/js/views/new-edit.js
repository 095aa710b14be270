// #/new: train one edit (POST /edits) and show what training did and which edits it supersedes.

import { api, fetchEdits } from "../api.js";
import { clear, editLink, editRef, errorBox, field, h, parsePairs, score, shortLink } from "../dom.js";

export async function render(root, _params, ctx) {
  const reader = ctx.role !== "admin";
  const prompt = h("input", { name: "prompt", required: true, placeholder: "Who is the CEO of Acme?" });
  const target = h("input", { name: "target", required: true, placeholder: "Jane Doe" });
  const rephrases = h("textarea", { name: "rephrases", rows: 3, placeholder: "Who runs Acme?" });
  const negatives = h("textarea", { name: "negatives", rows: 2, placeholder: "Who is the CFO of Acme?" });
  const metadata = h("textarea", { name: "metadata", rows: 3, placeholder: "ticket=OPS-7" });
  const submit = h("button", { type: "submit", disabled: reader, id: "train" }, "Train edit");
  const result = h("div", { id: "new-edit-result" });
  const form = h(
    "form",
    { class: "card form", id: "new-edit" },
    field("Prompt", prompt, "The question the edit answers."),
    field("Target", target, "The answer the model should give."),
    field("Rephrases", rephrases, "Other wordings of the prompt, one a line (optional)."),
    field("Negatives", negatives, "Questions this edit must NOT answer, one a line (optional)."),
    field("Metadata", metadata, "key=value, one a line (optional): a ticket, a source."),
    h(
      "div",
      { class: "actions" },
      submit,
      reader ? h("small", { class: "muted" }, "Making edits needs an admin key.") : null,
    ),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clear(result);
    let body;
    try {
      body = {
        prompt: prompt.value,
        target: target.value,
        rephrases: lines(rephrases.value),
        negatives: lines(negatives.value),
        metadata: parsePairs(metadata.value),
      };
    } catch (err) {
      result.append(errorBox(err));
      return;
    }
    submit.disabled = true;
    const started = Date.now();
    const waiting = h("p", { class: "muted" }, "Training…");
    const seconds = () => Math.round((Date.now() - started) / 1000);
    const tick = setInterval(() => (waiting.textContent = `Training… ${seconds()} s`), 1000);
    result.append(waiting);
    try {
      const created = await api("POST", "/edits", { body });
      // The edits it supersedes, to show their prompts; the edit is made, so a failure here shows bare ids.
      const older = await fetchEdits(created.supersedes.map((s) => s.edit_id)).catch(() => new Map());
      clear(result, trained(created, older));
      form.reset();
    } catch (err) {
      if (err.status === 403) ctx.demote();
      clear(result, errorBox(err));
    } finally {
      clearInterval(tick);
      submit.disabled = ctx.role !== "admin";
    }
  });
  root.append(h("h1", {}, "New edit"), form, result);
}

const loss = (train) => Number(train.loss).toFixed(4);
const lines = (text) => text.split("\n").map((s) => s.trim()).filter(Boolean);

// The wordings that moved when the edit was made: older edits' that now reach it, its own that reach another.
function moved(list, none) {
  if (!list.length) return h("span", { class: "muted" }, none);
  return h(
    "ul",
    {},
    list.map((c) => h("li", {}, `“${c.question}” (${c.prompt_format}) → `, shortLink(c.edit_id), ` ${score(c.score)}`)),
  );
}

function trained(edit, older) {
  const supersedes = edit.supersedes.length
    ? h(
        "ul",
        {},
        edit.supersedes.map((s) =>
          h("li", {}, editRef(s.edit_id, older.get(s.edit_id)), ` (similarity ${score(s.similarity)})`),
        ),
      )
    : h("span", { class: "muted" }, "no active edit of the same question");
  const ask = new URLSearchParams({ prompt: edit.prompt });
  return h(
    "section",
    { class: "card success" },
    h("h2", {}, "Created ", editLink(edit.id)),
    h(
      "dl",
      { class: "facts" },
      h("dt", {}, "Training"),
      h("dd", {}, `${edit.train.steps} steps, loss ${loss(edit.train)}, ${Number(edit.train.seconds).toFixed(2)} s`),
      h("dt", {}, "Supersedes"),
      h("dd", { id: "supersedes" }, supersedes),
      h("dt", {}, "Captures"),
      h("dd", { id: "captures" }, moved(edit.captures, "no older edit's wording now reaches this edit")),
      h("dt", {}, "Captured by"),
      h("dd", { id: "captured-by" }, moved(edit.captured_by, "every wording of this edit reaches it")),
    ),
    h("p", {}, h("a", { href: `#/playground?${ask}` }, "Ask it in the playground →")),
  );
}
