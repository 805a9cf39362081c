// The yptask console: one page over the node's JSON-RPC API.
// Every text that comes from the node is put in with textContent, never as HTML.
//
// The scripts, loaded in this order by index.html (classic scripts sharing one global
// scope, no build step): plot.js (the SVG plots), editor.js (the task form), views.js
// (every view's render function), messages.js (the message browser, the timer ledger,
// the audit log), console.js (this file: helpers, the router, the
// live refresh, the role, the start).
//
// ROUTES. Every view, task, failure, timer and node has a URL: `#/VIEW` or
// `#/VIEW/ID` (the ID URI-encoded), either with an optional `?QUERY` (a view's filter, as
// `#/messages?state=queued&where=user_id%3D42`: `state.route.query`). ROUTES below is the one table of them:
//
//   view name -> { section: the <section id="view-..."> it shows,
//                  nav: the header link it marks active,
//                  render: async (id, { first }) => ..., live: true if it refreshes }
//
// `render` is called when the URL changes (`first` true) and, for a live view, every
// REFRESH_MS while the tab is visible (`first` false): it must update the page in place
// (`patch` below keeps scroll, focus and open <details>). To add a view: add its
// <section id="view-NAME" class="view" hidden> to index.html, a link
// <a href="#/NAME" data-view="NAME"> to the nav, its render function to a script of
// its own loaded before this one, and one line here (e.g. the audit log:
// `audit: { section: "audit", nav: "audit", render: renderAudit, live: true }`). The
// message browser is not live: a refresh would lose the rows ticked for a bulk action.
"use strict";

const state = { csrf: "", node: "", tasks: [], selected: null, members: [], route: null,
  missing: new Set(), role: "admin", span: 600 };
const METHOD_NOT_FOUND = -32601;
const REFRESH_MS = 3000;

const ROUTES = {
  overview: { section: "overview", nav: "overview", render: renderOverview, live: true },
  tasks: { section: "tasks", nav: "tasks", render: renderTasks, live: true },
  "new-task": { section: "tasks", nav: "tasks", render: renderNewTask, live: true },
  status: { section: "status", nav: "status", render: renderStatus, live: true },
  nodes: { section: "nodes", nav: "nodes", render: renderNodes, live: true },
  timers: { section: "timers", nav: "timers", render: renderTimers, live: true },
  errors: { section: "errors", nav: "errors", render: renderErrors, live: true },
  failures: { section: "errors", nav: "errors", render: renderErrors, live: true },
  scheduled: { section: "scheduled", nav: "scheduled", render: renderScheduled, live: true },
  trace: { section: "trace", nav: "trace", render: renderTrace, live: false },
  send: { section: "send", nav: "send", render: renderSend, live: false },
  messages: { section: "messages", nav: "messages", render: renderMessages, live: false },
  audit: { section: "audit", nav: "audit", render: renderAudit, live: true },
};
const DEFAULT_ROUTE = "overview";

// ---------------------------------------------------------------- helpers

// `reviver`: how JSON.parse reads the answer (see exactNumbers).
async function rpc(method, params, reviver) {
  const response = await fetch("/rpc", {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": state.csrf },
    body: JSON.stringify({ jsonrpc: "2.0", id: 1, method, params: params || {} }),
  });
  const body = JSON.parse(await response.text(), reviver);
  if (body.error) {
    const error = new Error(body.error.message);
    error.rpc = body.error;
    throw error;
  }
  return body.result;
}

function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes || {})) {
    if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) {
      node.addEventListener(key.slice(2), value);
      node._handlers = true;  // patch() replaces such a node rather than reusing it
    }
    else if (value !== undefined && value !== null && value !== false) node.setAttribute(key, value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

function clock(epoch) {
  return typeof epoch === "number" && epoch > 0 ? new Date(epoch * 1000).toLocaleString() : "-";
}

function fmt(value) {
  return value === null || value === undefined ? "-" : String(value);
}

// A link to a route: `href("tasks", "indexer")` is "#/tasks/indexer".
function href(view, id) {
  return id === undefined || id === null ? `#/${view}` : `#/${view}/${encodeURIComponent(id)}`;
}

function link(view, id, text) {
  return el("a", { href: href(view, id), text: text ?? fmt(id) });
}

function notice(text, isError) {
  const box = document.getElementById("notice");
  box.textContent = text;
  box.className = isError ? "notice error" : "notice";
  box.hidden = !text;
}

// A method a node may not have yet (an older node): its answer, or undefined when the node
// answers "method not found"; the caller shows one line instead of an error each refresh.
async function optional(method, params) {
  try {
    const result = await rpc(method, params);
    state.missing.delete(method);
    return result;
  } catch (error) {
    if (!error.rpc || error.rpc.code !== METHOD_NOT_FOUND) throw error;
    state.missing.add(method);
    return undefined;
  }
}

function missingText(method) {
  return `This node has no ${method} method yet (it answers "method not found"); ` +
    "upgrade it to use this view.";
}

function rowsOfCells(rows) {
  return rows.map((cells) => (cells instanceof Node ? cells : el("tr", {}, ...cells.map((c) =>
    c instanceof Node ? el("td", {}, c) : el("td", { text: fmt(c) })))));
}

function fillRows(tbody, rows) {
  patch(tbody, rowsOfCells(rows));
}

// Make `target`'s children look like `children` with as few changes as it takes: nodes of
// the same kind are kept and their attributes and texts updated, so a refresh does not
// flicker, keeps the scroll, the focus, a typed value and a <details> the admin opened.
function patch(target, children) {
  const old = [...target.childNodes];
  children.forEach((child, i) => {
    const current = old[i];
    if (current && sameKind(current, child)) morph(current, child);
    else if (current) target.replaceChild(child, current);
    else target.append(child);
  });
  for (const extra of old.slice(children.length)) extra.remove();
}

function sameKind(a, b) {
  return a.nodeType === b.nodeType && a.nodeName === b.nodeName &&
    (a.nodeType !== 1 || (a.dataset.key ?? "") === (b.dataset.key ?? ""));
}

function morph(current, next) {
  if (current.nodeType !== 1) {
    if (current.nodeValue !== next.nodeValue) current.nodeValue = next.nodeValue;
    return;
  }
  if (current.tagName === "svg" || next.dataset.replace !== undefined) {
    current.replaceWith(next);  // drawings are made whole
    return;
  }
  for (const { name } of [...current.attributes]) {
    if (name !== "open" && !next.hasAttribute(name)) current.removeAttribute(name);
  }
  for (const { name, value } of [...next.attributes]) {
    if (current.getAttribute(name) !== value) current.setAttribute(name, value);
  }
  // Handlers were added by el(); the new node's are the ones to keep.
  if (next._handlers || current._handlers) {
    current.replaceWith(next);
    return;
  }
  patch(current, [...next.childNodes]);
}

// ---------------------------------------------------------------- the router

function parseHash() {
  const [path, ...rest] = location.hash.replace(/^#\/?/, "").split("?");
  const query = new URLSearchParams(rest.join("?"));
  const parts = path.split("/");
  const view = parts[0] || DEFAULT_ROUTE;
  const id = parts.length > 1 ? decodeURIComponent(parts.slice(1).join("/")) : null;
  return Object.hasOwn(ROUTES, view) ? { view, id, query }
    : { view: DEFAULT_ROUTE, id: null, query, unknown: view };
}

async function route() {
  state.routedHash = location.hash;
  const where = parseHash();
  const spec = ROUTES[where.view];
  state.route = where;
  notice(state.nextNotice || (where.unknown ? `There is no view "${where.unknown}"; here is the overview.` : ""));
  state.nextNotice = null;
  for (const section of document.querySelectorAll("main > .view")) {
    section.hidden = section.id !== `view-${spec.section}`;
  }
  for (const a of document.querySelectorAll("nav a")) {
    a.classList.toggle("active", a.dataset.view === spec.nav);
  }
  document.title = `yptask: ${spec.nav}${where.id ? ` ${where.id}` : ""}`;
  await render(true);
}

let rendering = false;

// `force`: now, even while a live refresh is under way (after the admin changed something).
async function render(first, force) {
  const where = state.route;
  if (!where || (rendering && !first && !force)) return;
  rendering = true;
  try {
    await ROUTES[where.view].render(where.id, { first });
    if (state.route === where) applyRole(document.querySelector("main"));
    if (!first && document.getElementById("notice").dataset.stale) notice("");
  } catch (error) {
    notice(`The node did not answer: ${error.message}`, true);
    document.getElementById("notice").dataset.stale = "1";
  } finally {
    rendering = false;
  }
}

// Open a route: a new history entry (the back button returns), or in place of this one.
// At once, not at the next hashchange: what was clicked shows before anything is typed.
function go(view, id, replace) {
  openRoute(href(view, id), replace);
}

function openRoute(target, replace) {
  if (replace) history.replaceState(null, "", target);
  else if (location.hash !== target) history.pushState(null, "", target);
  route();
}

// A plain click on a link to a route opens it at once (a click with a modifier key still
// opens a new tab or window, as the browser does).
function followLink(event) {
  const a = event.target.closest && event.target.closest('a[href^="#/"]');
  if (!a || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  event.preventDefault();
  openRoute(a.getAttribute("href"), false);
}

// The back and forward buttons, and a hash typed in the address bar.
function hashMoved() {
  if (location.hash !== state.routedHash) route();
}

// Live views refresh by themselves while the tab is visible; a hidden tab asks nothing.
function tick() {
  if (document.hidden || !state.route || !ROUTES[state.route.view].live) return;
  render(false);
}

// ---------------------------------------------------------------- the role

const VIEWER_WHY = "Your role is viewer: you may look, not change anything here.";

// auth.whoami says "admin" or "viewer"; a node without it has only admins.
async function loadRole() {
  try {
    const answer = await rpc("auth.whoami");
    state.role = answer && answer.role === "viewer" ? "viewer" : "admin";
  } catch {
    state.role = "admin";
  }
  document.body.dataset.role = state.role;
}

// Every control that changes something carries data-change; a viewer's are disabled.
function applyRole(root) {
  if (state.role !== "viewer") return;
  for (const control of root.querySelectorAll("[data-change]")) {
    control.disabled = true;
    control.title = VIEWER_WHY;
  }
}

// ---------------------------------------------------------------- start

async function start() {
  const session = await fetch("/session");
  if (session.status === 401) {
    location.href = `/login${location.hash}`;  // the view asked for opens after login
    return;
  }
  const info = await session.json();
  state.csrf = info.csrf;
  state.node = info.node;
  document.getElementById("node-name").textContent = `node ${info.node}`;
  const logout = document.getElementById("logout");
  logout.hidden = !info.login;
  logout.addEventListener("click", async () => {
    await fetch("/logout", { method: "POST", headers: { "X-CSRF-Token": state.csrf } });
    location.href = "/login";
  });
  await loadRole();
  applyRole(document);
  setUpEditor();
  setUpViews();
  setUpMessages();
  document.addEventListener("click", followLink);
  window.addEventListener("hashchange", hashMoved);
  window.addEventListener("popstate", hashMoved);
  document.addEventListener("visibilitychange", tick);
  await route();
  setInterval(tick, REFRESH_MS);
}

start();
