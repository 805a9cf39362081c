// The console's views but the task editor: overview, status and plots, nodes, timers,
// errors (failures and dead letters), scheduled, trace, send. Each render function is
// named in ROUTES (console.js) and updates its section in place.
"use strict";

// ---------------------------------------------------------------- badges and tables

// A task's state as badges: running, idle, starting, backoff (with its cause), paused,
// update failed, and "not accepting" when the degrade switch is off.
function badges(t, definition, { short } = {}) {
  const box = el("span", { class: "badges" });
  if (!t) {
    box.append(el("span", { class: "badge stopped", "data-state": "not here", text: "not here",
      title: "no worker of this task on this node" }));
    return box;
  }
  const error = t.start_error;
  const cause = error ? `${fmt(error.exit)}: ${lastLine(error.stderr_tail) || error.error}` : t.error;
  box.append(el("span", { class: `badge ${stateClass(t.state)}`, "data-state": t.state,
    title: cause ? `${t.state}: ${cause}` : t.state, text: t.state }));
  if (cause && !short) {
    box.append(el("span", { class: "cause", "data-cause": "", text: cause,
      title: error ? `${error.stderr_tail || error.error}\n\nstderr log: ${fmt(error.stderr_log)}` : cause }));
  }
  const accepting = t.accepting !== false && (!definition || definition.accepting !== false);
  if (!accepting) {
    box.append(el("span", { class: "badge refusing", "data-state": "not accepting",
      title: "casts to it are refused (accepting = false)", text: "not accepting" }));
  }
  return box;
}

function stateClass(name) {
  return { running: "ok", idle: "idle", starting: "busy", paused: "held", backoff: "bad",
    "update failed": "bad", stopped: "idle" }[name] || "idle";
}

function lastLine(text) {
  const lines = (text || "").trim().split("\n");
  return lines[lines.length - 1];
}

function wrap(table) {
  return el("div", { class: "table-wrap" }, table);
}

// Every task of `status` in one table: badges, queue, rates, p99.
function taskTable(status, definitions) {
  const byName = new Map((definitions || []).map((d) => [d.name, d]));
  const names = [...new Set([...Object.keys(status.tasks), ...byName.keys()])].sort();
  const rows = names.map((name) => {
    const t = status.tasks[name];
    return el("tr", { "data-key": name, "data-task": name }, el("td", {}, link("tasks", name, name)),
      el("td", {}, badges(t, byName.get(name))), el("td", { class: "n", text: fmt(t && t.queued) }),
      el("td", { class: "n", text: fmt(t && t.in_flight) }),
      el("td", { class: "n", text: fmt(t && t.handled_per_s) }),
      el("td", { class: "n", text: fmt(t && t.failed_per_s) }),
      el("td", { class: "n", text: fmt(t && t.latency_ms.p99) }));
  });
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: "7", text: "No tasks yet: add one under Tasks." })));
  return wrap(el("table", { class: "task-table" }, el("thead", {}, el("tr", {}, ...["Task", "State",
    "Queued", "In flight", "Handled/s", "Failed/s", "p99 ms"].map((h) => el("th", { text: h })))),
  el("tbody", {}, ...rows)));
}

// ---------------------------------------------------------------- overview

async function renderOverview() {
  const [status, members, tasks, timers, failures] = await Promise.all([rpc("status"),
    rpc("nodes"), rpc("tasks.list"), rpc("timers.list"), rpc("failures.list", { limit: 5 })]);
  const all = Object.values(status.tasks);
  const total = (field) => all.reduce((sum, t) => sum + (t[field] || 0), 0);
  const troubled = all.filter((t) => ["backoff", "update failed"].includes(t.state)).length;
  const figures = [["node", status.node], ["up", duration(status.uptime_s)],
    ["members", members.length || 1], ["tasks", Object.keys(status.tasks).length],
    ["in trouble", troubled], ["queued", total("queued")], ["in flight", total("in_flight")],
    ["handled/s", +total("handled_per_s").toFixed(3)], ...journalFigures(status)];
  patch(document.getElementById("overview-figures"), figures.map(([label, value]) =>
    el("div", { "data-key": label, class: label === "in trouble" && value ? "alarm" : "" },
      el("dt", { text: label }), el("dd", { "data-field": label, text: fmt(value) }))));
  patch(document.getElementById("overview-tasks"), [taskTable(status, tasks)]);
  patch(document.getElementById("overview-nodes"), [memberList(members.length ? members
    : [{ name: status.node, state: "alive", self: true }])]);
  const soon = timers.filter((t) => t.enabled !== false && t.next_fire).sort((a, b) => a.next_fire - b.next_fire);
  patch(document.getElementById("overview-timers"), soon.length ? [el("ul", { class: "plain" },
    ...soon.slice(0, 6).map((t) => el("li", { "data-key": t.name }, link("timers", t.name, t.name),
      el("span", { text: ` ${t.message}: ` }), zoned(t.next_fire, t.timezone),
      el("span", { class: "hint", text: ` (${fromNow(t.next_fire)})` }))))]
    : [el("p", { class: "hint", text: timers.length ? "No timer is due: all are disabled." : "No timers." })]);
  patch(document.getElementById("overview-failures"), failures.length ? [el("ul", { class: "plain" },
    ...failures.map((f) => el("li", { "data-key": `${f.id}-${f.attempt}` },
      link("failures", f.id, clock(f.at)), el("span", { text: ` ${f.task}: ${f.error_class}: ${f.error}` }))))]
    : [el("p", { class: "hint", text: "No failures: every recent attempt succeeded." })]);
}

// The journal's figures if status gives them (a later node may), else none.
function journalFigures(status) {
  const journal = status.journal;
  if (!journal || typeof journal !== "object") return [];
  return Object.entries(journal).filter(([, v]) => typeof v !== "object")
    .map(([k, v]) => [`journal ${k.replace(/_/g, " ")}`, k.endsWith("bytes") ? bytes(v) : v]);
}

function bytes(n) {
  return typeof n !== "number" ? fmt(n) : n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(1)} MiB`
    : n >= 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${n} B`;
}

function duration(s) {
  if (typeof s !== "number") return "-";
  if (s < 120) return `${Math.round(s)} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} days`;
}

function fromNow(epoch) {
  const s = epoch - Date.now() / 1000;
  return s >= 0 ? `in ${duration(s)}` : `${duration(-s)} ago`;
}

function memberList(members) {
  return el("ul", { class: "plain" }, ...members.map((m) => el("li", { "data-key": m.name },
    link("nodes", m.name, m.name), el("span", { text: " " }),
    el("span", { class: `badge ${m.state === "alive" ? "ok" : "bad"}`, text: fmt(m.state) }),
    el("span", { class: "hint", text: m.self ? " this node" : ` heard ${fmt(m.last_heard_s)} s ago` }))));
}

// ---------------------------------------------------------------- status and plots

const SPANS = [[600, "10 min"], [3600, "1 h"], [86400, "24 h"]];

// The metrics of every task over `span` seconds (the node keeps 24 h), with their events.
async function loadMetrics(span) {
  const step = Math.min(600, Math.max(10, Math.round(span / 60)));
  const answer = await rpc("metrics", { step, span });
  return { tasks: answer.series || {}, events: answer.events || [], span, step };
}

function spanButtons() {
  return el("div", { class: "spans", role: "group", "aria-label": "time span" },
    ...SPANS.map(([span, label]) => el("button", { type: "button", "data-span": String(span),
      class: state.span === span ? "active" : "", text: label,
      onclick: () => { state.span = span; render(false, true); } })));
}

function plotsOf(name, metrics, id) {
  const points = metrics.tasks[name] || [];
  const events = metrics.events.filter((e) => !e.task || e.task === name);
  const common = { points, events, span: metrics.span, step: metrics.step };
  const plots = [makePlot(`${name}-rates`, { ...common, title: `${name}: rates`, unit: "msg/s",
    series: [["handled_per_s", "#2a7ae2", "handled"], ["failed_per_s", "#d33", "failed"]] }),
  makePlot(`${name}-latency`, { ...common, title: `${name}: latency`, unit: "ms",
    series: [["p50_ms", "#2a2", "p50"], ["p99_ms", "#a52", "p99"]] })];
  if (points.some((p) => typeof p.queued === "number")) {
    plots.push(makePlot(`${name}-queue`, { ...common, title: `${name}: queue`, unit: "messages",
      series: [["queued", "#85a", "queued"]] }));
  }
  return el("div", { class: "plots", id, "data-key": `plots-${name}` }, ...plots);
}

async function renderStatus() {
  const [status, metrics] = await Promise.all([rpc("status"), loadMetrics(state.span)]);
  const names = Object.keys(status.tasks).sort();
  fillRows(document.querySelector("#status-table tbody"), names.map((name) => {
    const t = status.tasks[name];
    const workers = Object.entries(t.workers).map(([n, c]) => `${n}:${c}`).join(" ");
    return [link("tasks", name, name), workers, taskState(t), t.queued, t.in_flight,
      t.handled_per_s, t.failed_per_s, t.expired, t.latency_ms.p50, t.latency_ms.p90, t.latency_ms.p99];
  }));
  patch(document.getElementById("status-spans"), [spanButtons()]);
  document.getElementById("plots-title").textContent =
    `The last ${SPANS.find(([s]) => s === metrics.span)[1]}`;
  patch(document.getElementById("plots"), names.length ? names.map((name) => plotsOf(name, metrics, null))
    : [el("p", { class: "hint", text: "No tasks run here: nothing to plot." })]);
}

// A task's state; while its workers cannot start, with why: the exit and the last line
// they wrote to stderr (the whole tail and the log's path on hover).
function taskState(t) {
  const error = t.start_error;
  const badge = el("span", { class: `badge ${stateClass(t.state)}`, text: fmt(t.state) });
  if (!error) return badge;
  return el("span", {}, badge, el("div", {
    class: "start-error", "data-start-error": "",
    title: `${error.stderr_tail || error.error}\n\nstderr log: ${fmt(error.stderr_log)}`,
    text: `cannot start: ${fmt(error.exit)}: ${lastLine(error.stderr_tail) || error.error}`,
  }));
}

// ---------------------------------------------------------------- nodes

async function renderNodes(name) {
  const [members, status] = await Promise.all([rpc("nodes"), rpc("status")]);
  fillRows(document.querySelector("#nodes-table tbody"), members.map((m) => el("tr", {
    "data-key": m.name, class: m.name === name ? "chosen" : "" }, ...[link("nodes", m.name,
    m.self ? `${m.name} (this node)` : m.name), m.state, m.link, m.http, clock(m.started_at),
    m.self ? "-" : `${m.last_heard_s} s ago`].map((c) => (c instanceof Node ? el("td", {}, c)
    : el("td", { text: fmt(c) }))))));
  const card = document.getElementById("node-card");
  const member = members.find((m) => m.name === name);
  card.hidden = name === null;
  if (name === null) return;
  if (!member) {
    patch(card, [el("h2", { text: `Node ${name}` }), el("p", { class: "missing",
      text: "Not a member of this cluster now (it left, or was never seen here)." })]);
    return;
  }
  const tasks = Object.entries(status.tasks).filter(([, t]) => (t.workers || {})[name]);
  patch(card, [el("h2", { text: `Node ${name}${member.self ? " (this node)" : ""}` }),
    el("dl", { class: "figures" }, ...[["state", member.state], ["link", member.link],
      ["HTTP", member.http], ["booted", clock(member.started_at)],
      ["last heard", member.self ? "now" : `${member.last_heard_s} s ago`]].map(([k, v]) =>
      el("div", { "data-key": k }, el("dt", { text: k }), el("dd", { text: fmt(v) })))),
    el("h3", { text: "Its workers" }),
    tasks.length ? el("ul", { class: "plain" }, ...tasks.map(([task, t]) => el("li", { "data-key": task },
      link("tasks", task, task), el("span", { text: `: ${t.workers[name]} worker(s) ` }), badges(t, null, { short: true }))))
      : el("p", { class: "hint", text: "No workers there." })]);
}

// ---------------------------------------------------------------- timers

// A time in a timer's own zone, labelled with the zone: what its cron means.
function zoned(epoch, zone) {
  if (typeof epoch !== "number" || epoch <= 0) return el("span", { text: "-" });
  const name = zone || "UTC";
  let text;
  try {
    const parts = Object.fromEntries(new Intl.DateTimeFormat("en-GB", { timeZone: name,
      year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit",
      second: "2-digit", hourCycle: "h23" }).formatToParts(new Date(epoch * 1000))
      .map((p) => [p.type, p.value]));
    text = `${parts.year}-${parts.month}-${parts.day} ${parts.hour}:${parts.minute}:${parts.second} ${name}`;
  } catch {  // a zone this browser does not know: UTC, said so
    text = `${new Date(epoch * 1000).toISOString().replace("T", " ").slice(0, 19)} UTC (${name} unknown here)`;
  }
  return el("time", { datetime: new Date(epoch * 1000).toISOString(), "data-zone": name,
    title: `your browser's time: ${clock(epoch)}`, text });
}

async function renderTimers(name) {
  const timers = await rpc("timers.list");
  document.getElementById("timer-leader").textContent =
    !timers.length ? "No timers." : timers[0].leader
      ? `Fired by node ${timers[0].leader} (lease epoch ${timers[0].epoch}). Times are in each timer's own zone.`
      : "Fired by no node now: the timer lease is free (an election, or no majority).";
  fillRows(document.querySelector("#timers-table tbody"), timers.map((t) => el("tr", {
    "data-key": t.name, "data-timer": t.name, class: t.name === name ? "chosen" : "" },
  ...[link("timers", t.name, t.name), t.cron, t.timezone || "UTC", t.message,
    zoned(t.last_fire, t.timezone), t.enabled === false ? "disabled" : zoned(t.next_fire, t.timezone),
    t.last_error || "-"].map((c) => (c instanceof Node ? el("td", {}, c) : el("td", { text: fmt(c) }))))));
  const card = document.getElementById("timer-card");
  card.hidden = name === null;
  const timer = name === null ? undefined : timers.find((t) => t.name === name);
  await renderTimerLedger(name, timer);
  if (name === null) return;
  patch(card, timer ? [el("h2", { text: `Timer ${name}` }), el("dl", { class: "figures" },
    ...[["cron", timer.cron], ["zone", timer.timezone || "UTC"], ["message", timer.message],
      ["misfire", timer.misfire], ["enabled", timer.enabled !== false ? "yes" : "no"],
      ["paused", timer.paused ? "yes" : "no"]].map(([k, v]) =>
      el("div", { "data-key": k }, el("dt", { text: k }), el("dd", { text: fmt(v) })))),
  el("p", {}, el("span", { text: "Next fire: " }), timer.next_fire ? zoned(timer.next_fire, timer.timezone)
    : el("span", { text: "none" }), el("span", { class: "hint", text: timer.next_fire ? ` (${fromNow(timer.next_fire)})` : "" })),
  el("p", {}, el("span", { text: "Last fire: " }), zoned(timer.last_fire, timer.timezone)),
  ...(timer.last_error ? [el("p", { class: "error", text: `Last error: ${timer.last_error}` })] : []),
  el("h3", { text: "Payload" }), el("pre", { text: JSON.stringify(timer.payload ?? {}, null, 2) })]
    : [el("h2", { text: `Timer ${name}` }), el("p", { class: "missing", text: "No timer of that name." })]);
}

// ---------------------------------------------------------------- errors and replay

async function renderErrors(id, { first }) {
  const [failures, dead] = await Promise.all([rpc("failures.list", { limit: 50 }),
    rpc("dead.list", { limit: 100 })]);
  const chosen = state.route.view === "failures" ? id : null;
  const found = failures.filter((f) => f.id === chosen);
  patch(document.getElementById("failure-note"), chosen && !found.length ? [el("p", { class: "missing",
    text: `No failure of message ${chosen} is kept now (the node keeps the most recent ones).` })] : []);
  patch(document.getElementById("failures"), failures.length ? failures.map((f) =>
    el("details", { class: f.id === chosen ? "failure chosen" : "failure", "data-key": `${f.id}-${f.attempt}`,
      "data-id": f.id, ...(f.id === chosen && first ? { open: "" } : {}) },
    el("summary", {}, link("failures", f.id, clock(f.at)),
      el("span", { text: `  ${f.task}  ${f.name}  attempt ${f.attempt}  ${f.error_class}: ${f.error}` })),
    el("p", {}, el("span", { text: `message ${f.id} ` }), link("trace", f.id, "trace")),
    el("pre", { text: f.traceback || "(no traceback)" }))) : [el("p", { text: "No failures." })]);
  if (first && found.length) {
    const open = document.querySelector("#failures details.chosen");
    open.open = true;
    open.scrollIntoView({ block: "start" });
  }
  const filter = document.getElementById("dead-filter").value;
  const shown = dead.filter((d) => filter === "all" || (d.error_class === EXPIRED) === (filter === "expired"));
  patch(document.getElementById("dead-letters"), shown.length ? shown.map((d) =>
    el("details", { class: d.error_class === EXPIRED ? "dead-letter expired" : "dead-letter",
      "data-id": d.id, "data-key": `${d.id}-${d.task}`, "data-error-class": fmt(d.error_class) },
    el("summary", {}, el("span", { text: `${d.id}  ${d.task}  ${d.name}  ${deadReason(d)}  ` }),
      el("button", { class: "replay", "data-change": "", text: "Replay", onclick: () => replay(d.id, d.task) })),
    el("p", { text: `attempts ${d.attempt}, died ${clock(d.died_at)}` }),
    el("h4", { text: "Payload" }), el("pre", { text: JSON.stringify(d.payload, null, 2) }),
    el("h4", { text: "Traceback" }), el("pre", { text: d.traceback || "(none)" })))
    : [el("p", { text: "No dead letters." })]);
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
  await render(false, true);
}

async function replayAll() {
  const dead = await rpc("dead.list", { limit: 1000 });
  for (const d of dead) await rpc("dead.replay", { id: d.id, task: d.task });
  notice(`Replayed ${dead.length} dead letter(s).`);
  await render(false, true);
}

// ---------------------------------------------------------------- scheduled and cancel

async function renderScheduled() {
  const rows = await optional("scheduled.list", { limit: 500 });
  const missing = document.getElementById("scheduled-missing");
  missing.hidden = rows !== undefined;
  missing.textContent = rows === undefined ? missingText("scheduled.list") : "";
  const tbody = document.querySelector("#scheduled-table tbody");
  if (rows === undefined) {
    tbody.replaceChildren();
    return;
  }
  fillRows(tbody, rows.length ? rows.map((r) => [r.id, r.name, link("tasks", r.task, r.task), r.node,
    clock(r.not_before), r.kind, r.attempt, r.priority,
    el("button", { class: "cancel", "data-id": fmt(r.id), "data-change": "", text: "Cancel",
      onclick: () => cancel(r.id) })])
    : [el("tr", {}, el("td", { colspan: "9", text: "Nothing is scheduled." }))]);
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
    await render(false, true);
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

// #/trace/ID shows the trace of ID; the form opens that URL.
async function renderTrace(id) {
  const title = document.getElementById("trace-title");
  const tree = document.getElementById("trace-tree");
  title.className = "";
  tree.replaceChildren();
  if (id === null) {
    title.textContent = "Give a trace id or a message id.";
    return;
  }
  document.getElementById("t-id").value = id;
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

async function renderSend() {}

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

function setUpViews() {
  document.getElementById("add-task").addEventListener("click", () => go("new-task"));
  document.getElementById("replay-all").addEventListener("click", replayAll);
  document.getElementById("send-form").addEventListener("submit", send);
  document.getElementById("dead-filter").addEventListener("change", () => render(false, true));
  document.getElementById("trace-form").addEventListener("submit", (event) => {
    event.preventDefault();
    go("trace", document.getElementById("t-id").value.trim());
  });
}
