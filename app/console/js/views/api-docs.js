// #/api: the API document in Swagger UI, inside the console.
//
// /docs needs a key whenever API keys are set (unless SOLA_PUBLIC_DOCS), and a browser cannot send one when it
// opens a page. Here the console fetches /openapi.json with the operator's key and hands Swagger UI the
// document and the key (pre-authorised: "Try it out" sends it as a Bearer token).

import { api, session } from "../api.js";
import { h } from "../dom.js";

const VENDOR = "vendor/swagger-ui"; // app/console/vendor/: served by the app, no CDN

let loading = null; // Swagger UI's script and stylesheet, loaded once per tab

function loadSwaggerUi() {
  loading ??= new Promise((resolve, reject) => {
    document.head.append(h("link", { rel: "stylesheet", href: `${VENDOR}/swagger-ui.css` }));
    const script = h("script", { src: `${VENDOR}/swagger-ui-bundle.js` });
    script.addEventListener("load", () => resolve(window.SwaggerUIBundle));
    script.addEventListener("error", () => reject(new Error("could not load Swagger UI")));
    document.head.append(script);
  });
  return loading;
}

export async function render(root) {
  const host = h("div", { id: "swagger-ui", class: "swagger" });
  root.append(
    h("h1", {}, "API"),
    h(
      "p",
      { class: "muted" },
      "The OpenAPI document of this server, with your key already authorised. ",
      "The same at ",
      h("a", { href: "../docs" }, "/docs"),
      " and ",
      h("a", { href: "../redoc" }, "/redoc"),
      " when SOLA_PUBLIC_DOCS is set (a browser sends no key when it opens a page).",
    ),
    host,
  );
  const [spec, SwaggerUIBundle] = await Promise.all([api("GET", "/openapi.json"), loadSwaggerUi()]);
  const ui = SwaggerUIBundle({ spec, domNode: host, deepLinking: false });
  if (session.key) ui.preauthorizeApiKey("bearer", session.key);
}
