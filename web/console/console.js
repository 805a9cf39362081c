// The yptask console: one page over the node's JSON-RPC API.
// Every text that comes from the node is put in with textContent, never as HTML.
"use strict";

const state = { csrf: "", node: "", tasks: [], selected: null, members: [], view: "tasks",
  missing: new Set() };
const METHOD_NOT_FOUND = -32601;
const REFRESH_MS = 2000;

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
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function clock(epoch) {
  return typeof epoch === "number" && epoch > 0 ? new Date(epoch * 1000).toLocaleString() : "-";
}

function fmt(value) {
  return value === null || value === undefined ? "-" : String(value);
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

function fillRows(tbody, rows) {
  tbody.replaceChildren(...rows.map((cells) => el("tr", {}, ...cells.map((c) =>
    c instanceof Node ? el("td", {}, c) : el("td", { text: fmt(c) })))));
}

// ---------------------------------------------------------------- views

function show(view) {
  state.view = view;
  notice("");
  for (const section of document.querySelectorAll(".view")) {
    section.hidden = section.id !== `view-${view}`;
  }
  for (const button of document.querySelectorAll("nav button")) {
    button.classList.toggle("active", button.dataset.view === view);
  }
  refresh();
}

async function refresh() {
  try {
    if (state.view === "tasks") await loadTasks();
    else if (state.view === "status") await loadStatus();
    else if (state.view === "nodes") await loadNodes();
    else if (state.view === "timers") await loadTimers();
    else if (state.view === "errors") await loadErrors();
    else if (state.view === "scheduled") await loadScheduled();
  } catch (error) {
    notice(`The node did not answer: ${error.message}`, true);
  }
}

// ---------------------------------------------------------------- tasks

async function loadTasks() {
  const [tasks, members] = await Promise.all([rpc("tasks.list", {}, exactNumbers), rpc("nodes")]);
  state.tasks = tasks;
  state.members = members.map((m) => m.name);
  document.getElementById("member-names").replaceChildren(
    ...["*", ...state.members].map((name) => el("option", { value: name })));
  const groups = new Map();
  for (const task of tasks) {
    if (!groups.has(task.group)) groups.set(task.group, []);
    groups.get(task.group).push(task);
  }
  const list = document.getElementById("task-list");
  list.replaceChildren(...[...groups.keys()].sort().map((group) => el("div", { class: "group" },
    el("h3", { text: group }),
    ...groups.get(group).map((task) => el("button", {
      class: task.name === state.selected ? "task selected" : "task",
      "data-task": task.name, text: task.name, onclick: () => select(task.name),
    })))));
}

function select(name) {
  state.selected = name;
  const task = state.tasks.find((t) => t.name === name);
  fillForm(task || null);
  loadTasks();
}

// The form's inputs, by the definition field each shows. A field of a definition that
// has none (one a later node knows) is shown, and kept, in the "other fields" box: SAVE
// sends every field the form shows, exactly as it shows it, and nothing else.
const TEXT_FIELDS = ["name", "group", "worker_class", "cwd", "stdout", "stderr", "rate_limit",
  "rate_limit_key"];
const NUMBER_FIELDS = ["default_priority", "message_ttl_s", "max_idle_s", "max_attempts", "retry_backoff_s", "message_timeout_s",
  "shutdown_timeout_s", "max_queue", "max_restarts", "restart_period_s", "restart_generation",
  "log_max_mb", "log_keep"];
const ROW_FIELDS = ["messages", "command", "python_path", "env", "settings", "nodes"];
const FORM_FIELDS = new Set([...TEXT_FIELDS, ...NUMBER_FIELDS, ...ROW_FIELDS, "use_stdio", "debug",
  "paused", "accepting", "priority_tickets", "log_format"]);
const NEW_TASK = { name: "", group: "default", worker_class: "", command: [], use_stdio: false,
  cwd: "", python_path: [], log_format: "text",
  stdout: "", stderr: "", debug: false, paused: false, accepting: true, messages: [], env: {},
  settings: {}, nodes: { "*": 1 } };
const JSON_NUMBER = /^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?$/;

// Numbers of a definition keep the text the node wrote (2.0 stays 2.0, a 20-digit
// integer stays exact): JavaScript's own numbers would turn them into 2 and a rounding.
function exactNumbers(key, value, context) {
  return typeof value === "number" && context && JSON.rawJSON ? JSON.rawJSON(context.source) : value;
}

function numberText(value) {
  return value === undefined || value === null ? "" : JSON.stringify(value);
}

function formError(field, message) {
  return Object.assign(new Error(`field '${field}': ${message}`), { field });
}

function number(field, input) {
  const text = input.value;
  if (!input.validity.badInput) {
    if (JSON_NUMBER.test(text)) return JSON.rawJSON ? JSON.rawJSON(text) : Number(text);
    if (text !== "" && Number.isFinite(Number(text))) return Number(text);
  }
  throw formError(field, "needs a number here (digits, e.g. 2 or 1.5)");
}

function addRow(kind, values) {
  const rows = document.getElementById(`rows-${kind}`);
  const remove = el("button", { type: "button", class: "remove-row", text: "−" });
  let row;
  if (kind === "messages" || kind === "command" || kind === "python_path") {
    const hint = { messages: "upai.photos.*", command: "one argument, spaces and all",
      python_path: "a folder (relative to the working directory)" }[kind];
    row = el("div", { class: "row" }, el("input", { class: "value", placeholder: hint }), remove);
  } else if (kind === "nodes") {
    row = el("div", { class: "row" },
      el("input", { class: "key", placeholder: "node (* = any)", list: "member-names" }),
      el("input", { class: "value", type: "number", min: "0", placeholder: "workers" }), remove);
  } else if (kind === "settings") {
    // A value is text (a string, as typed) or JSON (a number, true, false, null, a list,
    // an object): what was a string stays a string, however it looks.
    row = el("div", { class: "row" }, el("input", { class: "key", placeholder: "name" }),
      el("select", { class: "type", title: "text: a string as typed; JSON: a number, true, false, null, [list] or {object}" },
        el("option", { value: "text", text: "text" }), el("option", { value: "json", text: "JSON" })),
      el("input", { class: "value", placeholder: "value" }), remove);
  } else {
    row = el("div", { class: "row" }, el("input", { class: "key", placeholder: "name" }),
      el("input", { class: "value", placeholder: "value" }), remove);
  }
  remove.addEventListener("click", () => row.remove());
  const inputs = row.querySelectorAll("input, select");
  (values || []).forEach((v, i) => { inputs[i].value = v; });
  rows.append(row);
}

function fillForm(task) {
  const form = document.getElementById("task-form");
  form.hidden = false;
  clearErrors();
  const t = task || NEW_TASK;
  document.getElementById("form-title").textContent = task ? `Task ${task.name}` : "New task";
  for (const key of TEXT_FIELDS) form.elements[key].value = t[key] ?? "";
  for (const key of NUMBER_FIELDS) form.elements[key].value = numberText(t[key]);
  form.elements.name.readOnly = Boolean(task);
  form.elements.use_stdio.value = t.use_stdio ? "yes" : "no";
  form.elements.log_format.value = t.log_format || "text";
  form.elements.debug.checked = Boolean(t.debug);
  form.elements.paused.checked = Boolean(t.paused);
  form.elements.accepting.checked = t.accepting !== false;
  form.elements.priority_tickets.value = (t.priority_tickets || []).map(numberText).join(" ");
  for (const kind of ROW_FIELDS) document.getElementById(`rows-${kind}`).replaceChildren();
  (t.messages || []).forEach((m) => addRow("messages", [m]));
  (t.command || []).forEach((a) => addRow("command", [a]));
  (t.python_path || []).forEach((a) => addRow("python_path", [a]));
  Object.entries(t.env || {}).forEach(([k, v]) => addRow("env", [k, v]));
  Object.entries(t.settings || {}).forEach(([k, v]) =>
    addRow("settings", typeof v === "string" ? [k, "text", v] : [k, "json", JSON.stringify(v)]));
  Object.entries(t.nodes || {}).forEach(([k, v]) => addRow("nodes", [k, numberText(v)]));
  const other = Object.fromEntries(Object.entries(t).filter(([k]) => !FORM_FIELDS.has(k)));
  form.elements.other.value = Object.keys(other).length ? JSON.stringify(other, null, 2) : "";
  for (const id of ["restart", "delete"]) document.getElementById(id).hidden = !task;
}

// Every row but a blank one, as the elements of its inputs.
function rowsOf(kind) {
  return [...document.querySelectorAll(`#rows-${kind} .row`)]
    .map((row) => [...row.querySelectorAll("input, select")])
    .filter((inputs) => inputs.some((input) => input.tagName === "INPUT" && input.value !== ""));
}

function table(kind, value) {
  const result = {};
  for (const inputs of rowsOf(kind)) {
    const key = inputs[0].value;
    if (Object.hasOwn(result, key)) throw formError(kind, `${JSON.stringify(key)} is given twice; remove one of its rows`);
    result[key] = value(key, inputs);
  }
  return result;
}

function settingValue(key, [, type, input]) {
  if (type.value === "text") return input.value;
  try {
    return JSON.parse(input.value, exactNumbers);
  } catch {
    throw formError("settings", `${JSON.stringify(key)}: ${JSON.stringify(input.value)} is not JSON; ` +
      "choose text for a string");
  }
}

// Ten integers, one per priority level, as typed (spaces or commas between); the node
// checks how many and their range, and names the field if they are wrong.
function tickets(text) {
  return text.split(/[\s,]+/).filter((word) => word !== "").map((word) => {
    if (!/^-?[0-9]+$/.test(word)) throw formError("priority_tickets", `${JSON.stringify(word)} is not an integer`);
    return Number(word);
  });
}

function readForm() {
  const form = document.getElementById("task-form");
  const task = {};
  for (const key of TEXT_FIELDS) task[key] = form.elements[key].value;
  task.use_stdio = form.elements.use_stdio.value === "yes";
  task.log_format = form.elements.log_format.value;
  task.debug = form.elements.debug.checked;
  task.paused = form.elements.paused.checked;
  task.accepting = form.elements.accepting.checked;
  task.priority_tickets = tickets(form.elements.priority_tickets.value);
  task.messages = rowsOf("messages").map(([input]) => input.value);
  task.command = rowsOf("command").map(([input]) => input.value);
  task.python_path = rowsOf("python_path").map(([input]) => input.value);
  task.env = table("env", (key, [, input]) => input.value);
  task.settings = table("settings", settingValue);
  task.nodes = table("nodes", (key, [, input]) => number("nodes", input));
  for (const key of NUMBER_FIELDS) {  // an empty one is not given: the node's default
    if (form.elements[key].value !== "" || form.elements[key].validity.badInput) {
      task[key] = number(key, form.elements[key]);
    }
  }
  const text = form.elements.other.value;
  let other = {};
  try {
    if (text.trim()) other = JSON.parse(text, exactNumbers);
  } catch (error) {
    throw formError("other", `is not JSON (${error.message}); fix it or empty the box`);
  }
  if (typeof other !== "object" || other === null || Array.isArray(other)) {
    throw formError("other", 'must be a JSON object, e.g. {"field": "value"}, or empty');
  }
  for (const key of Object.keys(other)) {
    if (FORM_FIELDS.has(key)) throw formError("other", `'${key}' has its own input above; set it there`);
  }
  return { ...task, ...other };
}

function clearErrors() {
  for (const span of document.querySelectorAll("#task-form [data-error]")) span.textContent = "";
}

function showError(error) {
  // The node names the bad field: "task 'x': field 'max_idle_s': must be ..."
  const message = error.message;
  const field = error.field || (/field '([a-z_]+)'/.exec(message) || [])[1] || "_form";
  const target = document.querySelector(`#task-form [data-error="${field}"]`)
    || document.querySelector('#task-form [data-error="_form"]');
  target.textContent = message;
  const folded = target.closest("details");
  if (folded) folded.open = true;
}

async function save(event) {
  event.preventDefault();
  clearErrors();
  // Marked until the form shows what was saved (or why not): an edit typed before then
  // would be overwritten by the refill, so the admin and the tests wait for it to go.
  const form = event.target;
  form.dataset.busy = "1";
  try {
    const saved = await rpc("tasks.put", { definition: readForm() }, exactNumbers);
    state.selected = saved.name;
    notice(saved.changed === false
      ? `Task ${saved.name} unchanged: nothing stored, no worker restarted.`
      : `Task ${saved.name} saved on every node.`);
    await loadTasks();
    fillForm(state.tasks.find((t) => t.name === saved.name));
  } catch (error) {
    showError(error);
  } finally {
    delete form.dataset.busy;
  }
}

async function restartTask() {
  try {
    const answer = await rpc("tasks.restart", { name: state.selected });
    notice(`Task ${answer.task}: generation ${answer.generation}, ${answer.replaced} worker(s) replaced here; the other nodes follow.`);
  } catch (error) {
    showError(error);
  }
}

async function deleteTask() {
  if (!window.confirm(`Delete task ${state.selected} on every node?`)) return;
  try {
    await rpc("tasks.delete", { name: state.selected });
    notice(`Task ${state.selected} deleted.`);
    state.selected = null;
    document.getElementById("task-form").hidden = true;
    await loadTasks();
  } catch (error) {
    showError(error);
  }
}

// ---------------------------------------------------------------- status and plots

async function loadStatus() {
  const [status, metrics] = await Promise.all([rpc("status"), rpc("metrics", { step: 10, span: 600 })]);
  const names = Object.keys(status.tasks).sort();
  fillRows(document.querySelector("#status-table tbody"), names.map((name) => {
    const t = status.tasks[name];
    const workers = Object.entries(t.workers).map(([n, c]) => `${n}:${c}`).join(" ");
    return [name, workers, taskState(t), t.queued, t.in_flight, t.handled_per_s, t.failed_per_s,
      t.expired, t.latency_ms.p50, t.latency_ms.p90, t.latency_ms.p99];
  }));
  const plots = document.getElementById("plots");
  plots.replaceChildren(...names.map((name) => {
    const rates = el("canvas", { width: "420", height: "110", "data-plot": `${name}-rates` });
    const latency = el("canvas", { width: "420", height: "110", "data-plot": `${name}-latency` });
    drawPlot(rates, metrics[name] || [], [["handled_per_s", "#2a7ae2", "handled/s"],
      ["failed_per_s", "#d33", "failed/s"]]);
    drawPlot(latency, metrics[name] || [], [["p50_ms", "#2a2", "p50 ms"], ["p99_ms", "#a52", "p99 ms"]]);
    return el("div", { class: "plot" }, el("h3", { text: name }), rates, latency);
  }));
}

// A task's state; while its workers cannot start, with why: the exit and the last line
// they wrote to stderr (the whole tail and the log's path on hover).
function taskState(t) {
  const error = t.start_error;
  if (!error) return t.state;
  const tail = (error.stderr_tail || "").trim().split("\n");
  return el("span", {}, fmt(t.state), el("div", {
    class: "start-error", "data-start-error": "",
    title: `${error.stderr_tail || error.error}\n\nstderr log: ${fmt(error.stderr_log)}`,
    text: `cannot start: ${fmt(error.exit)}: ${tail[tail.length - 1] || error.error}`,
  }));
}

function drawPlot(canvas, points, series) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width;
  const h = canvas.height;
  const pad = 22;
  const values = points.flatMap((p) => series.map(([key]) => p[key] || 0));
  const top = Math.max(1e-9, ...values);
  ctx.clearRect(0, 0, w, h);
  ctx.strokeStyle = "#ccc";
  ctx.strokeRect(pad, 4, w - pad - 4, h - pad);
  ctx.fillStyle = "#555";
  ctx.font = "10px sans-serif";
  ctx.fillText(top.toPrecision(3), 2, 12);
  ctx.fillText("0", 10, h - pad + 4);
  series.forEach(([key, color, label], index) => {
    ctx.strokeStyle = color;
    ctx.beginPath();
    points.forEach((p, i) => {
      const x = pad + ((w - pad - 4) * i) / Math.max(1, points.length - 1);
      const y = 4 + (h - pad) * (1 - (p[key] || 0) / top);
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
    ctx.fillStyle = color;
    ctx.fillText(label, pad + 4 + index * 80, h - 6);
  });
}

// ---------------------------------------------------------------- nodes and timers

async function loadNodes() {
  const members = await rpc("nodes");
  fillRows(document.querySelector("#nodes-table tbody"), members.map((m) => [
    m.self ? `${m.name} (this node)` : m.name, m.state, m.link, m.http, clock(m.started_at),
    m.self ? "-" : `${m.last_heard_s} s ago`]));
}

async function loadTimers() {
  const timers = await rpc("timers.list");
  document.getElementById("timer-leader").textContent =
    !timers.length ? "No timers." : timers[0].leader
      ? `Fired by node ${timers[0].leader} (lease epoch ${timers[0].epoch}).`
      : "Fired by no node now: the timer lease is free (an election, or no majority).";
  fillRows(document.querySelector("#timers-table tbody"), timers.map((t) => [
    t.name, t.cron, t.timezone, t.message, clock(t.last_fire),
    t.enabled ? clock(t.next_fire) : "disabled", t.last_error || "-"]));
}

// ---------------------------------------------------------------- errors and replay

async function loadErrors() {
  const [failures, dead] = await Promise.all([rpc("failures.list", { limit: 50 }),
    rpc("dead.list", { limit: 100 })]);
  document.getElementById("failures").replaceChildren(...(failures.length ? failures.map((f) =>
    el("details", { class: "failure" },
      el("summary", { text: `${clock(f.at)}  ${f.task}  ${f.name}  attempt ${f.attempt}  ${f.error_class}: ${f.error}` }),
      el("p", { text: `message ${f.id}` }),
      el("pre", { text: f.traceback || "(no traceback)" }))) : [el("p", { text: "No failures." })]));
  const filter = document.getElementById("dead-filter").value;
  const shown = dead.filter((d) => filter === "all" || (d.error_class === EXPIRED) === (filter === "expired"));
  document.getElementById("dead-letters").replaceChildren(...(shown.length ? shown.map((d) =>
    el("details", { class: d.error_class === EXPIRED ? "dead-letter expired" : "dead-letter",
      "data-id": d.id, "data-error-class": fmt(d.error_class) },
      el("summary", {}, el("span", { text: `${d.id}  ${d.task}  ${d.name}  ${deadReason(d)}  ` }),
        el("button", { class: "replay", text: "Replay", onclick: () => replay(d.id, d.task) })),
      el("p", { text: `attempts ${d.attempt}, died ${clock(d.died_at)}` }),
      el("h4", { text: "Payload" }), el("pre", { text: JSON.stringify(d.payload, null, 2) }),
      el("h4", { text: "Traceback" }), el("pre", { text: d.traceback || "(none)" })))
    : [el("p", { text: "No dead letters." })]));
}

// Expired: never handed to a worker (its ttl_s, deadline or the task's message_ttl_s passed).
const EXPIRED = "Expired";

function deadReason(d) {
  return d.error_class === EXPIRED ? `expired (not delivered in time): ${fmt(d.error)}`
    : `${d.error_class}: ${d.error}`;
}

async function replay(id, task) {
  const count = await rpc("dead.replay", { id, task });
  notice(`Replayed ${count} delivery(ies) of ${id}.`);
  await loadErrors();
}

async function replayAll() {
  const dead = await rpc("dead.list", { limit: 1000 });
  for (const d of dead) await rpc("dead.replay", { id: d.id, task: d.task });
  notice(`Replayed ${dead.length} dead letter(s).`);
  await loadErrors();
}

// ---------------------------------------------------------------- scheduled and cancel

async function loadScheduled() {
  const rows = await optional("scheduled.list", { limit: 500 });
  const missing = document.getElementById("scheduled-missing");
  missing.hidden = rows !== undefined;
  missing.textContent = rows === undefined ? missingText("scheduled.list") : "";
  const tbody = document.querySelector("#scheduled-table tbody");
  if (rows === undefined) {
    tbody.replaceChildren();
    return;
  }
  fillRows(tbody, rows.map((r) => [r.id, r.name, r.task, r.node, clock(r.not_before), r.kind,
    r.attempt, r.priority,
    el("button", { class: "cancel", "data-id": fmt(r.id), text: "Cancel", onclick: () => cancel(r.id) })]));
  if (!rows.length) tbody.append(el("tr", {}, el("td", { colspan: "9", text: "Nothing is scheduled." })));
}

function perNode(answer) {
  return Object.entries(answer || {}).map(([node, tasks]) => `${node}: ${tasks.join(", ")}`).join("; ");
}

async function cancel(id) {
  if (!window.confirm(`Cancel message ${id} on every node?`)) return;
  try {
    const answer = await optional("cancel", { id });
    if (answer === undefined) {
      notice(missingText("cancel"), true);
      return;
    }
    const cancelled = perNode(answer.cancelled);
    const running = perNode(answer.running);
    notice(`Message ${id}: ${cancelled ? `cancelled on ${cancelled}` : "nothing left to cancel"}` +
      (running ? `; already running (not stopped): ${running}` : "") + ".");
    await loadScheduled();
  } catch (error) {
    notice(`Cancel ${id}: ${error.message}`, true);
  }
}

// ---------------------------------------------------------------- trace

// A message's deliveries, whichever way the node lists them: [{task, node, state, ...}]
// or {task: state | {node, state, ...}}.
function deliveriesOf(m) {
  const given = m.deliveries ?? m.tasks ?? [];
  if (Array.isArray(given)) return given.map((d) => (typeof d === "object" && d ? d : { task: d }));
  return Object.entries(given).map(([task, d]) => (typeof d === "object" && d ? { task, ...d } : { task, state: d }));
}

function traceNode(m, depth) {
  const line = el("div", { class: "trace-message", "data-id": fmt(m.id), "data-depth": String(depth) },
    el("div", { class: "trace-head", text: `${fmt(m.name)}  ${fmt(m.id)}  ${clock(m.published_at)}` +
      (m.node ? `  from ${m.node}` : "") }),
    el("ul", {}, ...deliveriesOf(m).map((d) => el("li", { class: "trace-task",
      text: `${fmt(d.task)} on ${fmt(d.node)}: ${fmt(d.state)}` +
        (d.attempt ? `, attempt ${d.attempt}` : "") + (d.error ? ` (${d.error})` : "") +
        (d.at || d.done_at ? ` at ${clock(d.at || d.done_at)}` : "") }))));
  line.style.marginLeft = `${depth * 1.5}em`;  // the CSSOM, allowed by the page's CSP
  return line;
}

async function showTrace(event) {
  event.preventDefault();
  const id = document.getElementById("t-id").value.trim();
  const title = document.getElementById("trace-title");
  const tree = document.getElementById("trace-tree");
  title.className = "";
  tree.replaceChildren();
  try {
    const answer = await optional("trace", { id });
    if (answer === undefined) {
      title.textContent = missingText("trace");
      return;
    }
    const messages = answer.messages || [];
    title.textContent = `Trace ${answer.trace_id}: ${messages.length} message(s).`;
    const ids = new Set(messages.map((m) => m.id));
    const children = new Map();
    for (const m of messages) {
      const parent = ids.has(m.parent_id) ? m.parent_id : null;  // a parent outside: a root
      if (!children.has(parent)) children.set(parent, []);
      children.get(parent).push(m);
    }
    const walk = (parent, depth, seen) => (children.get(parent) || []).flatMap((m) =>
      seen.has(m.id) ? [] : [traceNode(m, depth), ...walk(m.id, depth + 1, new Set([...seen, m.id]))]);
    tree.replaceChildren(...walk(null, 0, new Set()));
  } catch (error) {
    title.textContent = error.message;
    title.className = "error";
  }
}

// ---------------------------------------------------------------- send

// The cast options typed in, as numbers; an empty input is not sent (the node or the
// task decides). The node checks them and names the field it refuses.
function castOptions() {
  const options = {};
  for (const key of ["priority", "ttl_s", "delay_s"]) {
    const input = document.getElementById(`s-${key}`);
    if (input.value !== "" || input.validity.badInput) options[key] = input.validity.badInput ? input.value : Number(input.value);
  }
  const at = document.getElementById("s-at").value;
  if (at) options.at = new Date(at).getTime() / 1000;  // local time, as the browser shows it
  return options;
}

async function send(event) {
  event.preventDefault();
  const reply = document.getElementById("send-reply");
  reply.dataset.sent = "0";  // "1" once this send has its answer (or its error) shown
  let payload;
  try {
    payload = JSON.parse(document.getElementById("s-payload").value);
  } catch (error) {
    reply.textContent = `The payload is not JSON: ${error.message}`;
    reply.dataset.sent = "1";
    return;
  }
  const name = document.getElementById("s-name").value.trim();
  const mode = document.getElementById("s-mode").value;
  const traceparent = document.getElementById("s-traceparent").value.trim();
  const trace = traceparent ? { traceparent } : {};  // sent only when given
  try {
    const result = mode === "call"
      ? await rpc("call", { name, msg: payload, timeout: Number(document.getElementById("s-timeout").value), ...trace })
      : await rpc("cast", { name, msg: payload, ...castOptions(), ...trace });
    reply.textContent = JSON.stringify(result, null, 2);
    reply.className = "";
  } catch (error) {
    reply.textContent = `${error.message}\n${JSON.stringify(error.rpc && error.rpc.data, null, 2)}`;
    reply.className = "error";
  }
  reply.dataset.sent = "1";
}

// ---------------------------------------------------------------- start

async function start() {
  const session = await fetch("/session");
  if (session.status === 401) {
    location.href = "/login";
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
  for (const button of document.querySelectorAll("nav button")) {
    button.addEventListener("click", () => show(button.dataset.view));
  }
  for (const button of document.querySelectorAll(".add-row")) {
    button.addEventListener("click", () => addRow(button.dataset.rows));
  }
  document.getElementById("add-task").addEventListener("click", () => {
    state.selected = null;
    fillForm(null);
  });
  document.getElementById("task-form").addEventListener("submit", save);
  document.getElementById("restart").addEventListener("click", restartTask);
  document.getElementById("delete").addEventListener("click", deleteTask);
  document.getElementById("replay-all").addEventListener("click", replayAll);
  document.getElementById("send-form").addEventListener("submit", send);
  document.getElementById("dead-filter").addEventListener("change", loadErrors);
  document.getElementById("trace-form").addEventListener("submit", showTrace);
  await refresh();
  // Live views refresh by themselves; the task editor only when asked (edits stay put).
  setInterval(() => { if (!["tasks", "send", "trace"].includes(state.view)) refresh(); }, REFRESH_MS);
}

start();
