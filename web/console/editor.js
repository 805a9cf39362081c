// The tasks view: the task list with state badges, a task's page (its state, its plots,
// its definition in the editor), and the editor's form itself.
// The form is refilled from the node only while it has no unsaved change and no focus:
// a live refresh never overwrites what the admin is typing.
"use strict";

// ---------------------------------------------------------------- the list and the page

async function loadTaskList() {
  const [tasks, members, status] = await Promise.all([rpc("tasks.list", {}, exactNumbers),
    rpc("nodes"), rpc("status")]);
  state.tasks = tasks;
  state.status = status;
  state.members = members.map((m) => m.name);
  patch(document.getElementById("member-names"),
    ["*", ...state.members].map((name) => el("option", { value: name })));
  const groups = new Map();
  for (const task of tasks) {
    if (!groups.has(task.group)) groups.set(task.group, []);
    groups.get(task.group).push(task);
  }
  patch(document.getElementById("task-list"), [...groups.keys()].sort().map((group) =>
    el("div", { class: "group" }, el("h3", { text: group }),
      ...groups.get(group).map((task) => el("a", {
        class: task.name === state.selected ? "task selected" : "task", "data-task": task.name,
        href: href("tasks", task.name) }, el("span", { class: "task-name", text: task.name }),
      badges(status.tasks[task.name], task, { short: true }))))));
}

async function renderTasks(name, { first }) {
  let shown = false;
  if (first) {  // the definition known already, at once: what is typed next stays
    state.selected = name;
    const known = state.tasks.find((t) => t.name === name);
    for (const a of document.querySelectorAll("#task-list a.task")) {
      a.classList.toggle("selected", a.dataset.task === name);
    }
    if (known) {
      fillForm(known);
      shown = true;
    }
  }
  await loadTaskList();
  if (!stillOn("tasks", name)) return;  // another view was opened meanwhile: leave it be
  const task = state.tasks.find((t) => t.name === name);
  const summary = document.getElementById("task-summary");
  const form = document.getElementById("task-form");
  if (name === null) {  // no task chosen: every task at a glance, not an empty pane
    form.hidden = true;
    state.filled = null;
    patch(summary, [el("h2", { text: "Tasks" }),
      el("p", { class: "hint", text: "Pick a task on the left to see and edit it, or add one." }),
      taskTable(state.status, state.tasks)]);
    return;
  }
  if (!task) {
    form.hidden = true;
    patch(summary, [el("h2", { text: `Task ${name}` }),
      el("p", { class: "missing", text: `No task named ${name} on this node's cluster. ` }),
      link("tasks", null, "All tasks")]);
    return;
  }
  await taskPage(summary, task, state.status.tasks[name]);
  if (!stillOn("tasks", name)) return;
  const editing = form.dataset.dirty || form.contains(document.activeElement) || form.dataset.busy;
  if ((first && !shown) || (!editing && state.filled !== JSON.stringify(task))) fillForm(task);
}

function stillOn(view, id) {
  return state.route && state.route.view === view && state.route.id === id;
}

async function renderNewTask(id, { first }) {
  if (first) {
    state.selected = null;
    fillForm(null);
    patch(document.getElementById("task-summary"), [el("p", { class: "hint", text: "Give it a name, what runs it (a worker class or a command) " +
        "and the messages it takes; SAVE stores it on every node." })]);
  }
  await loadTaskList();
}

// A task's page above its form: badges, the figures of its status, its plots.
async function taskPage(summary, task, t) {
  const metrics = await loadMetrics(state.span);
  if (!stillOn("tasks", task.name)) return;
  const figures = t ? [["workers", Object.entries(t.workers).map(([n, c]) => `${n}: ${c}`).join(", ")],
    ["queued", t.queued], ["in flight", t.in_flight], ["handled", t.handled],
    ["failed", t.failed], ["expired", t.expired], ["handled/s", t.handled_per_s],
    ["failed/s", t.failed_per_s], ["p50 ms", t.latency_ms.p50], ["p99 ms", t.latency_ms.p99]] : [];
  const paused = Boolean(task.paused);
  patch(summary, [
    el("h2", {}, el("span", { text: task.name }), badges(t, task)),
    el("dl", { class: "figures" }, ...figures.map(([label, value]) => el("div", { "data-key": label },
      el("dt", { text: label }), el("dd", { "data-field": label, text: fmt(value) })))),
    el("div", { class: "buttons" },
      el("button", { type: "button", id: "pause-toggle", "data-change": "",
        text: paused ? "Resume" : "Pause", onclick: () => pauseToggle(task.name, paused) }),
      link("status", null, "All plots")),
    spanButtons(),
    plotsOf(task.name, metrics, "task-plots"),
  ]);
}

async function pauseToggle(name, paused) {
  try {
    await rpc(paused ? "tasks.resume" : "tasks.pause", { name });
    notice(`Task ${name} ${paused ? "resumed" : "paused"} on every node.`);
    await render(false);
  } catch (error) {
    notice(`${name}: ${error.message}`, true);
  }
}

function setUpEditor() {
  const form = document.getElementById("task-form");
  for (const button of document.querySelectorAll(".add-row")) {
    button.addEventListener("click", () => {
      addRow(button.dataset.rows);
      form.dataset.dirty = "1";
    });
  }
  // Any edit marks the form: the live refresh leaves it alone until saved or reloaded.
  form.addEventListener("input", () => { form.dataset.dirty = "1"; });
  form.addEventListener("click", (event) => {
    if (event.target.classList.contains("remove-row")) form.dataset.dirty = "1";
  });
  form.addEventListener("submit", save);
  document.getElementById("restart").addEventListener("click", restartTask);
  document.getElementById("delete").addEventListener("click", deleteTask);
}

// ---------------------------------------------------------------- the form

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
  state.filled = task ? JSON.stringify(task) : null;  // what the form shows, as the node said
  delete form.dataset.dirty;
  clearErrors();
  const t = task || NEW_TASK;
  document.getElementById("form-title").textContent = task ? `Task ${task.name}` : "New task";
  const messages = document.getElementById("task-messages");
  messages.hidden = !task;
  messages.href = task ? `#/messages?task=${encodeURIComponent(task.name)}` : "#/messages";
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
    const message = saved.changed === false
      ? `Task ${saved.name} unchanged: nothing stored, no worker restarted.`
      : `Task ${saved.name} saved on every node.`;
    const isNew = state.selected !== saved.name;
    state.selected = saved.name;
    await loadTaskList();
    fillForm(state.tasks.find((t) => t.name === saved.name));
    if (isNew) {
      history.replaceState(null, "", href("tasks", saved.name));
      state.routedHash = location.hash;
      state.route = { view: "tasks", id: saved.name };
    }
    notice(message);
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
    const name = state.selected;
    state.selected = null;
    state.filled = null;
    state.nextNotice = `Task ${name} deleted.`;  // shown once the list is back
    go("tasks", null);
  } catch (error) {
    showError(error);
  }
}

