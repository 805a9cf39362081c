// The console's plots: hand-written SVG (a few lines, axes, a hover), so the page needs
// no library and no CDN, and the page's CSP (no inline styles, no eval) holds.
//
// makePlot(key, options) -> a <div class="plot"> holding an <svg data-plot=KEY>:
//   options.title, options.unit ("msg/s", "ms"), options.series [[field, colour, label]],
//   options.points [{t, field: value|null, ...}] (any number, none included),
//   options.events [{t, kind, task}] (vertical markers), options.span and options.step (s).
// The x axis is clock time (the browser's), ticks on round minutes or hours; the y axis
// starts at 0 with round ticks; hovering shows the values at the nearest point.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const PLOT = { width: 460, height: 178, left: 46, right: 12, top: 20, bottom: 26 };
const TIME_STEPS_S = [10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600,
  43200, 86400];
const hovered = new Map();  // plot key -> the time last hovered, kept across redraws

function svg(tag, attributes, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attributes || {})) {
    if (key === "text") node.textContent = value;
    else node.setAttribute(key, String(value));
  }
  for (const child of children) node.append(child);
  return node;
}

// A round step (1, 2 or 5 times a power of ten) that cuts `range` into about `count`.
function roundStep(range, count) {
  const raw = range / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const norm = raw / magnitude;
  return (norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 5 ? 5 : 10) * magnitude;
}

function valueTicks(max) {
  const top = max > 0 ? max : 1;
  const step = roundStep(top, 4);
  const ticks = [];
  for (let v = 0; v <= Math.ceil(top / step - 1e-9) * step + step / 2; v += step) ticks.push(v);
  return ticks;
}

function plotNumber(value) {
  if (value === null || value === undefined) return "-";
  const size = Math.abs(value);
  if (size >= 1e6) return `${+(value / 1e6).toPrecision(3)}M`;
  if (size >= 1e4) return `${+(value / 1e3).toPrecision(3)}k`;
  return String(+value.toPrecision(3));
}

// Round clock times between t0 and t1 (epoch s): on the browser's own minutes and hours.
function timeTicks(t0, t1) {
  const step = TIME_STEPS_S.find((s) => (t1 - t0) / s <= 6) || 86400;
  const offset = new Date(t1 * 1000).getTimezoneOffset() * 60;
  const ticks = [];
  for (let local = Math.ceil((t0 - offset) / step) * step; local + offset <= t1; local += step) {
    ticks.push(local + offset);
  }
  return { ticks, step };
}

function clockLabel(t, withSeconds) {
  return new Date(t * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit",
    second: withSeconds ? "2-digit" : undefined, hour12: false });
}

function makePlot(key, options) {
  const points = (options.points || []).filter((p) => typeof p.t === "number");
  const span = options.span || 600;
  const end = Math.max(Date.now() / 1000, ...points.map((p) => p.t + (options.step || 0)));
  const start = end - span;
  const shown = points.filter((p) => p.t >= start - (options.step || 0));
  const w = PLOT.width - PLOT.left - PLOT.right;
  const h = PLOT.height - PLOT.top - PLOT.bottom;
  const values = shown.flatMap((p) => options.series.map(([field]) => p[field]))
    .filter((v) => typeof v === "number");
  const yTicks = valueTicks(Math.max(0, ...values));
  const yTop = yTicks[yTicks.length - 1];
  const x = (t) => PLOT.left + (w * (t - start)) / span;
  const y = (v) => PLOT.top + h * (1 - v / yTop);
  const drawing = svg("svg", { viewBox: `0 0 ${PLOT.width} ${PLOT.height}`, class: "chart",
    "data-plot": key, role: "img", "aria-label": `${options.title} (${options.unit})` });
  for (const v of yTicks) {
    drawing.append(svg("line", { class: "grid", x1: PLOT.left, x2: PLOT.left + w, y1: y(v), y2: y(v) }),
      svg("text", { class: "tick", x: PLOT.left - 4, y: y(v) + 3, "text-anchor": "end", text: plotNumber(v) }));
  }
  drawing.append(svg("text", { class: "unit", x: PLOT.left - 4, y: PLOT.top - 9, "text-anchor": "end", text: options.unit }));
  const time = timeTicks(start, end);
  for (const t of time.ticks) {
    drawing.append(svg("line", { class: "grid", x1: x(t), x2: x(t), y1: PLOT.top, y2: PLOT.top + h }),
      svg("text", { class: "tick", x: x(t), y: PLOT.height - 8, "text-anchor": "middle",
        text: clockLabel(t, time.step < 60) }));
  }
  drawing.append(svg("rect", { class: "frame", x: PLOT.left, y: PLOT.top, width: w, height: h }));
  for (const event of options.events || []) {
    if (typeof event.t !== "number" || event.t < start || event.t > end) continue;
    drawing.append(svg("line", { class: "event", x1: x(event.t), x2: x(event.t), y1: PLOT.top,
      y2: PLOT.top + h, "data-kind": fmt(event.kind) },
    svg("title", { text: `${fmt(event.kind)}${event.task ? ` (${event.task})` : ""} at ${clockLabel(event.t, true)}` })));
  }
  for (const [field, colour] of options.series) {
    let path = "";
    let pen = "M";
    shown.forEach((p, i) => {
      if (typeof p[field] !== "number") {
        pen = "M";  // no value: a gap, not a fall to zero
        return;
      }
      path += `${pen}${x(p.t).toFixed(1)},${y(p[field]).toFixed(1)}`;
      pen = "L";
      const alone = typeof (shown[i - 1] || {})[field] !== "number" && typeof (shown[i + 1] || {})[field] !== "number";
      if (alone) {  // a line of one point is invisible: a dot
        drawing.append(svg("circle", { cx: x(p.t), cy: y(p[field]), r: 2.5, fill: colour }));
      }
    });
    if (path) drawing.append(svg("path", { class: "line", d: path, stroke: colour, "data-series": field }));
  }
  if (!shown.length) {
    drawing.append(svg("text", { class: "empty", x: PLOT.left + w / 2, y: PLOT.top + h / 2,
      "text-anchor": "middle", text: "no data in this span yet" }));
  }
  const guide = svg("line", { class: "guide", x1: 0, x2: 0, y1: PLOT.top, y2: PLOT.top + h, visibility: "hidden" });
  const overlay = svg("rect", { class: "overlay", x: PLOT.left, y: PLOT.top, width: w, height: h });
  drawing.append(guide, overlay);
  const tip = el("div", { class: "plot-tip", hidden: "" });
  const showAt = (t) => {
    if (!shown.length) {
      tip.hidden = true;
      return;
    }
    const nearest = shown.reduce((a, b) => (Math.abs(b.t - t) < Math.abs(a.t - t) ? b : a));
    guide.setAttribute("x1", x(nearest.t));
    guide.setAttribute("x2", x(nearest.t));
    guide.setAttribute("visibility", "visible");
    tip.replaceChildren(el("div", { class: "tip-time",
      text: new Date(nearest.t * 1000).toLocaleString([], { hour12: false }) }),
      ...options.series.map(([field, colour, label]) => el("div", { "data-series": field },
        swatch(colour), el("span", { text: `${label}: ${plotNumber(nearest[field])} ${options.unit}` }))));
    tip.hidden = false;
    const fraction = (x(nearest.t) - PLOT.left) / w;
    tip.style.left = fraction > 0.6 ? "" : `${Math.max(0, fraction * 100)}%`;  // CSSOM: allowed by the CSP
    tip.style.right = fraction > 0.6 ? `${Math.max(0, (1 - fraction) * 100)}%` : "";
  };
  overlay.addEventListener("mousemove", (event) => {
    const box = drawing.getBoundingClientRect();
    const t = start + (((event.clientX - box.left) * PLOT.width) / box.width - PLOT.left) * (span / w);
    hovered.set(key, t);
    showAt(t);
  });
  overlay.addEventListener("mouseleave", () => {
    hovered.delete(key);
    guide.setAttribute("visibility", "hidden");
    tip.hidden = true;
  });
  if (hovered.has(key)) showAt(hovered.get(key));
  const legend = el("div", { class: "legend" }, ...options.series.map(([, colour, label]) =>
    el("span", {}, swatch(colour), el("span", { text: label }))));
  return el("div", { class: "plot", "data-key": key, "data-replace": "" },
    el("h3", { text: options.title }), legend, el("div", { class: "chart-box" }, drawing, tip));
}

function swatch(colour) {
  const mark = el("span", { class: "swatch" });
  mark.style.background = colour;
  return mark;
}
