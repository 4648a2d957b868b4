// The API docs page (/api/docs): Swagger UI (vendored) rendering openapi.json beside it.
// Nothing leaves the server: no validator badge (it would load an image from swagger.io),
// no spec URL from the query string.
/* global SwaggerUIBundle */
"use strict";

// Loaded with `defer`, after the bundle and the parsed page.
window.ui = SwaggerUIBundle({
  url: new URL("openapi.json", window.location.href).href,
  dom_id: "#swagger-ui",
  validatorUrl: null,
  queryConfigEnabled: false,
  deepLinking: true,
  tryItOutEnabled: false,
  persistAuthorization: false,
});
