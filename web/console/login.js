"use strict";
// Say so after a failed login (the page stays free of inline scripts: see the CSP).
const query = new URLSearchParams(location.search);
if (query.has("wait")) {
  document.getElementById("wait").hidden = false;
} else if (query.has("failed")) {
  document.getElementById("failed").hidden = false;
}
// A link to a view (/#/tasks/indexer) came here through the login redirect with its hash:
// post to /login with it, so the node's redirect back to / keeps it and opens that view.
if (/^#\/[^\s]*$/.test(location.hash)) {
  document.querySelector("form.login-box").action = `/login${location.hash}`;
}
