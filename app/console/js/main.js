// The console's shell: sign-in, the navigation bar and a hash router (#/edits, #/edits/ID, #/new, ...).

import { ApiError, probeRole, session } from "./api.js";
import { clear, errorBox, field, h } from "./dom.js";
import * as apiDocs from "./views/api-docs.js";
import * as audit from "./views/audit.js";
import * as edit from "./views/edit.js";
import * as edits from "./views/edits.js";
import * as newEdit from "./views/new-edit.js";
import * as playground from "./views/playground.js";

const view = document.getElementById("view");
const nav = document.getElementById("nav");
const who = document.getElementById("who");

// What every view gets: the caller's role ("admin" or "reader"), and a way to learn it was wrong.
const ctx = {
  role: null,
  anonymous: false,
  // An admin action refused with 403: the key is a reader's (its role may have changed since sign-in).
  demote() {
    ctx.role = "reader";
    showWho();
  },
};

const routes = [
  [/^\/edits\/([^/]+)$/, edit.render, "edits"],
  [/^\/edits$/, edits.render, "edits"],
  [/^\/new$/, newEdit.render, "new"],
  [/^\/playground$/, playground.render, "playground"],
  [/^\/audit$/, audit.render, "audit"],
  [/^\/api$/, apiDocs.render, "api"],
];

function currentRoute() {
  const [path, query = ""] = (location.hash.slice(1) || "/edits").split("?");
  return { path, params: new URLSearchParams(query) };
}

async function route() {
  if (!ctx.role) return;
  const { path, params } = currentRoute();
  const match = routes.find(([pattern]) => pattern.test(path));
  // Each render draws into its own element: a slow page that finishes after the operator moved on draws
  // into a detached element, never over the page now shown.
  const root = h("div", { class: "page" });
  clear(view, root);
  if (!match) {
    root.append(errorBox(`no page ${path}`));
    return;
  }
  const [pattern, render, section] = match;
  for (const link of nav.querySelectorAll("a")) link.classList.toggle("current", link.dataset.section === section);
  const args = pattern.exec(path).slice(1).map(decodeURIComponent);
  try {
    await render(root, params, ctx, ...args);
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return signOut(err.summary);
    root.append(errorBox(err));
  }
}

function showWho() {
  const role = ctx.anonymous ? "anonymous admin (no API keys configured)" : `${ctx.role} key`;
  clear(
    who,
    h("span", { class: `role role-${ctx.role}`, id: "role" }, role),
    ctx.anonymous ? null : h("button", { type: "button", class: "link", onclick: () => signOut() }, "Sign out"),
  );
}

function signOut(message) {
  session.key = "";
  ctx.role = null;
  nav.hidden = true;
  clear(who);
  showLogin(message);
}

function showLogin(message) {
  const input = h("input", { type: "password", name: "key", autocomplete: "off", required: true, autofocus: true });
  const status = h("div", {}, message ? errorBox(message) : null);
  const form = h(
    "form",
    { class: "card login", id: "login" },
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, "Your API key is kept in this tab only (sessionStorage) and sent as a Bearer token."),
    field("API key", input),
    h("button", { type: "submit" }, "Sign in"),
    status,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clear(status);
    try {
      await signIn(input.value.trim());
    } catch (err) {
      status.append(errorBox(err));
    }
  });
  clear(view, form);
  input.focus();
}

async function signIn(key) {
  const role = await probeRole(key); // a 401 (wrong key) is thrown to the form
  session.key = key;
  enter(role, !key);
}

function enter(role, anonymous) {
  ctx.role = role;
  ctx.anonymous = anonymous;
  nav.hidden = false;
  showWho();
  route();
}

async function start() {
  window.addEventListener("hashchange", route);
  try {
    // A key from earlier in this tab, or none: a server without API keys lets anyone in as admin.
    enter(await probeRole(), !session.key);
  } catch (err) {
    if (err.status === 401) showLogin(session.key ? err.summary : null);
    else clear(view, errorBox(err));
  }
}

start();
