"use strict";
// Say so after a failed login (the page stays free of inline scripts: see the CSP).
if (new URLSearchParams(location.search).has("failed")) {
  document.getElementById("failed").hidden = false;
}
