// #/playground: ask anything (POST /generate) and see the answer, the edit that fired and its similarity; or
// route questions, one a line (POST /route): which edit each would reach, the runner-up, without generating.

import { api } from "../api.js";
import { clear, editLink, errorBox, field, h, score } from "../dom.js";
import { provenance } from "./edit.js";

const history = []; // this tab's answers, newest first: kept while the operator looks at other pages
const HISTORY = 20;

export async function render(root, params) {
  const prompt = h("textarea", { name: "prompt", rows: 3, required: true }, params.get("prompt") ?? "");
  const chat = h("input", { type: "radio", name: "format", value: "chat", checked: true });
  const raw = h("input", { type: "radio", name: "format", value: "raw" });
  const useEdits = h("input", { type: "checkbox", name: "use_edits", checked: true });
  const tokens = h("input", { type: "number", name: "max_new_tokens", min: 1, value: 32 });
  const ask = h("button", { type: "submit", id: "ask" }, "Ask");
  const routeButton = h("button", { type: "button", id: "route" }, "Route each line");
  const routes = h("div", { id: "routes" });
  const status = h("div");
  const answers = h("div", { id: "answers" });
  const form = h(
    "form",
    { class: "card form", id: "playground" },
    field("Prompt", prompt),
    h(
      "div",
      { class: "row" },
      h("label", { class: "inline" }, chat, " chat"),
      h("label", { class: "inline" }, raw, " raw completion"),
      h("label", { class: "inline" }, useEdits, " use edits"),
      h("label", { class: "inline" }, "max tokens ", tokens),
      ask,
      routeButton,
    ),
    status,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clear(status);
    ask.disabled = true;
    const body = {
      prompt: prompt.value,
      chat: chat.checked,
      use_edits: useEdits.checked,
      max_new_tokens: Number(tokens.value),
    };
    try {
      const answer = await api("POST", "/generate", { body });
      history.unshift({ body, answer });
      history.length = Math.min(history.length, HISTORY);
      showHistory(answers);
    } catch (err) {
      status.append(errorBox(err));
    } finally {
      ask.disabled = false;
    }
  });
  routeButton.addEventListener("click", async () => {
    clear(status);
    const questions = prompt.value.split("\n").map((s) => s.trim()).filter(Boolean);
    if (!questions.length) return;
    routeButton.disabled = true;
    try {
      const out = await api("POST", "/route", { body: { questions, chat: chat.checked } });
      clear(routes, routeTable(out.routes));
    } catch (err) {
      status.append(errorBox(err));
    } finally {
      routeButton.disabled = false;
    }
  });
  root.append(h("h1", {}, "Playground"), form, routes, answers);
  showHistory(answers);
}

function routeTable(rows) {
  const link = (id) => (id ? editLink(id) : h("span", { class: "muted" }, "none"));
  return h(
    "section",
    { class: "card" },
    h("h2", {}, "Routes"),
    h(
      "table",
      { class: "grid", id: "route-table" },
      h("thead", {}, h("tr", {}, ["Question", "Edit", "Score", "Runner-up", "Margin", "Vetoed"].map((c) => h("th", {}, c)))),
      h("tbody", {}, rows.map((r) =>
        h(
          "tr",
          { class: r.edit_id ? "routed" : "unrouted" },
          h("td", {}, r.question),
          h("td", {}, link(r.edit_id)),
          h("td", {}, score(r.score)),
          h("td", {}, link(r.runner_up_id)),
          h("td", {}, score(r.margin)),
          h("td", {}, r.vetoed.map((id) => editLink(id))),
        ),
      )),
    ),
  );
}

function showHistory(el) {
  clear(
    el,
    history.map(({ body, answer }, i) =>
      h(
        "section",
        { class: `card answer${i === 0 ? " latest" : ""}` },
        h(
          "p",
          { class: "question" },
          h("strong", {}, body.prompt),
          h("small", { class: "muted" }, ` · ${body.chat ? "chat" : "raw"}${body.use_edits ? "" : " · edits off"}`),
        ),
        h("blockquote", {}, answer.text.trim() || "(empty)"),
        provenance(answer, null, !body.use_edits),
      ),
    ),
  );
}
