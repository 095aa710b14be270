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

export const score = (x) => (x === null || x === undefined ? "—" : Number(x).toFixed(3));

export function badge(word) {
  const safe = String(word).replace(/[^a-z]/g, "");
  return h("span", { class: `badge badge-${safe}` }, String(word));
}

export function editLink(id, text = id) {
  return h("a", { href: `#/edits/${encodeURIComponent(id)}`, class: "mono" }, text);
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

// An event's detail, by kind: what a reader of the audit log wants to see at a glance.
export function eventDetail(event) {
  const d = event.detail ?? {};
  switch (event.kind) {
    case "created": {
      const parts = [`${d.prompt ?? ""} → ${d.target ?? ""}`];
      if (d.steps !== undefined) parts.push(` · trained ${d.steps} steps, ${Number(d.seconds).toFixed(1)} s`);
      const sup = (d.supersedes ?? []).flatMap((s) => [
        " · supersedes ",
        editLink(s.edit_id),
        ` (${score(s.similarity)})`,
      ]);
      return h("span", {}, parts, sup);
    }
    case "revoked":
    case "restored":
      if (!d.reason) return h("span", { class: "muted" }, "no reason given");
      return h("span", {}, "reason: ", h("q", {}, d.reason));
    case "superseded":
      return h("span", {}, "by ", editLink(d.by), ` (similarity ${score(d.similarity)})`);
    case "negatives_set": {
      const list = (items) => (items?.length ? items.map((q) => `“${q}”`).join(", ") : "none");
      const why = d.reason ? [" · reason: ", h("q", {}, d.reason)] : [];
      return h("span", {}, `negatives ${list(d.before)} → ${list(d.after)}`, why);
    }
    default:
      return h("span", { class: "muted" }, Object.keys(d).length ? JSON.stringify(d) : "");
  }
}
