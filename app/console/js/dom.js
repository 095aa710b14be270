// Small DOM helpers. Text always goes in as text nodes, never as HTML: prompts, targets and metadata are
// whatever someone typed, and this page holds an API key.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "class") el.className = value;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child !== undefined && child !== null && child !== false) el.append(child);
  }
  return el;
}

export function clear(el, ...children) {
  el.replaceChildren(...children.flat(Infinity).filter((c) => c !== undefined && c !== null && c !== false));
  return el;
}

export const pad = (n) => String(n).padStart(2, "0");

// Local time, to the second; the full ISO timestamp on hover.
export function when(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  const day = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
  const time = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  return h("time", { datetime: iso, title: iso }, `${day} ${time}`);
}

// Three decimals; a tie that came out a hair under zero reads 0.000, not -0.000.
export function score(x) {
  if (x === null || x === undefined) return "—";
  const text = Number(x).toFixed(3);
  return text === "-0.000" ? "0.000" : text;
}

export function badge(word) {
  const safe = String(word).replace(/[^a-z]/g, "");
  return h("span", { class: `badge badge-${safe}` }, String(word));
}

export function editLink(id, text = id) {
  return h("a", { href: `#/edits/${encodeURIComponent(id)}`, class: "mono" }, text);
}

// An edit named by its id (a link) with its prompt and target, each cut to a glance with the whole text on
// hover: `ed_1a2b3c4d… “When does X open?” → “9 am”`. `edit` null (unknown, or unreadable): the full id alone.
export function editRef(id, edit) {
  if (!edit) return h("span", { class: "edit-ref" }, editLink(id));
  return h(
    "span",
    { class: "edit-ref" },
    shortLink(id),
    " ",
    clipped(edit.prompt, PROMPT_CHARS, "ref-prompt"),
    " → ",
    clipped(edit.target, TARGET_CHARS, "ref-target"),
  );
}

// A link to an edit that shows "ed_" and its first 8 hex digits (enough to tell edits apart on a page), with
// the whole id in its title.
export function shortLink(id) {
  const short = id.length > 12 ? `${id.slice(0, 11)}…` : id;
  return h("a", { href: `#/edits/${encodeURIComponent(id)}`, class: "mono", title: id }, short);
}

const PROMPT_CHARS = 60;
const TARGET_CHARS = 32;

// Text in quotes, cut to `max` characters with an ellipsis (at a word's end when one is near); the whole text
// in its title when cut.
export function clipped(text, max, cls) {
  const chars = Array.from(String(text));
  if (chars.length <= max) return h("q", { class: cls }, chars.join(""));
  let cut = chars.slice(0, max - 1).join("");
  const space = cut.lastIndexOf(" ");
  if (space > max * 0.7) cut = cut.slice(0, space);
  return h("q", { class: cls, title: text }, `${cut.replace(/[\s,;:.!?]+$/, "")}…`);
}

export function training(train) {
  return `${train.steps} steps · ${Number(train.seconds).toFixed(1)} s`;
}

// An API error as the API said it; anything else as its message.
export function errorBox(err) {
  return h("div", { class: "error", role: "alert" }, err?.summary ?? String(err?.message ?? err));
}

// "key=value" lines (or ";"-separated pairs) as an object of strings; throws on a line without "=".
export function parsePairs(text, separator = /\n/, what = "metadata") {
  const pairs = {};
  const items = text.split(separator).map((s) => s.trim()).filter(Boolean);
  items.forEach((item) => {
    const at = item.indexOf("=");
    if (at < 1) throw new Error(`${what}: "${item}" is not key=value`);
    pairs[item.slice(0, at).trim()] = item.slice(at + 1).trim();
  });
  return pairs;
}

// A labelled field for forms.
export function field(label, control, hint) {
  return h("label", { class: "field" }, h("span", {}, label), control, hint ? h("small", {}, hint) : null);
}

// The edit ids an event names besides its own: those it supersedes, or the one that superseded it.
export function eventEditIds(event) {
  const d = event.detail ?? {};
  return [...(d.supersedes ?? []).map((s) => s.edit_id), d.by].filter(Boolean);
}

// An event's detail, by kind: what a reader of the audit log wants to see at a glance. `edits` (id -> edit, or
// null) names the other edits an event mentions with their prompt and target. `withPrompt`: a created event
// repeats its edit's prompt and target, for a page that does not show them already.
export function eventDetail(event, edits = new Map(), withPrompt = true) {
  const d = event.detail ?? {};
  const ref = (id) => editRef(id, edits.get(id) ?? null);
  switch (event.kind) {
    case "created": {
      const parts = withPrompt ? [`${d.prompt ?? ""} → ${d.target ?? ""}`] : [];
      if (d.steps !== undefined) parts.push(`trained ${d.steps} steps, ${Number(d.seconds).toFixed(1)} s`);
      const sup = (d.supersedes ?? []).map((s) => [
        "supersedes ",
        ref(s.edit_id),
        ` (similarity ${score(s.similarity)})`,
      ]);
      return h("span", {}, [...parts, ...sup].flatMap((part, i) => (i ? [" · ", part] : [part])));
    }
    case "revoked":
    case "restored":
      if (!d.reason) return h("span", { class: "muted" }, "no reason given");
      return h("span", {}, "reason: ", h("q", {}, d.reason));
    case "superseded":
      return h("span", {}, "now answered by ", ref(d.by), ` (similarity ${score(d.similarity)})`);
    case "negatives_set": {
      const list = (items) => (items?.length ? items.map((q) => `“${q}”`).join(", ") : "none");
      const why = d.reason ? [" · reason: ", h("q", {}, d.reason)] : [];
      return h("span", {}, `negatives ${list(d.before)} → ${list(d.after)}`, why);
    }
    default:
      return h("span", { class: "muted" }, Object.keys(d).length ? JSON.stringify(d) : "");
  }
}
