// Pilot-line twin dashboard.
// Initial state from the query API (one fetch each), then every change through the SSE stream
// /api/v1/stream (event types: samples, prediction, proposal, targets). No polling loops.
// Writes (approve, reject, targets) carry a bearer token kept in sessionStorage; a 401/403 opens
// the token dialog with the API's reason and the write is retried with the new token.
"use strict";

const LINE_PARAM = new URLSearchParams(location.search).get("line");
const HISTORY_MIN = 30;        // minutes of history loaded at start
const MAX_POINTS = 3000;       // points kept per trace
const TOKEN_KEY = "twin.token";
const QUALITY = ["good", "uncertain", "bad"];

// measured vs predicted plots: mean and ±2σ band of the surrogate ensemble, out-of-domain marks
const PRED_PLOTS = {
  "plot-porosity": {title: "Porosity: measured vs predicted", measured: "calendering.porosity_online",
                    predicted: "calendering.porosity_predicted"},
  "plot-thickness": {title: "Thickness after calender: measured vs predicted", measured: "calendering.thickness_after",
                     predicted: "calendering.thickness_after_predicted"},
  "plot-tortuosity": {title: "Tortuosity factor (predicted)", measured: null,
                      predicted: "calendering.tortuosity_factor_predicted"},
  "plot-diffusivity": {title: "Effective diffusivity D_eff/D_0 (predicted)", measured: null,
                       predicted: "calendering.effective_diffusivity_predicted"},
};
// trace order in each of those plots
const T_UPPER = 0, T_LOWER = 1, T_MEAN = 2, T_OOD = 3, T_MEASURED = 4;
const SETPOINTS = ["calendering.gap_setpoint", "calendering.line_load_setpoint", "calendering.roll_temperature_setpoint"];
const SETPOINT_ACTUAL = {"calendering.gap_setpoint": "calendering.gap_actual", "calendering.line_load_setpoint": "calendering.line_load",
                         "calendering.roll_temperature_setpoint": "calendering.roll_temperature"};
const KIND_ORDER = {MP: 0, PP: 1, SP: 2, TRACE: 3};
const ROLE_ORDER = {setpoint: 0, actual: 1, measured: 2, predicted: 3};

const tagInfo = {};        // tag id -> /api/v1/tags item
const latest = {};         // tag id -> newest sample
const slots = {};          // tag id -> [{plot, trace, what}] (what: measured | mean | std | setpoint)
const predPending = {};    // plot id -> Map(ts -> {mean, std, quality})
const buffers = {};        // plot id -> {trace index -> {x: [], y: []}}
let flushTimer = null, renderTimer = null;
let lineId = LINE_PARAM;
let streamPoints = 0;      // points appended to plots from the live stream
let lastPrediction = null;
let feedback = {enabled: null, detail: ""};
let proposal = null;       // the proposal shown (open one, or the last one that changed state)
const proposals = new Map(); // id -> proposal (history, newest first by created)
let targets = null;
let everOpened = false;

window.twin = {
  streamPoints: () => streamPoints,
  plotted: () => Object.fromEntries([...Object.keys(PRED_PLOTS), "plot-setpoints"].map(id => {
    const gd = document.getElementById(id);
    return [id, (gd.data || []).map(t => ({name: t.name, points: t.x.length}))];
  })),
  proposal: () => proposal,
};

// ---------------------------------------------------------------------------------------------
// helpers
function esc(s) {
  return String(s ?? "").replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
}

function unitLabel(u) {
  if (u == null) return "";
  const names = {um: "µm", degC: "°C", percent: "%", dimensionless: "", "1": "", "N/mm": "N/mm", "m/min": "m/min"};
  if (u in names) return names[u];
  return String(u).replace(/\*\*2/g, "²").replace(/\*\*3/g, "³").replace(/\bum\b/g, "µm").replace(/degC/g, "°C");
}

// Targets: the API states each in its output's canonical unit (porosity: a fraction, unit "1") and accepts
// any unit pint converts. The page shows porosity in % (like its plots) and sends the unit it shows.
const TARGET_DISPLAY = {porosity: {unit: "percent", factor: 100}};

function displayOf(output, unit) {
  // {unit, factor} of the page's display of a canonical value; unknown: the canonical unit itself
  const d = TARGET_DISPLAY[output];
  if (d && (unit === "1" || unit === "dimensionless")) return d;
  return {unit: unit == null ? "1" : unit, factor: 1};
}

function shown(v, factor) {  // a canonical value in display units, without float noise (0.31 -> 31)
  return typeof v === "number" && isFinite(v) ? Number((v * factor).toPrecision(12)) : v;
}

function targetUnitLabel(u) {  // the targets table always states the unit
  const l = unitLabel(u);
  return l !== "" ? l : "1 (dimensionless)";
}

function fmt(v) {
  if (typeof v !== "number" || !isFinite(v)) return esc(v ?? "–");
  const a = Math.abs(v);
  if (a >= 1000) return v.toFixed(0);
  if (a !== 0 && a < 1e-3) return v.toExponential(2);
  return String(Number(v.toPrecision(4)));
}

function hhmmss(iso) { return iso ? esc(String(iso).slice(11, 19)) : ""; }

function errorText(body, status) {
  if (body && typeof body.message === "string") return body.message;
  const d = body && body.detail;
  if (typeof d === "string") return d;
  if (Array.isArray(d)) return d.map(e => `${(e.loc || []).join(".")}: ${e.msg}`).join("; ");
  return `HTTP ${status}`;
}

class ApiError extends Error {
  constructor(status, detail) { super(`${status}: ${detail}`); this.status = status; this.detail = detail; }
}

async function getJSON(url) {
  const r = await fetch(url, {headers: authHeaders()});
  let body = null;
  try { body = await r.json(); } catch (e) { /* not JSON */ }
  if (!r.ok) throw new ApiError(r.status, errorText(body, r.status));
  return body;
}

function authHeaders() {
  const tok = sessionStorage.getItem(TOKEN_KEY);
  return tok ? {Authorization: "Bearer " + tok} : {};
}

function withLine(url) {
  if (!lineId) return url;
  return url + (url.includes("?") ? "&" : "?") + "line=" + encodeURIComponent(lineId);
}

// ---------------------------------------------------------------------------------------------
// auth: token dialog and writes
function askToken(reason) {
  const dlg = document.getElementById("token-dialog");
  document.getElementById("token-reason").textContent = reason || "";
  const input = document.getElementById("token-input");
  input.value = "";
  return new Promise(resolve => {
    dlg.addEventListener("close", () => {
      if (dlg.returnValue === "ok" && input.value.trim()) {
        sessionStorage.setItem(TOKEN_KEY, input.value.trim());
        resolve(true);
      } else {
        if (dlg.returnValue === "forget") sessionStorage.removeItem(TOKEN_KEY);
        resolve(false);
      }
      renderTokenButton();
    }, {once: true});
    dlg.returnValue = "";
    dlg.showModal();
    input.focus();
  });
}

function renderTokenButton() {
  const b = document.getElementById("token-button");
  const has = !!sessionStorage.getItem(TOKEN_KEY);
  b.textContent = has ? "token ✓" : "token";
  b.classList.toggle("has-token", has);
}

async function writeJSON(method, url, body) {
  for (;;) {
    const r = await fetch(url, {method, headers: {"Content-Type": "application/json", ...authHeaders()},
                                body: body === undefined ? undefined : JSON.stringify(body)});
    let out = null;
    try { out = await r.json(); } catch (e) { /* empty */ }
    if (r.status === 401 || r.status === 403) {
      const detail = errorText(out, r.status);
      if (await askToken(`${r.status} ${r.status === 401 ? "unauthorised" : "forbidden"}: ${detail}`)) continue;
      throw new ApiError(r.status, detail);
    }
    if (!r.ok) throw new ApiError(r.status, errorText(out, r.status));
    return out;
  }
}

function showWriteError(err) {
  const el = document.getElementById("write-error");
  if (!err) { el.hidden = true; el.textContent = ""; return; }
  el.hidden = false;
  el.textContent = err instanceof ApiError ? `refused (${err.status}): ${err.detail}` : String(err);
}

// ---------------------------------------------------------------------------------------------
// plots
function unitOf(tag) { return tagInfo[tag] ? tagInfo[tag].unit : ""; }

function addSlot(tag, plot, trace, what) { (slots[tag] = slots[tag] || []).push({plot, trace, what}); }

async function series(tag, start, end) {
  if (!tagInfo[tag]) return null;
  try {
    const s = await getJSON(withLine(`/api/v1/series/${tag}?start=${start.toISOString()}&end=${end.toISOString()}&points=300`));
    return s.buckets;
  } catch (e) { console.warn(e); return null; }
}

function baseLayout(title, unit) {
  return {title: {text: title, font: {size: 13}}, margin: {l: 55, r: 10, t: 30, b: 30},
          legend: {orientation: "h", y: -0.18, font: {size: 10}}, xaxis: {type: "date"},
          yaxis: {title: {text: unitLabel(unit), font: {size: 11}}}, annotations: []};
}

async function initPredPlot(id, p, start, end) {
  const predKnown = !!tagInfo[p.predicted];
  predPending[id] = new Map();
  const [measured, mean, std] = await Promise.all([
    p.measured ? series(p.measured, start, end) : null, series(p.predicted, start, end),
    series(p.predicted + "_std", start, end)]);
  const stdBy = new Map((std || []).map(b => [b.start, b.mean]));
  const up = {x: [], y: []}, lo = {x: [], y: []}, mid = {x: [], y: []};
  for (const b of mean || []) {
    mid.x.push(b.ts); mid.y.push(b.mean);
    const s = stdBy.get(b.start);
    if (s !== undefined) { up.x.push(b.ts); up.y.push(b.mean + 2 * s); lo.x.push(b.ts); lo.y.push(b.mean - 2 * s); }
  }
  const traces = [
    {x: up.x, y: up.y, name: "+2σ", mode: "lines", line: {width: 0}, showlegend: false, hoverinfo: "skip"},
    {x: lo.x, y: lo.y, name: "predicted ±2σ", mode: "lines", line: {width: 0}, fill: "tonexty",
     fillcolor: "rgba(214, 120, 30, 0.22)"},
    {x: mid.x, y: mid.y, name: "predicted", mode: "lines", line: {color: "#d6781e", dash: "dash", width: 2}},
    {x: [], y: [], name: "out of domain", mode: "markers", marker: {color: "#b03a2e", symbol: "x", size: 8}},
  ];
  addSlot(p.predicted, id, T_MEAN, "mean");
  addSlot(p.predicted + "_std", id, T_UPPER, "std");
  if (p.measured) {
    traces.push({x: (measured || []).map(b => b.ts), y: (measured || []).map(b => b.mean), name: "measured",
                 mode: "lines", line: {color: "#1f5f9e", width: 1.2}});
    addSlot(p.measured, id, T_MEASURED, "measured");
  }
  const unit = unitOf(p.measured || p.predicted) || unitOf(p.predicted);
  const layout = baseLayout(p.title, unit);
  if (!predKnown) {  // the tag map is fixed at start-up: no predictions will come
    layout.annotations.push(noteAnnotation("no predictions: the surrogate predictor is not enabled"));
    if (!p.measured) layout.xaxis.range = [start.toISOString(), end.toISOString()];
  }
  await Plotly.newPlot(id, traces, layout, {displayModeBar: false, responsive: true});
}

function noteAnnotation(text, color) {
  return {text, xref: "paper", yref: "paper", x: 0.01, y: 0.98, xanchor: "left", yanchor: "top", showarrow: false,
          font: {size: 11, color: color || "#777"}, bgcolor: "rgba(255,255,255,0.8)"};
}

async function initSetpointPlot(start, end) {
  const id = "plot-setpoints";
  const n = SETPOINTS.length, gap = 0.1, h = (1 - gap * (n - 1)) / n;
  const layout = baseLayout("Calender setpoints (steps) and actual values", "");
  layout.margin.l = 70;
  layout.xaxis.anchor = "y" + n;
  const traces = [];
  const colours = ["#1f5f9e", "#2e9d5b", "#b03a2e"];
  const actuals = SETPOINTS.map(t => SETPOINT_ACTUAL[t]);
  const data = await Promise.all([...SETPOINTS, ...actuals].map(t => series(t, start, end)));
  SETPOINTS.forEach((tag, i) => {
    const ax = i === 0 ? "" : String(i + 1);
    const sp = data[i] || [], act = data[n + i] || [];
    const x = sp.map(q => q.ts), y = sp.map(q => q.mean);
    const last = latest[tag];
    if (!x.length && last) { x.push(last.ts); y.push(last.value); }
    traces.push({x: act.map(q => q.ts), y: act.map(q => q.mean), name: actuals[i].split(".")[1], mode: "lines",
                 yaxis: "y" + ax, line: {color: colours[i], width: 1}, opacity: 0.35});
    addSlot(actuals[i], id, traces.length - 1, "measured");
    traces.push({x, y, name: tag.split(".")[1], mode: "lines+markers", marker: {size: 5}, yaxis: "y" + ax,
                 line: {shape: "hv", color: colours[i], width: 2.5}});
    addSlot(tag, id, traces.length - 1, "setpoint");
    const lo = (n - 1 - i) * (h + gap);
    layout["yaxis" + ax] = {domain: [lo, lo + h], title: {text: `${tag.split(".")[1].replace("_setpoint", "")}` +
                            ` (${unitLabel(unitOf(tag))})`, font: {size: 10}}};
  });
  await Plotly.newPlot(id, traces, layout, {displayModeBar: false, responsive: true});
}

function push(plot, trace, x, y) {
  const b = (buffers[plot] = buffers[plot] || {});
  const t = (b[trace] = b[trace] || {x: [], y: []});
  t.x.push(x); t.y.push(y);
  if (flushTimer === null) flushTimer = setTimeout(flushPlots, 200);  // coalesce a burst of events
}

function flushPlots() {
  flushTimer = null;
  for (const [plot, traces] of Object.entries(buffers)) {
    const idx = Object.keys(traces).map(Number);
    if (!idx.length) continue;
    if (!document.getElementById(plot).data) { flushTimer = flushTimer || setTimeout(flushPlots, 200); continue; }
    Plotly.extendTraces(plot, {x: idx.map(i => traces[i].x), y: idx.map(i => traces[i].y)}, idx, MAX_POINTS);
    for (const i of idx) streamPoints += traces[i].x.length;
    buffers[plot] = {};
  }
}

function onPlotSample(s, slot) {
  if (slot.what === "measured" || slot.what === "setpoint") { push(slot.plot, slot.trace, s.ts, s.value); return; }
  const pend = predPending[slot.plot];
  const e = pend.get(s.ts) || {};
  e[slot.what] = s.value;
  if (slot.what === "mean") {
    e.quality = s.quality;
    push(slot.plot, T_MEAN, s.ts, s.value);
    if (s.quality !== 0) push(slot.plot, T_OOD, s.ts, s.value);
  }
  if (e.mean !== undefined && e.std !== undefined) {
    push(slot.plot, T_UPPER, s.ts, e.mean + 2 * e.std);
    push(slot.plot, T_LOWER, s.ts, e.mean - 2 * e.std);
    pend.delete(s.ts);
  } else {
    pend.set(s.ts, e);
    if (pend.size > 50) pend.delete(pend.keys().next().value);
  }
}

function markOutOfDomain(pred) {
  const text = pred.out_of_domain ? "⚠ out of domain: " + (pred.ood_reasons || []).join("; ") : "";
  for (const id of Object.keys(PRED_PLOTS)) {
    const gd = document.getElementById(id);
    if (!gd.layout || !tagInfo[PRED_PLOTS[id].predicted]) continue;
    Plotly.relayout(gd, {annotations: text ? [noteAnnotation(text.slice(0, 120), "#b03a2e")] : []});
  }
}

// ---------------------------------------------------------------------------------------------
// latest values, roll, web position
function scheduleRender() {
  if (renderTimer === null) renderTimer = setTimeout(() => { renderTimer = null; renderLatest(); }, 300);
}

function stepOf(tag) { return (tagInfo[tag] && tagInfo[tag].step) || tag.split(".")[0]; }

function renderLatest() {
  const byStep = {};
  const ids = new Set([...Object.keys(tagInfo), ...Object.keys(latest)]);
  for (const id of ids) {
    const t = tagInfo[id] || {};
    if (t.value_type === "string") continue;  // roll ids: shown in the header
    (byStep[stepOf(id)] = byStep[stepOf(id)] || []).push(id);
  }
  const html = [];
  for (const step of Object.keys(byStep).sort()) {
    const rows = byStep[step].sort((a, b) => {
      const ta = tagInfo[a] || {}, tb = tagInfo[b] || {};
      return (KIND_ORDER[ta.kind] ?? 9) - (KIND_ORDER[tb.kind] ?? 9) || (ROLE_ORDER[ta.role] ?? 9) - (ROLE_ORDER[tb.role] ?? 9)
        || a.localeCompare(b);
    }).filter(id => latest[id] || !id.endsWith("_std"));
    html.push(`<div class="step"><h3>${esc(step)}</h3><table class="latest" data-step="${esc(step)}"><thead><tr><th>tag</th><th>kind</th>` +
      `<th class="num">value</th><th>unit</th><th></th><th>quality</th><th>time</th></tr></thead><tbody>`);
    for (const id of rows) {
      const t = tagInfo[id] || {}, s = latest[id];
      const online = t.online === false ? '<span class="offline" title="offline (lab) measurement">offline</span>'
        : t.online === true ? '<span class="online" title="online measurement">online</span>' : "";
      const title = [t.description, t.iri].filter(Boolean).join(" · ");
      const q = s ? (QUALITY[s.quality] || String(s.quality)) : "";
      html.push(`<tr data-tag="${esc(id)}"><td title="${esc(title)}">${esc(id.slice(step.length + 1) || id)}</td>` +
        `<td>${esc(t.kind || "")}${t.role ? " · " + esc(t.role) : ""}</td>` +
        `<td class="num q${s ? s.quality : ""}">${s ? fmt(s.value) : "–"}</td><td>${esc(unitLabel(s ? s.unit : t.unit))}</td>` +
        `<td>${online}</td><td class="q${s ? s.quality : ""}">${esc(q)}</td><td class="muted">${s ? hhmmss(s.ts) : ""}</td></tr>`);
    }
    html.push("</tbody></table></div>");
  }
  document.getElementById("steps").innerHTML = html.join("");
  const w = latest["calendering.web_position"];
  if (w) document.getElementById("web").textContent = w.value.toFixed(1);
}

function setRoll(roll) { if (roll) document.getElementById("roll").textContent = roll; }

function onSamples(ev) {
  for (const s of ev.samples || []) {
    if (!lineId) { lineId = s.line_id; document.getElementById("line").textContent = lineId; }
    if (s.line_id !== lineId) continue;
    const old = latest[s.tag];
    if (!old || s.ts >= old.ts) latest[s.tag] = s;
    if (stepOf(s.tag) === "calendering" && s.roll_id) setRoll(s.roll_id);
    for (const slot of slots[s.tag] || []) onPlotSample(s, slot);
  }
  for (const r of ev.rolls || []) if (r.line_id === lineId && r.step === "calendering") setRoll(r.roll_id);
  scheduleRender();
}

// ---------------------------------------------------------------------------------------------
// prediction and model card
function onPrediction(pred) {
  if (lineId && pred.line_id !== lineId) return;
  lastPrediction = pred;
  const badge = document.getElementById("ood");
  badge.textContent = pred.out_of_domain ? "OUT OF DOMAIN" : "in domain";
  badge.className = "badge " + (pred.out_of_domain ? "off" : "on");
  badge.title = pred.out_of_domain ? (pred.ood_reasons || []).join("\n") : "inputs inside the training domain";
  const rows = Object.keys(pred.mean || {}).map(k => {
    const m = pred.mean[k], s = (pred.std || {})[k];
    return `<tr><td>${esc(k)}</td><td class="num">${fmt(m)}</td><td class="num">${s === undefined ? "" : "± " + fmt(2 * s)}</td></tr>`;
  }).join("");
  const el = document.getElementById("prediction");
  el.classList.remove("muted");
  el.innerHTML = `<div>${hhmmss(pred.ts)} · model ${esc(pred.model_version)} · ${fmt(pred.latency_ms)} ms` +
    `${pred.roll_id ? " · roll " + esc(pred.roll_id) : ""}</div>` +
    (pred.out_of_domain ? `<div class="error">out of domain: ${(pred.ood_reasons || []).map(esc).join("; ")}</div>` : "") +
    `<table><thead><tr><th>output</th><th class="num">mean</th><th class="num">±2σ</th></tr></thead><tbody>${rows}</tbody></table>`;
  markOutOfDomain(pred);
}

async function loadModel() {
  const el = document.getElementById("model");
  try {
    const m = await getJSON("/api/v1/models");
    if (!m.loaded) {
      el.innerHTML = `no surrogate model loaded (predictor not enabled) · ${(m.models || []).length} model(s) in the registry`;
      return;
    }
    el.classList.remove("muted");
    const c = m.loaded.card || {};
    const dom = c.domain || {}, units = c.units || {};
    const list = v => Array.isArray(v) ? v : (v && typeof v === "object" ? Object.keys(v) : []);
    const inputs = list(c.inputs).map(n => `<tr><td>${esc(n)}</td><td class="num">${Array.isArray(dom[n]) ?
      dom[n].map(fmt).join(" – ") : ""}</td><td>${esc(unitLabel(units[n]))}</td></tr>`).join("");
    const outputs = list(c.outputs).map(n => `${esc(n)}${units[n] ? " (" + esc(unitLabel(units[n])) + ")" : ""}`).join(", ");
    const acc = c.acceptance && typeof c.acceptance === "object" ? c.acceptance : null;
    el.innerHTML = `<div><b>${esc(m.loaded.family)}</b> version <b>${esc(m.loaded.version)}</b>` +
      `${c.created_utc ? " · created " + esc(c.created_utc) : ""}</div>` +
      (c.summary ? `<p class="summary">${esc(c.summary)}</p>` : "") +
      (inputs ? `<table><thead><tr><th>input</th><th class="num">training domain</th><th>unit</th></tr></thead><tbody>${inputs}</tbody></table>` : "") +
      (outputs ? `<div>outputs: ${outputs}</div>` : "") +
      (c.dataset && c.dataset.n_runs !== undefined ? `<div>trained on ${esc(c.dataset.n_runs)} runs</div>` : "") +
      (acc ? `<div>acceptance: ${acc.all_met === true ? '<span class="online">all criteria met</span>' :
              acc.all_met === false ? '<span class="error">not all criteria met</span>' : "–"}</div>` : "") +
      `<details><summary>full model card</summary><pre class="card-json">${esc(JSON.stringify(c, null, 1))}</pre></details>` +
      `<div class="muted">${(m.models || []).length} model(s) in the registry</div>`;
  } catch (e) { el.textContent = "model card unavailable: " + e.message; }
}

// ---------------------------------------------------------------------------------------------
// proposals and targets (feedback API)
function meanStd(o) {
  if (!o || typeof o !== "object") return "–";
  return `${fmt(o.mean)}${o.std !== undefined && o.std !== null ? " ± " + fmt(2 * o.std) : ""}`;
}

function renderProposal() {
  const el = document.getElementById("proposal");
  el.dataset.feedback = feedback.enabled === false ? "disabled" : "enabled";
  if (feedback.enabled === false) {
    el.className = "card muted";
    el.dataset.state = "";
    el.dataset.proposalId = "";
    el.textContent = `feedback not enabled (${feedback.detail})`;
    return;
  }
  const p = proposal;
  if (!p) {
    el.className = "card muted"; el.dataset.state = "none"; el.dataset.proposalId = "";
    el.textContent = "no open proposal";
    return;
  }
  el.className = "card state-" + p.state;
  el.dataset.state = p.state;
  el.dataset.proposalId = p.id;
  const settings = (p.settings || []).map(s =>
    `<tr><td>${esc(s.parameter)}</td><td class="num">${fmt(s.current)}</td><td class="num"><b>${fmt(s.proposed)}</b></td>` +
    `<td>${esc(unitLabel(s.unit))}</td><td>${s.clipped ? '<span class="warn">clipped</span>' : ""}</td></tr>` +
    (s.limit_note ? `<tr class="note"><td colspan="5" class="muted">${esc(s.limit_note)}</td></tr>` : "")).join("");
  const outs = [...new Set([...Object.keys(p.predicted || {}), ...Object.keys(p.predicted_now || {})])];
  const pred = outs.map(k => {
    const a = (p.predicted_now || {})[k], b = (p.predicted || {})[k], t = b || a || {};
    const d = displayOf(k, t.unit);
    const scale = o => o && typeof o === "object" ? {...o, mean: shown(o.mean, d.factor), std: shown(o.std, d.factor)} : o;
    const target = t.target !== undefined && t.target !== null
      ? `${fmt(shown(t.target, d.factor))} ± ${fmt(shown(t.tolerance, d.factor))}` : "–";
    return `<tr data-output="${esc(k)}"><td>${esc(k)}</td><td class="num">${meanStd(scale(a))}</td>` +
      `<td class="num">${meanStd(scale(b))}</td><td class="num">${target}</td><td>${esc(targetUnitLabel(d.unit))}</td></tr>`;
  }).join("");
  const reasons = (p.reasons || []).map(r => `<li>${esc(r)}</li>`).join("");
  el.innerHTML =
    `<div class="proposal-head"><span class="state">${esc(p.state)}</span> <code>${esc(p.id)}</code>` +
    ` · ${hhmmss(p.created)} · model ${esc(p.model_version || "–")}</div>` +
    `<table><thead><tr><th>setting</th><th class="num">current</th><th class="num">proposed</th><th>unit</th><th></th></tr></thead>` +
    `<tbody>${settings}</tbody></table>` +
    (pred ? `<table><thead><tr><th>predicted</th><th class="num">now (±2σ)</th><th class="num">proposed (±2σ)</th>` +
            `<th class="num">target</th><th>unit</th></tr></thead><tbody>${pred}</tbody></table>` : "") +
    (reasons ? `<div>reasons:</div><ul class="reasons">${reasons}</ul>` : "") +
    (p.approved_by ? `<div>decided by <b>${esc(p.approved_by)}</b> · ${hhmmss(p.updated)}</div>` : "") +
    (p.error ? `<div class="error">error: ${esc(p.error)}</div>` : "") +
    (p.realised ? `<div>realised: ${esc(JSON.stringify(p.realised))}</div>` : "") +
    (p.state === "proposed"
      ? `<div class="actions"><input id="proposal-comment" placeholder="comment (optional)" size="28">` +
        `<button type="button" id="approve" class="approve">Approve</button>` +
        `<button type="button" id="reject" class="reject">Reject</button></div>` : "");
  if (p.state === "proposed") {
    document.getElementById("approve").onclick = () => decide(p.id, "approve");
    document.getElementById("reject").onclick = () => decide(p.id, "reject");
  }
}

async function decide(id, action) {
  const comment = (document.getElementById("proposal-comment") || {}).value || "";
  for (const b of document.querySelectorAll("#proposal .actions button")) b.disabled = true;
  showWriteError(null);
  try {
    const p = await writeJSON("POST", `/api/v1/proposals/${encodeURIComponent(id)}/${action}`, comment ? {comment} : {});
    onProposal(p);
  } catch (e) {
    showWriteError(e);
    renderProposal();
  }
}

function onProposal(p) {
  if (!p || !p.id) return;
  if (lineId && p.line_id && p.line_id !== lineId) return;
  const old = proposals.get(p.id);
  if (old && old.updated && p.updated && p.updated < old.updated) return;  // an older event arriving late
  proposals.set(p.id, p);
  if (feedback.enabled === false) { feedback = {enabled: true, detail: ""}; loadTargets(); }
  if (p.state === "proposed" || !proposal || proposal.id === p.id || proposal.state !== "proposed") proposal = p;
  renderProposal();
  renderHistory();
}

function renderHistory() {
  const rows = [...proposals.values()].sort((a, b) => String(b.created).localeCompare(String(a.created))).slice(0, 20);
  document.querySelector("#proposal-history tbody").innerHTML = rows.map(p =>
    `<tr data-id="${esc(p.id)}"><td>${hhmmss(p.created)}</td><td class="state-${esc(p.state)}">${esc(p.state)}</td>` +
    `<td>${(p.settings || []).map(s => `${esc(s.parameter)} ${fmt(s.current)}→${fmt(s.proposed)}`).join(", ")}</td>` +
    `<td>${esc(p.approved_by || "")}</td></tr>`).join("");
}

async function loadProposals() {
  try {
    const [current, recent] = await Promise.all([getJSON("/api/v1/proposals/current"),
                                                 getJSON("/api/v1/proposals?limit=20")]);
    feedback = {enabled: true, detail: ""};
    for (const p of recent || []) proposals.set(p.id, p);
    proposal = current || null;
    if (current) proposals.set(current.id, current);
  } catch (e) {
    if (e.status === 404) feedback = {enabled: false, detail: e.detail === "Not Found" ? "no feedback API on this twin" : e.detail};
    else feedback = {enabled: false, detail: e.message};
  }
  renderProposal();
  renderHistory();
}

function renderTargets() {
  const form = document.getElementById("targets");
  if (feedback.enabled === false || !targets) {
    form.className = "card muted";
    form.textContent = feedback.enabled === false ? "feedback not enabled" : "no targets";
    return;
  }
  form.className = "card";
  document.getElementById("targets-recipe").textContent = targets.recipe ? `(recipe ${targets.recipe})` : "";
  const rows = Object.entries(targets.targets || {}).map(([k, t]) => {
    const d = displayOf(k, t.unit);
    return `<tr data-target="${esc(k)}" data-unit="${esc(d.unit)}"><td>${esc(k)}</td>` +
      `<td><input name="target" type="number" step="any" value="${esc(shown(t.target, d.factor))}"></td>` +
      `<td><input name="tolerance" type="number" step="any" min="0" value="${esc(shown(t.tolerance, d.factor))}"></td>` +
      `<td><input name="weight" type="number" step="any" min="0" value="${esc(t.weight)}"></td>` +
      `<td class="unit">${esc(targetUnitLabel(d.unit))}</td></tr>`;
  }).join("");
  form.innerHTML = `<table><thead><tr><th>output</th><th>target</th><th>tolerance</th><th>weight</th><th>unit</th></tr></thead>` +
    `<tbody>${rows}</tbody></table><button type="submit" id="targets-save">save targets</button>`;
}

async function loadTargets() {
  try { targets = await getJSON("/api/v1/feedback/targets"); }
  catch (e) { targets = null; if (e.status !== 404) console.warn(e); }
  renderTargets();
}

async function saveTargets(ev) {
  ev.preventDefault();
  const body = {recipe: targets.recipe, targets: {}};
  for (const tr of document.querySelectorAll("#targets tr[data-target]")) {
    const k = tr.dataset.target, old = targets.targets[k];
    const num = n => parseFloat(tr.querySelector(`input[name=${n}]`).value);
    // the values as shown, with the unit they are shown in: the API converts (percent -> fraction)
    body.targets[k] = {...old, target: num("target"), tolerance: num("tolerance"), weight: num("weight"),
                       unit: tr.dataset.unit};
  }
  showWriteError(null);
  try { targets = await writeJSON("PUT", "/api/v1/feedback/targets", body); renderTargets(); }
  catch (e) { showWriteError(e); }
}

// ---------------------------------------------------------------------------------------------
// dead letters (loaded at start, on reconnect, on request, and when the stream says new ones were stored;
// at most one reload per 2 s however fast bad input arrives)
let dlTimer = null;
function deadLettersArrived() {
  if (dlTimer === null) dlTimer = setTimeout(() => { dlTimer = null; refreshDeadLetters(); }, 2000);
}
async function refreshDeadLetters() {
  try {
    const dl = await getJSON("/api/v1/dead-letters?limit=20");
    document.getElementById("dl-count").textContent = dl.length ? `(latest ${dl.length})` : "(none)";
    document.querySelector("#dead tbody").innerHTML = dl.map(d =>
      `<tr><td class="muted">${hhmmss(d.received)}</td><td>${esc(d.source)}</td><td>${esc(d.address || "")}</td>` +
      `<td>${esc(d.reason_code)}</td><td title="${esc(d.payload || "")}">${esc(d.reason)}</td></tr>`).join("");
  } catch (e) { console.warn(e); }
}

// ---------------------------------------------------------------------------------------------
// live stream
function connect() {
  const badge = document.getElementById("live");
  const es = new EventSource("/api/v1/stream");
  es.onopen = async () => {
    badge.textContent = "live"; badge.className = "badge on";
    if (everOpened) {  // reconnected: catch up on what the stream could not deliver meanwhile
      for (const s of await getJSON(withLine("/api/v1/latest"))) latest[s.tag] = s;
      scheduleRender(); loadProposals(); refreshDeadLetters();
    }
    everOpened = true;
  };
  es.onerror = () => { badge.textContent = "reconnecting"; badge.className = "badge off"; };
  es.addEventListener("samples", e => onSamples(JSON.parse(e.data)));
  es.addEventListener("prediction", e => onPrediction(JSON.parse(e.data).prediction));
  es.addEventListener("proposal", e => onProposal(JSON.parse(e.data).proposal));
  es.addEventListener("dead_letters", deadLettersArrived);
  es.addEventListener("targets", e => {  // someone changed the targets
    const t = JSON.parse(e.data);
    if (document.activeElement && document.activeElement.closest("#targets")) return;  // not under the user's cursor
    targets = {recipe: t.recipe, targets: t.targets}; renderTargets();
  });
}

async function main() {
  renderTokenButton();
  document.getElementById("token-button").onclick = () => askToken("");
  document.getElementById("dl-refresh").onclick = refreshDeadLetters;
  document.getElementById("targets").addEventListener("submit", saveTargets);
  for (const t of await getJSON("/api/v1/tags")) tagInfo[t.id] = t;
  for (const s of await getJSON(withLine("/api/v1/latest"))) {
    if (!lineId) lineId = s.line_id;
    if (s.line_id === lineId) latest[s.tag] = s;
  }
  if (lineId) document.getElementById("line").textContent = lineId;
  const cal = Object.values(latest).find(s => stepOf(s.tag) === "calendering" && s.roll_id);
  if (cal) setRoll(cal.roll_id);
  renderLatest();
  connect();  // events arriving before the plots exist only update the tables
  const end = new Date(), start = new Date(end.getTime() - HISTORY_MIN * 60 * 1000);
  await Promise.all([...Object.entries(PRED_PLOTS).map(([id, p]) => initPredPlot(id, p, start, end)),
                     initSetpointPlot(start, end)]);
  document.body.dataset.plotsReady = "1";
  loadModel();
  await loadProposals();
  if (feedback.enabled) await loadTargets(); else renderTargets();
  refreshDeadLetters();
  try {
    const preds = await getJSON(withLine("/api/v1/predictions/latest"));
    const p = (preds.predictions || []).find(x => !lineId || x.line_id === lineId);
    if (p) onPrediction(p);
  } catch (e) { /* predictor not enabled: the badge says so */
    if (e.status === 404) document.getElementById("ood").textContent = "no predictor";
  }
}
main();
