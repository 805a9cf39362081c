// The message browser (#/messages?FILTER, #/messages/ID), its bulk actions, the timer
// ledger on a timer's page and the audit log (#/audit). Render functions named in ROUTES.
"use strict";

const MESSAGE_STATES = ["queued", "delayed", "inflight", "retrying", "dead", "expired", "done", "cancelled"];
const FILTER_KEYS = ["task", "state", "name", "priority", "since", "until", "where"];
const BULK_ACTIONS = { cancel: "Cancel", retry_now: "Retry now", replay: "Replay", delete: "Delete",
  priority: "Change priority of" };
const PAGE_SIZE = 50;

// `user_id = 42, user.name = "ann"` -> {"user_id": 42, "user.name": "ann"}: a value is a JSON
// number, true, false, null or a quoted string ('...' too); an unquoted word is a string.
function parseWhere(text) {
  const where = {};
  const pattern = /\s*([A-Za-z0-9_.$@-]+)\s*=\s*("(?:[^"\\]|\\.)*"|'[^']*'|[^,]*?)\s*(,|$)/y;
  let rest = text.trim();
  if (!rest) return where;
  pattern.lastIndex = 0;
  while (pattern.lastIndex < rest.length) {
    const start = pattern.lastIndex;
    const m = pattern.exec(rest);
    if (!m || m[0] === "") throw new Error(`the payload filter cannot be read from "${rest.slice(start)}": write field = value`);
    const raw = m[2];
    let value;
    if (raw.startsWith("'")) value = raw.slice(1, -1);
    else if (raw.startsWith("\"") || /^(-?\d+(\.\d+)?([eE][+-]?\d+)?|true|false|null)$/.test(raw)) value = JSON.parse(raw);
    else if (raw === "") throw new Error(`the payload field ${m[1]} has no value`);
    else value = raw;
    where[m[1]] = value;
    if (m[3] === "") break;
  }
  return where;
}

// The filter of the URL (#/messages?state=queued&where=user_id%3D42) as messages.list params.
function filterOf(query) {
  const filter = {};
  for (const key of FILTER_KEYS) {
    const value = (query.get(key) || "").trim();
    if (!value) continue;
    if (key === "priority") filter.priority = Number(value);
    else if (key === "since" || key === "until") filter[key] = Number(value) || new Date(value).getTime() / 1000;
    else if (key === "where") filter.where = parseWhere(value);
    else filter[key] = value;
  }
  return filter;
}

function localInput(epoch) {  // epoch seconds -> a datetime-local value in the browser's time
  if (!epoch) return "";
  const d = new Date(epoch * 1000 - new Date().getTimezoneOffset() * 60000);
  return d.toISOString().slice(0, 16);
}

function fillFilterForm(query) {
  const form = document.getElementById("msg-filter");
  for (const key of FILTER_KEYS) {
    const value = query.get(key) || "";
    form.elements[key].value = key === "since" || key === "until"
      ? (Number(value) ? localInput(Number(value)) : value) : value;
  }
}

function queryOfForm() {
  const form = document.getElementById("msg-filter");
  const query = new URLSearchParams();
  for (const key of FILTER_KEYS) {
    let value = form.elements[key].value.trim();
    if (value && (key === "since" || key === "until")) value = String(new Date(value).getTime() / 1000);
    if (value) query.set(key, value);
  }
  return query;
}

async function renderMessages(id, { first }) {
  const list = document.getElementById("messages-list");
  const card = document.getElementById("message-card");
  list.hidden = id !== null;
  card.hidden = id === null;
  if (id !== null) return renderMessage(id, card);
  const query = state.route.query;
  const key = query.toString();
  if (first || state.msgKey !== key) {
    fillFilterForm(query);
    state.msgKey = key;
    state.msgCursors = [null];
  }
  const error = document.getElementById("msg-error");
  let filter;
  try {
    filter = filterOf(query);
    error.textContent = "";
  } catch (problem) {
    error.textContent = problem.message;
    return;
  }
  state.msgFilter = filter;
  let page;
  try {
    page = await rpc("messages.list", { ...filter, limit: PAGE_SIZE, cursor: state.msgCursors.at(-1) });
  } catch (problem) {
    if (!problem.rpc) throw problem;
    error.textContent = problem.message;  // a bad filter: said beside it, the page stays
    return;
  }
  state.msgNext = page.next;
  document.getElementById("msg-total").textContent =
    `${page.total} delivery(ies) match on node ${state.node}; page ${state.msgCursors.length}.`;
  document.getElementById("msg-next").disabled = !page.next;
  document.getElementById("msg-prev").disabled = state.msgCursors.length < 2;
  fillRows(document.querySelector("#messages-table tbody"), page.messages.length ? page.messages.map((m) =>
    el("tr", { "data-key": `${m.id}-${m.task}`, "data-id": m.id, "data-state": m.state },
      el("td", {}, el("input", { type: "checkbox", class: "pick", value: m.id, "aria-label": `select ${m.id}`,
        "data-change": "" })),
      el("td", {}, link("messages", m.id, m.id)), el("td", { text: fmt(m.name) }),
      el("td", {}, link("tasks", m.task, m.task)),
      el("td", {}, el("span", { class: `badge msg-${m.state}`, text: m.state })),
      el("td", { class: "n", text: fmt(m.priority) }), el("td", { text: clock(m.published_at) }),
      el("td", { class: "n", text: fmt(m.attempt) }), el("td", { class: "preview", text: fmt(m.payload_preview) }))
  ) : [el("tr", {}, el("td", { colspan: "9", text: "No message matches." }))]);
  document.getElementById("msg-all").checked = false;
}

function openFilter(event) {
  event.preventDefault();
  const query = queryOfForm();
  try {
    if (query.get("where")) parseWhere(query.get("where"));
  } catch (problem) {
    document.getElementById("msg-error").textContent = problem.message;
    return;
  }
  openRoute(`#/messages${query.toString() ? `?${query}` : ""}`, false);
}

function pageMessages(step) {
  if (step > 0 && state.msgNext) state.msgCursors.push(state.msgNext);
  else if (step < 0 && state.msgCursors.length > 1) state.msgCursors.pop();
  render(false, true);
}

// ---------------------------------------------------------------- bulk actions

// Resolves true when the admin confirms `text` in the page's dialog.
function confirmDialog(text) {
  const dialog = document.getElementById("confirm-dialog");
  document.getElementById("confirm-text").textContent = text;
  return new Promise((resolve) => {
    const done = (answer) => () => { dialog.close(); resolve(answer); };
    document.getElementById("confirm-yes").onclick = done(true);
    document.getElementById("confirm-no").onclick = done(false);
    dialog.oncancel = done(false);
    dialog.showModal();
  });
}

function bulkParams() {
  const action = document.getElementById("bulk-action").value;
  const params = { action };
  if (action === "priority") params.priority = Number(document.getElementById("bulk-priority").value);
  return params;
}

// The count a filter matches, from the node's refusal of a bulk without confirm_count.
async function countOfFilter(params) {
  try {
    await rpc("messages.bulk", params);
  } catch (problem) {
    const found = problem.rpc && /'confirm_count' must be (\d+)/.exec(problem.message);
    if (found) return Number(found[1]);
    throw problem;
  }
  throw new Error("the node changed messages without a confirmation");
}

async function bulk(onFilter) {
  const params = bulkParams();
  const verb = BULK_ACTIONS[params.action];
  try {
    let count;
    if (onFilter) {
      params.filter = state.msgFilter || {};
      count = await countOfFilter(params);
    } else {
      params.ids = [...new Set([...document.querySelectorAll("#messages-table input.pick:checked")].map((c) => c.value))];
      count = params.ids.length;
      if (!count) {
        notice("Select messages first (the boxes on the left), or act on the whole filter.", true);
        return;
      }
    }
    if (!count) {
      notice(`${verb}: no message matches the filter.`);
      return;
    }
    const to = params.action === "priority" ? ` to ${params.priority}` : "";
    if (!await confirmDialog(`${verb} ${count} message${count === 1 ? "" : "s"}${to}?`)) return;
    if (onFilter) params.confirm_count = count;
    const result = await rpc("messages.bulk", params);
    const why = [...new Set(result.skipped.map((s) => s.why))].join("; ");
    notice(`${verb}: ${result.done} of ${result.matched} done` +
      (result.skipped.length ? `, ${result.skipped.length} skipped (${why})` : "") + ".");
    document.getElementById("notice").dataset.result = JSON.stringify(result);
    await render(false, true);
  } catch (problem) {
    notice(`${verb}: ${problem.message}`, true);
  }
}

// ---------------------------------------------------------------- one message

function meta(pairs) {
  return el("dl", { class: "figures" }, ...pairs.map(([k, v]) =>
    el("div", { "data-key": k }, el("dt", { text: k }), v instanceof Node ? el("dd", {}, v) : el("dd", { text: fmt(v) }))));
}

async function renderMessage(id, card) {
  let m;
  try {
    m = await rpc("messages.get", { id });
  } catch (problem) {
    if (!problem.rpc) throw problem;
    patch(card, [el("h2", { text: `Message ${id}` }), el("p", { class: "missing", text: problem.message })]);
    return;
  }
  patch(card, [el("h2", { text: `Message ${m.id}` }),
    el("p", {}, link("trace", m.id, "its trace"), el("span", { text: " · " }),
      el("a", { href: `#/messages?name=${encodeURIComponent(m.name)}`, text: "messages of this name" })),
    meta([["name", m.name], ["node", m.node], ["published", clock(m.published_at)], ["priority", m.priority],
      ["deadline", clock(m.deadline)], ["done", clock(m.done_at)], ["trace id", m.trace_id],
      ["parent", m.parent_id ? link("messages", m.parent_id, m.parent_id) : null], ["cancelled", m.cancelled ? "yes" : "no"]]),
    el("h3", { text: "Payload" }), el("pre", { class: "payload", text: JSON.stringify(m.payload, null, 2) }),
    el("h3", { text: "Deliveries" }),
    wrap(el("table", { id: "deliveries-table" }, el("thead", {}, el("tr", {}, ...["Task", "State", "Priority",
      "Due", "Attempt", "Error"].map((h) => el("th", { text: h })))),
    el("tbody", {}, ...(m.deliveries || []).map((d) => el("tr", { "data-key": d.task, "data-task": d.task },
      el("td", {}, link("tasks", d.task, d.task)), el("td", {}, el("span", { class: `badge msg-${d.state}`, text: d.state })),
      el("td", { text: fmt(d.priority) }), el("td", { text: clock(d.not_before) }), el("td", { text: fmt(d.attempt) }),
      el("td", { class: "preview", text: d.error_class ? `${d.error_class}: ${fmt(d.error)}` : fmt(d.last_error) })))))),
    el("h3", { text: "Attempts" }),
    (m.attempts || []).length ? wrap(el("table", { id: "attempts-table" }, el("thead", {}, el("tr", {},
      ...["Task", "#", "Node", "Worker", "Started", "Duration", "Outcome", "Error"].map((h) => el("th", { text: h })))),
    el("tbody", {}, ...m.attempts.map((a) => el("tr", { "data-key": `${a.task}-${a.attempt}`, "data-outcome": a.outcome },
      el("td", { text: a.task }), el("td", { text: fmt(a.attempt) }), el("td", { text: fmt(a.node) }),
      el("td", { text: fmt(a.worker) }), el("td", { text: clock(a.started_at) }),
      el("td", { text: typeof a.duration_s === "number" ? `${(a.duration_s * 1000).toFixed(1)} ms` : "-" }),
      el("td", {}, el("span", { class: `badge attempt-${a.outcome}`, text: a.outcome })),
      el("td", {}, a.error_class || a.error ? el("details", { class: "attempt-error" },
        el("summary", { text: `${fmt(a.error_class)}: ${fmt(a.error)}` }),
        el("pre", { text: a.traceback || "(no traceback)" })) : el("span", { text: "-" })))))))
      : el("p", { class: "hint", text: "No attempt settled here yet." })]);
}

// ---------------------------------------------------------------- the timer ledger

const OUTCOME_BADGE = { fired: "ok", missed: "bad", skipped: "held", duplicate_suppressed: "idle", run_now: "busy" };

function ledgerTick(entry, zone) {
  return el("time", { "data-zone": zone, title: `your browser's time: ${clock(entry.tick)}`,
    text: `${fmt(entry.tick_local)} ${zone}` });
}

async function timerControls(name, timer) {
  const act = async (method, said) => {
    try {
      const answer = await rpc(method, { name });
      notice(said(answer));
      await render(false, true);
    } catch (problem) {
      notice(`${method} ${name}: ${problem.message}`, true);
    }
  };
  return el("div", { class: "buttons", "data-key": "timer-buttons" },
    el("button", { type: "button", id: "timer-run-now", "data-change": "", text: "Run now",
      onclick: () => act("timers.run_now", (a) => `Timer ${name} cast ${a.id}.`) }),
    timer.paused
      ? el("button", { type: "button", id: "timer-resume", "data-change": "", text: "Resume",
        onclick: () => act("timers.resume", () => `Timer ${name} resumed.`) })
      : el("button", { type: "button", id: "timer-pause", "data-change": "", text: "Pause",
        onclick: () => act("timers.pause", () => `Timer ${name} paused: its ticks are noted as skipped.`) }));
}

// Called by renderTimers for a timer's page: its buttons and its ledger into #timer-ledger.
async function renderTimerLedger(name, timer) {
  const box = document.getElementById("timer-ledger");
  box.hidden = !timer;
  if (!timer) return;
  const ledger = await rpc("timers.ledger", { name, limit: 100 });
  const zone = ledger.timezone || timer.timezone || "UTC";
  patch(box, [await timerControls(name, timer),
    el("h3", { text: `Ledger (ticks in ${zone})` }),
    ...(ledger.unreached && ledger.unreached.length
      ? [el("p", { class: "error", text: `Not answered: ${ledger.unreached.join(", ")} (their rows are missing).` })] : []),
    wrap(el("table", { id: "ledger-table" }, el("thead", {}, el("tr", {}, ...[`Tick (${zone})`, "Outcome", "Reason",
      "Message", "Node", "Epoch", "Decided"].map((h) => el("th", { text: h })))),
    el("tbody", {}, ...(ledger.entries.length ? ledger.entries.map((e) => el("tr", {
      "data-key": `${e.tick}-${e.node}-${e.outcome}-${e.id}`, "data-outcome": e.outcome },
    el("td", {}, ledgerTick(e, zone)),
    el("td", {}, el("span", { class: `badge ${OUTCOME_BADGE[e.outcome] || "idle"}`, text: e.outcome.replace(/_/g, " ") })),
    el("td", { text: fmt(e.reason) }), el("td", {}, e.id ? link("messages", e.id, e.id) : el("span", { text: "-" })),
    el("td", { text: fmt(e.node) }), el("td", { text: fmt(e.epoch) }), el("td", { text: clock(e.at) })))
      : [el("tr", {}, el("td", { colspan: "7", text: "No tick noted yet." }))]))))]);
}

// ---------------------------------------------------------------- the audit log

async function renderAudit(id, { first }) {
  if (first) state.auditBefore = [null];
  const answer = await rpc("audit.list", { limit: PAGE_SIZE, before: state.auditBefore.at(-1) });
  const entries = Array.isArray(answer) ? answer : answer.entries || [];
  state.auditLast = entries.length === PAGE_SIZE ? entries.at(-1).id : null;
  document.getElementById("audit-older").disabled = !state.auditLast;
  document.getElementById("audit-newer").disabled = state.auditBefore.length < 2;
  fillRows(document.querySelector("#audit-table tbody"), entries.length ? entries.map((e) =>
    el("tr", { "data-key": e.id, "data-method": e.method }, ...[clock(e.at), e.node,
      `${fmt(e.who)} (${fmt(e.role)}, ${fmt(e.via)}, ${fmt(e.address)})`, e.method, e.target,
      el("span", { class: `badge ${e.outcome === "ok" ? "ok" : "bad"}`, text: fmt(e.outcome) })]
      .map((c) => (c instanceof Node ? el("td", {}, c) : el("td", { text: fmt(c) })))))
    : [el("tr", {}, el("td", { colspan: "6", text: "No change was made yet." }))]);
}

function pageAudit(step) {
  if (step > 0 && state.auditLast) state.auditBefore.push(state.auditLast);
  else if (step < 0 && state.auditBefore.length > 1) state.auditBefore.pop();
  render(false, true);
}

function setUpMessages() {
  const select = document.getElementById("m-state");
  for (const name of MESSAGE_STATES) select.append(el("option", { value: name, text: name }));
  const action = document.getElementById("bulk-action");
  for (const [value, text] of Object.entries(BULK_ACTIONS)) action.append(el("option", { value, text }));
  action.addEventListener("change", () => { document.getElementById("bulk-priority").hidden = action.value !== "priority"; });
  document.getElementById("msg-filter").addEventListener("submit", openFilter);
  document.getElementById("msg-next").addEventListener("click", () => pageMessages(1));
  document.getElementById("msg-prev").addEventListener("click", () => pageMessages(-1));
  document.getElementById("bulk-selected").addEventListener("click", () => bulk(false));
  document.getElementById("bulk-filter").addEventListener("click", () => bulk(true));
  document.getElementById("msg-all").addEventListener("change", (event) => {
    for (const box of document.querySelectorAll("#messages-table input.pick")) box.checked = event.target.checked;
  });
  document.getElementById("audit-older").addEventListener("click", () => pageAudit(1));
  document.getElementById("audit-newer").addEventListener("click", () => pageAudit(-1));
}
