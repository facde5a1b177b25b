// Starts the vendored Swagger UI (swagger-ui-dist, LICENSE beside this file) on chatdock's own document:
// schemas shown expanded, "Try it out" against this server with the Bearer key typed into Authorize.
// Nothing is fetched from another host: no validator badge, no remote configuration, no stored key.
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: false,
  docExpansion: "list",
  defaultModelRendering: "model", // the Schema tab, not an example, for every body
  defaultModelExpandDepth: 3,
  defaultModelsExpandDepth: 1,
  displayRequestDuration: true,
  persistAuthorization: false,
  tryItOutEnabled: false,
  validatorUrl: null,
  withCredentials: false,
  queryConfigEnabled: false,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
});
