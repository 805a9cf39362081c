"use strict";
// Say so after a failed login (the page stays free of inline scripts: see the CSP).
const query = new URLSearchParams(location.search);
if (query.has("wait")) {
  document.getElementById("wait").hidden = false;
} else if (query.has("failed")) {
  document.getElementById("failed").hidden = false;
}
