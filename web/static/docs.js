// The API reference, drawn from the gateway's OpenAPI document (no CDN, no build).
"use strict";
function el(tag, cls, text) {
  const n = document.createElement(tag);
  if (cls) n.className = cls;
  if (text !== undefined) n.textContent = text;
  return n;
}
function schemaText(schema, spec) {
  if (!schema) return "";
  if (schema.$ref) schema = spec.components.schemas[schema.$ref.split("/").pop()];
  const props = schema.properties || {};
  return "{" + Object.entries(props).map(([k, v]) => `${k}: ${v.type || "any"}`).join(", ") + "}";
}
window.addEventListener("DOMContentLoaded", async () => {
  const spec = await (await fetch("/api/openapi.json")).json();
  document.getElementById("about").textContent = spec.info.description;
  const root = document.getElementById("paths");
  for (const [path, methods] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(methods)) {
      const card = el("section", "card");
      const h = el("h2");
      h.append(el("code", "", method.toUpperCase() + " " + path));
      card.append(h, el("p", "", op.summary || ""));
      const params = (op.parameters || []).map((p) => `${p.name} (${p.in}${p.required ? ", required" : ""}): ${p.description || p.schema.type || ""}`);
      if (params.length) card.append(el("p", "hint", "parameters: " + params.join("; ")));
      const body = op.requestBody && op.requestBody.content["application/json"];
      if (body) card.append(el("p", "hint", "body: " + schemaText(body.schema, spec)));
      root.append(card);
    }
  }
});
