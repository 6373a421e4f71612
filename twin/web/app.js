// Pilot-line twin dashboard.
// Initial state from the query API (one fetch each), then every change through the SSE stream
// /api/v1/stream?status_s=2 (event types: samples, prediction, proposal, targets, dead_letters, and a status
// event every 2 s with the health of every source and the reasons for no prediction / no proposal). No polling.
// The time range (last N minutes, a roll, a custom range) applies to every plot; the plots follow the stream only
// while the range ends now. Times are shown in one zone (the browser's unless chosen otherwise), named on the page.
// Writes (approve, reject, targets) carry a bearer token kept in sessionStorage; a 401/403 opens
// the token dialog with the API's reason and the write is retried with the new token.
"use strict";

const PARAMS = new URLSearchParams(location.search);
const LINE_PARAM = PARAMS.get("line");
const MAX_POINTS = 3000;       // points kept per trace while following live data
const BUCKETS = 400;           // buckets per series request (the API downsamples: min/mean/max per bucket)
const STATUS_S = 2;            // status event interval asked of the stream
// a connected source whose newest value is older than this is "stale" (amber); ?stale_s=N sets it
const STALE_S = Math.max(1, Number(PARAMS.get("stale_s")) || 30);
const TOKEN_KEY = "twin.token", PANELS_KEY = "twin.panels", TZ_KEY = "twin.timezone";
const QUALITY = ["good", "uncertain", "bad"];

// measured vs predicted plots: mean and ±2σ band of the surrogate ensemble, out-of-domain marks
const PRED_PLOTS = {
  "plot-porosity": {title: "Porosity: measured vs predicted (raw)", measured: "calendering.porosity_online",
                    predicted: "calendering.porosity_predicted", output: "porosity"},
  "plot-thickness": {title: "Thickness after calender: measured vs predicted (raw)",
                     measured: "calendering.thickness_after", predicted: "calendering.thickness_after_predicted",
                     output: "thickness_after_um"},
  "plot-tortuosity": {title: "Tortuosity factor (predicted)", measured: null,
                      predicted: "calendering.tortuosity_factor_predicted", output: "tortuosity_factor"},
  "plot-diffusivity": {title: "Effective diffusivity D_eff/D_0 (predicted)", measured: null,
                       predicted: "calendering.effective_diffusivity_predicted", output: "d_eff"},
};
// trace order in each of those plots
const T_UPPER = 0, T_LOWER = 1, T_MEAN = 2, T_OOD = 3, T_MEASURED = 4;
const SETPOINTS = ["calendering.gap_setpoint", "calendering.line_load_setpoint", "calendering.roll_temperature_setpoint"];
const SETPOINT_ACTUAL = {"calendering.gap_setpoint": "calendering.gap_actual", "calendering.line_load_setpoint": "calendering.line_load",
                         "calendering.roll_temperature_setpoint": "calendering.roll_temperature"};
const SP_COLOURS = ["#1f5f9e", "#2e9d5b", "#b03a2e"];
const KIND_ORDER = {MP: 0, PP: 1, SP: 2, TRACE: 3};
const ROLE_ORDER = {setpoint: 0, actual: 1, measured: 2, predicted: 3};
const STATE_COLOUR = {proposed: "#b07800", approved: "#2e7d4f", applied: "#2e7d4f", evaluated: "#2e7d4f",
                      rejected: "#b03a2e", failed: "#b03a2e", expired: "#777"};

const tagInfo = {};        // tag id -> /api/v1/tags item
const latest = {};         // tag id -> newest sample
const lastSetpoint = {};   // setpoint tag -> value last plotted (setpoint change marks while live)
let slots = {};            // tag id -> [{plot, trace, what}] (what: measured | mean | std | setpoint | panel)
let predPending = {};      // plot id -> Map(ts -> {mean, std, quality})
let buffers = {};          // plot id -> {trace index -> {x: [], y: []}}
let flushTimer = null, renderTimer = null, decorateTimer = null, coverageTimer = null;
let lineId = LINE_PARAM;
let lines = [];
let streamPoints = 0;      // points appended to plots from the live stream
let lastPrediction = null;
let feedback = {enabled: null, detail: ""};
let proposal = null;       // the proposal shown (open one, or the last one that changed state)
const proposals = new Map(); // id -> proposal (history, newest first by created)
let targets = null;
let everOpened = false;
let streamOpen = false;
let status = null, lastStatusAt = 0, prevPredictor = null, predictionSkipping = false;
let modelCard = null;
let rolls = [];            // [{roll_id, step, ts (ms)}] of the line, oldest first
let setpointChanges = [];  // [{ts (ms), tag, from, to}]
let range = {kind: "last", minutes: 30};
let loadGen = 0;           // a newer range load makes older ones moot
let bounds = null;         // {start, end} (ms) of the loaded range
const coverage = {};       // output -> {inside, n}
const lastPred = {};       // plot id -> {ms, mean, std} newest predicted point (live coverage)
let lastSlide = 0;

window.twin = {
  streamPoints: () => streamPoints,
  plotted: () => Object.fromEntries([...document.querySelectorAll(".plot")].map(gd =>
    [gd.id, (gd.data || []).map(t => ({name: t.name, points: t.x.length}))])),
  proposal: () => proposal,
  range: () => ({...range, start: bounds && bounds.start, end: bounds && bounds.end, live: isLive()}),
  coverage: () => JSON.parse(JSON.stringify(coverage)),
  marks: () => Object.fromEntries([...document.querySelectorAll(".plot")].map(gd =>
    [gd.id, ((gd.layout || {}).shapes || []).map(s => s.name || "")])),
  status: () => status,
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
  return String(u).replace(/\*\*2/g, "²").replace(/\*\*3/g, "³").replace(/\^2/g, "²").replace(/\^3/g, "³")
    .replace(/\bum\b/g, "µm").replace(/degC/g, "°C");
}

// One display unit per quantity: porosity in % everywhere (the model, its card and the targets state a
// fraction, unit "1"; the measured and predicted tags carry percent); the rest in their canonical unit.
const TARGET_DISPLAY = {porosity: {unit: "percent", factor: 100}, initial_porosity: {unit: "percent", factor: 100}};

function displayOf(output, unit) {
  // {unit, factor} of the page's display of a canonical value; unknown: the canonical unit itself
  const d = TARGET_DISPLAY[output];
  if (d && (unit === "1" || unit === "dimensionless" || unit == null)) return d;
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

function errorText(body, st) {
  if (body && typeof body.message === "string") return body.message;
  const d = body && body.detail;
  if (typeof d === "string") return d;
  if (Array.isArray(d)) return d.map(e => `${(e.loc || []).join(".")}: ${e.msg}`).join("; ");
  return `HTTP ${st}`;
}

class ApiError extends Error {
  constructor(st, detail) { super(`${st}: ${detail}`); this.status = st; this.detail = detail; }
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
// time: one zone for every time on the page (the browser's, or the one chosen; kept in localStorage)
const BROWSER_TZ = (Intl.DateTimeFormat().resolvedOptions().timeZone) || "UTC";
let tz = validZone(localStorage.getItem(TZ_KEY)) || BROWSER_TZ;
let dtf = null;
const offsetCache = new Map();

function validZone(z) {
  if (!z) return null;
  try { new Intl.DateTimeFormat("en-US", {timeZone: z}); return z; } catch (e) { return null; }
}

function setZone(z) {
  tz = z;
  dtf = new Intl.DateTimeFormat("en-US", {timeZone: tz, hourCycle: "h23", year: "numeric", month: "2-digit",
                                          day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit"});
  offsetCache.clear();
}
setZone(tz);

function parseMs(ts) {  // ISO 8601 with offset (any number of fraction digits) or ms -> ms since the epoch
  if (typeof ts === "number") return ts;
  if (ts == null) return NaN;
  return Date.parse(String(ts).replace(/(\.\d{3})\d+/, "$1"));
}

function offsetAt(ms) {  // the zone's offset from UTC (ms) at that instant; cached per quarter hour
  const k = Math.floor(ms / 9e5);
  let off = offsetCache.get(k);
  if (off === undefined) {
    const t = k * 9e5;
    const p = Object.fromEntries(dtf.formatToParts(new Date(t)).map(x => [x.type, x.value]));
    off = Date.UTC(+p.year, +p.month - 1, +p.day, +p.hour, +p.minute, +p.second) - t;
    if (offsetCache.size > 5000) offsetCache.clear();
    offsetCache.set(k, off);
  }
  return off;
}

function wallString(ms) { return new Date(ms + offsetAt(ms)).toISOString().slice(0, 23).replace("T", " "); }
function wall(ts) { const ms = parseMs(ts); return isFinite(ms) ? wallString(ms) : null; }  // plot x values
function wallToMs(w) {  // "YYYY-MM-DDTHH:MM[:SS]" read in the zone -> ms
  const naive = Date.parse(w.length === 16 ? w + ":00Z" : w + "Z");
  if (!isFinite(naive)) return NaN;
  return naive - offsetAt(naive - offsetAt(naive));
}

function offsetLabel(ms) {
  const o = Math.round(offsetAt(ms) / 60000), s = o < 0 ? "-" : "+", a = Math.abs(o);
  return `UTC${s}${String(Math.floor(a / 60)).padStart(2, "0")}:${String(a % 60).padStart(2, "0")}`;
}
function zoneLabel() { return `${tz} (${offsetLabel(Date.now())})`; }

function spansDays() { return !bounds || wallString(bounds.start).slice(0, 10) !== wallString(bounds.end - 1).slice(0, 10); }

// a time for tables and text: the date too when the range spans days or it is not today (in the zone)
function fmtTime(ts) {
  const ms = parseMs(ts);
  if (!isFinite(ms)) return "";
  const w = wallString(ms);
  const today = wallString(Date.now()).slice(0, 10) === w.slice(0, 10);
  return esc(today && !spansDays() ? w.slice(11, 19) : w.slice(0, 19));
}
const hhmmss = fmtTime;

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
// time range
function isLive() { return range.kind === "last" || (range.kind === "roll" && range.end == null); }

function computeBounds() {
  const now = Date.now();
  if (range.kind === "last") return {start: now - range.minutes * 60000, end: now};
  return {start: range.start, end: range.end == null ? now : range.end};
}

function rangeLabel() {
  const b = bounds;
  const a = wallString(b.start).slice(0, 19), z = wallString(b.end).slice(0, 19);
  const same = a.slice(0, 10) === z.slice(0, 10);
  const what = range.kind === "last" ? `last ${range.minutes >= 60 ? range.minutes / 60 + " h" : range.minutes + " min"}`
    : range.kind === "roll" ? `roll ${range.roll}` : "custom range";
  const el = document.getElementById("range-label");
  el.innerHTML = `${esc(what)}: ${esc(a)} – ${esc(same ? z.slice(11) : z)} · ${esc(zoneLabel())} · ` +
    (isLive() ? '<b>following live data</b>' : "history (not following live data)");
  el.dataset.live = isLive() ? "1" : "0";
}

async function loadRolls() {
  try {
    const rs = await getJSON(withLine("/api/v1/rolls?limit=500"));
    const cal = rs.filter(r => r.step === "calendering");
    rolls = (cal.length ? cal : rs).map(r => ({roll_id: r.roll_id, step: r.step, ts: parseMs(r.ts)}))
      .filter(r => isFinite(r.ts)).sort((a, b) => a.ts - b.ts);
  } catch (e) { rolls = []; }
  renderRollSelect();
}

function rollRange(i) {  // [start, end] of the i-th roll; the newest ends with the line's newest value (or now)
  const r = rolls[i];
  if (i + 1 < rolls.length) return {start: r.ts, end: rolls[i + 1].ts};
  const newest = Math.max(0, ...Object.values(latest).map(s => parseMs(s.ts)).filter(isFinite));
  if (!newest || Date.now() - newest < 120000) return {start: r.ts, end: null};
  return {start: r.ts, end: newest + 1000};
}

function renderRollSelect() {
  const sel = document.getElementById("roll-select");
  const cur = range.kind === "roll" ? range.roll : null;
  sel.innerHTML = `<option value="">choose a roll</option>` + rolls.map((r, i) =>
    `<option value="${i}"${r.roll_id === cur ? " selected" : ""}>${esc(r.roll_id)} · from ${esc(wallString(r.ts).slice(0, 16))}</option>`)
    .reverse().join("");
}

function chooseRange(r) {
  range = r;
  loadRange();
}

function setupToolbar() {
  const sel = document.getElementById("range-select"), rollSel = document.getElementById("roll-select");
  const custom = document.getElementById("custom-range");
  sel.addEventListener("change", () => {
    const v = sel.value;
    rollSel.hidden = v !== "roll";
    custom.hidden = v !== "custom";
    if (v.startsWith("last:")) chooseRange({kind: "last", minutes: Number(v.slice(5))});
    else if (v === "custom") {
      const b = bounds || computeBounds();
      document.getElementById("range-start").value = wallString(b.start).slice(0, 19).replace(" ", "T");
      document.getElementById("range-end").value = wallString(b.end).slice(0, 19).replace(" ", "T");
    }
  });
  rollSel.addEventListener("change", () => {
    if (rollSel.value === "") return;
    const i = Number(rollSel.value), rr = rollRange(i);
    chooseRange({kind: "roll", roll: rolls[i].roll_id, start: rr.start, end: rr.end});
  });
  document.getElementById("range-apply").addEventListener("click", () => {
    const s = wallToMs(document.getElementById("range-start").value), e = wallToMs(document.getElementById("range-end").value);
    const label = document.getElementById("range-label");
    if (!isFinite(s) || !isFinite(e) || s >= e) { label.textContent = "the custom range needs a start before its end"; return; }
    chooseRange({kind: "custom", start: s, end: e});
  });
  const tzSel = document.getElementById("tz-select");
  let zones = [];
  try { zones = Intl.supportedValuesOf("timeZone"); } catch (e) { zones = []; }
  zones = [...new Set([BROWSER_TZ, "UTC", tz, ...zones])];
  tzSel.innerHTML = zones.map(z => `<option value="${esc(z)}"${z === tz ? " selected" : ""}>${esc(z)}` +
    `${z === BROWSER_TZ ? " (this browser)" : ""}</option>`).join("");
  tzSel.addEventListener("change", () => {
    if (!validZone(tzSel.value)) return;
    setZone(tzSel.value);
    localStorage.setItem(TZ_KEY, tzSel.value);
    renderRollSelect(); renderLatest(); renderProposal(); renderHistory(); refreshDeadLetters();
    if (lastPrediction) onPrediction(lastPrediction);
    loadRange();
  });
  document.getElementById("export-csv").addEventListener("click", () => exportData("csv"));
  document.getElementById("export-parquet").addEventListener("click", () => exportData("parquet"));
  document.getElementById("line-select").addEventListener("change", ev => {
    const p = new URLSearchParams(location.search);
    p.set("line", ev.target.value);
    location.search = p.toString();
  });
  document.getElementById("add-panel").addEventListener("submit", ev => {
    ev.preventDefault();
    const tag = document.getElementById("panel-tag").value;
    if (!tag) return;
    const list = savedPanels();
    if (!list.includes(tag)) { list.push(tag); localStorage.setItem(PANELS_KEY, JSON.stringify(list)); }
    renderPanels().then(() => loadRange());
  });
}

// ---------------------------------------------------------------------------------------------
// plots
function unitOf(tag) { return tagInfo[tag] ? tagInfo[tag].unit : ""; }

function addSlot(tag, plot, trace, what) { (slots[tag] = slots[tag] || []).push({plot, trace, what}); }

async function series(tag, start, end) {
  if (!tagInfo[tag]) return null;
  try {
    const s = await getJSON(withLine(`/api/v1/series/${encodeURIComponent(tag)}?start=${new Date(start).toISOString()}` +
                                     `&end=${new Date(end).toISOString()}&points=${BUCKETS}`));
    return s.buckets;
  } catch (e) { console.warn(e); return null; }
}

function baseLayout(title, unit) {
  return {title: {text: title, font: {size: 13}}, margin: {l: 55, r: 10, t: 30, b: 30},
          legend: {orientation: "h", y: -0.18, font: {size: 10}},
          xaxis: {type: "date", range: [wallString(bounds.start), wallString(bounds.end)], hoverformat: "%Y-%m-%d %H:%M:%S"},
          yaxis: {title: {text: unitLabel(unit), font: {size: 11}}}, annotations: [], shapes: []};
}

const PLOT_CONFIG = {displayModeBar: false, responsive: true};

async function initPredPlot(id, p, b, gen) {
  const [measured, mean, std] = await Promise.all([
    p.measured ? series(p.measured, b.start, b.end) : null, series(p.predicted, b.start, b.end),
    series(p.predicted + "_std", b.start, b.end)]);
  if (gen !== loadGen) return;
  const stdBy = new Map((std || []).map(q => [q.start, q.mean]));
  const up = {x: [], y: []}, lo = {x: [], y: []}, mid = {x: [], y: []};
  const band = new Map();  // bucket start -> [lo, hi] (coverage)
  for (const q of mean || []) {
    const x = wall(q.ts);
    mid.x.push(x); mid.y.push(q.mean);
    const s = stdBy.get(q.start);
    if (s !== undefined) {
      up.x.push(x); up.y.push(q.mean + 2 * s); lo.x.push(x); lo.y.push(q.mean - 2 * s);
      band.set(q.start, [q.mean - 2 * s, q.mean + 2 * s]);
    }
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
    traces.push({x: (measured || []).map(q => wall(q.ts)), y: (measured || []).map(q => q.mean), name: "measured",
                 mode: "lines", line: {color: "#1f5f9e", width: 1.2}});
    addSlot(p.measured, id, T_MEASURED, "measured");
    // band coverage over the range: buckets where the measured mean lies inside the predicted ±2σ band
    const c = {inside: 0, n: 0};
    for (const q of measured || []) {
      const bb = band.get(q.start);
      if (!bb) continue;
      c.n++;
      if (q.mean >= bb[0] && q.mean <= bb[1]) c.inside++;
    }
    coverage[p.output] = c;
  }
  const last = (mean || []).length ? mean[mean.length - 1] : null;
  if (last && stdBy.get(last.start) !== undefined) lastPred[id] = {ms: parseMs(last.ts), mean: last.mean, std: stdBy.get(last.start)};
  else delete lastPred[id];
  const unit = unitOf(p.measured || p.predicted) || unitOf(p.predicted);
  await Plotly.react(id, traces, baseLayout(p.title, unit), PLOT_CONFIG);
}

async function initSetpointPlot(b, gen) {
  const id = "plot-setpoints";
  const n = SETPOINTS.length, gap = 0.1, h = (1 - gap * (n - 1)) / n;
  const layout = baseLayout("Calender setpoints (steps) and actual values", "");
  layout.margin.l = 70;
  layout.xaxis.anchor = "y" + n;
  const traces = [];
  const actuals = SETPOINTS.map(t => SETPOINT_ACTUAL[t]);
  const data = await Promise.all([...SETPOINTS, ...actuals].map(t => series(t, b.start, b.end)));
  if (gen !== loadGen) return;
  const changes = [];
  SETPOINTS.forEach((tag, i) => {
    const ax = i === 0 ? "" : String(i + 1);
    const sp = data[i] || [], act = data[n + i] || [];
    const x = sp.map(q => wall(q.ts)), y = sp.map(q => q.mean);
    const lastS = latest[tag];
    if (!x.length && lastS && isLive()) { x.push(wall(lastS.ts)); y.push(lastS.value); }
    // a setpoint holds until it changes (sources send it on change): drawn on to the end of the range
    if (y.length) {
      const hold = Math.min(b.end - 1, Date.now());  // the range is [start, end)
      if (wallString(hold) > x[x.length - 1]) { x.push(wallString(hold)); y.push(y[y.length - 1]); }
    }
    // setpoint changes: a bucket whose values differ, or a bucket that differs from the one before
    let prev = null;
    for (const q of sp) {
      if (q.min !== q.max) changes.push({ts: parseMs(q.ts), tag, from: q.min, to: q.max});
      else if (prev !== null && q.mean !== prev) changes.push({ts: parseMs(q.start), tag, from: prev, to: q.mean});
      prev = q.max;
    }
    if (sp.length) lastSetpoint[tag] = sp[sp.length - 1].max;
    traces.push({x: act.map(q => wall(q.ts)), y: act.map(q => q.mean), name: actuals[i].split(".")[1], mode: "lines",
                 yaxis: "y" + ax, line: {color: SP_COLOURS[i], width: 1}, opacity: 0.35});
    addSlot(actuals[i], id, traces.length - 1, "measured");
    traces.push({x, y, name: tag.split(".")[1], mode: "lines+markers", marker: {size: 5}, yaxis: "y" + ax,
                 line: {shape: "hv", color: SP_COLOURS[i], width: 2.5}});
    addSlot(tag, id, traces.length - 1, "setpoint");
    const lo = (n - 1 - i) * (h + gap);
    layout["yaxis" + ax] = {domain: [lo, lo + h], title: {text: `${tag.split(".")[1].replace("_setpoint", "")}` +
                            ` (${unitLabel(unitOf(tag))})`, font: {size: 10}}};
  });
  setpointChanges = changes;
  await Plotly.react(id, traces, layout, PLOT_CONFIG);
}

// operator panels: any tag, kept in this browser (localStorage)
function savedPanels() {
  try { const v = JSON.parse(localStorage.getItem(PANELS_KEY) || "[]"); return Array.isArray(v) ? v.filter(t => typeof t === "string") : []; }
  catch (e) { return []; }
}

function panelId(tag) { return "panel-" + tag.replace(/[^A-Za-z0-9_-]/g, "_"); }

async function renderPanels() {
  const box = document.getElementById("panels");
  const want = savedPanels().filter(t => tagInfo[t]);
  for (const el of [...box.children]) if (!want.includes(el.dataset.tag)) { Plotly.purge(el.querySelector(".plot")); el.remove(); }
  for (const tag of want) {
    if (box.querySelector(`[data-tag="${CSS.escape(tag)}"]`)) continue;
    const d = document.createElement("div");
    d.className = "panel"; d.dataset.tag = tag;
    d.innerHTML = `<div class="plot" id="${esc(panelId(tag))}"></div>` +
      `<button type="button" class="remove" aria-label="remove the panel of ${esc(tag)}">remove</button>`;
    d.querySelector(".remove").addEventListener("click", () => {
      localStorage.setItem(PANELS_KEY, JSON.stringify(savedPanels().filter(t => t !== tag)));
      renderPanels();
      document.getElementById("panel-tag").focus();
    });
    box.appendChild(d);
  }
}

async function initPanel(tag, b, gen) {
  const id = panelId(tag);
  const s = await series(tag, b.start, b.end);
  if (gen !== loadGen || !document.getElementById(id)) return;
  const q = s || [];
  const x = q.map(p => wall(p.ts));
  const traces = [
    {x, y: q.map(p => p.max), name: "max", mode: "lines", line: {width: 0}, showlegend: false, hoverinfo: "skip"},
    {x, y: q.map(p => p.min), name: "min–max", mode: "lines", line: {width: 0}, fill: "tonexty", fillcolor: "rgba(31,95,158,0.15)"},
    {x, y: q.map(p => p.mean), name: "value", mode: "lines", line: {color: "#1f5f9e", width: 1.4}},
  ];
  addSlot(tag, id, 2, "measured");
  const t = tagInfo[tag] || {};
  await Plotly.react(id, traces, baseLayout(`${tag}${t.description ? " · " + t.description : ""}`, t.unit), PLOT_CONFIG);
}

function renderPanelChoices() {
  const sel = document.getElementById("panel-tag");
  const ids = Object.values(tagInfo).filter(t => t.value_type !== "string").map(t => t.id).sort();
  sel.innerHTML = ids.map(i => `<option value="${esc(i)}">${esc(i)}${tagInfo[i].unit && unitLabel(tagInfo[i].unit) ?
    " (" + esc(unitLabel(tagInfo[i].unit)) + ")" : ""}</option>`).join("");
}

async function loadRange() {
  const gen = ++loadGen;
  bounds = computeBounds();
  document.body.dataset.plotsReady = "0";
  slots = {}; predPending = {}; buffers = {};
  for (const k of Object.keys(coverage)) delete coverage[k];
  rangeLabel();
  for (const id of Object.keys(PRED_PLOTS)) predPending[id] = new Map();
  await renderPanels();
  await Promise.all([...Object.entries(PRED_PLOTS).map(([id, p]) => initPredPlot(id, p, bounds, gen)),
                     initSetpointPlot(bounds, gen),
                     ...savedPanels().filter(t => tagInfo[t]).map(t => initPanel(t, bounds, gen))]);
  if (gen !== loadGen) return;
  renderCoverage();
  decorateAll();
  renderExportTags();
  renderProposal(); renderHistory(); scheduleRender();  // times with or without their date, for this range
  document.body.dataset.plotsReady = "1";
}

function push(plot, trace, x, y) {
  const b = (buffers[plot] = buffers[plot] || {});
  const t = (b[trace] = b[trace] || {x: [], y: []});
  t.x.push(x); t.y.push(y);
  if (flushTimer === null) flushTimer = setTimeout(flushPlots, 200);  // coalesce a burst of events
}

function flushPlots() {
  flushTimer = null;
  if (document.body.dataset.plotsReady !== "1") { flushTimer = setTimeout(flushPlots, 200); return; }
  for (const [plot, traces] of Object.entries(buffers)) {
    const idx = Object.keys(traces).map(Number);
    if (!idx.length) continue;
    const gd = document.getElementById(plot);
    if (!gd || !gd.data) continue;
    Plotly.extendTraces(plot, {x: idx.map(i => traces[i].x), y: idx.map(i => traces[i].y)}, idx, MAX_POINTS);
    for (const i of idx) streamPoints += traces[i].x.length;
  }
  buffers = {};
  if (range.kind === "last" && Date.now() - lastSlide > 5000) {  // the window slides with the clock
    lastSlide = Date.now();
    bounds = computeBounds();
    for (const gd of document.querySelectorAll(".plot")) {
      if (gd.layout) Plotly.relayout(gd, {"xaxis.range": [wallString(bounds.start), wallString(bounds.end)]});
    }
  }
}

function onPlotSample(s, slot) {
  const x = wall(s.ts);
  if (slot.what === "setpoint") {
    const prev = lastSetpoint[s.tag];
    if (prev !== undefined && prev !== s.value) {
      setpointChanges.push({ts: parseMs(s.ts), tag: s.tag, from: prev, to: s.value});
      scheduleDecorate();
    }
    lastSetpoint[s.tag] = s.value;
  }
  if (slot.what === "measured" || slot.what === "setpoint") {
    push(slot.plot, slot.trace, x, s.value);
    const p = Object.entries(PRED_PLOTS).find(([id, d]) => id === slot.plot && d.measured === s.tag);
    const lp = lastPred[slot.plot];
    if (p && lp && Math.abs(parseMs(s.ts) - lp.ms) < 60000) {  // live band coverage against the newest prediction
      const c = coverage[p[1].output] = coverage[p[1].output] || {inside: 0, n: 0};
      c.n++;
      if (Math.abs(s.value - lp.mean) <= 2 * lp.std) c.inside++;
      if (coverageTimer === null) coverageTimer = setTimeout(() => { coverageTimer = null; renderCoverage(); }, 500);
    }
    return;
  }
  const pend = predPending[slot.plot];
  const e = pend.get(s.ts) || {};
  e[slot.what] = s.value;
  if (slot.what === "mean") {
    e.quality = s.quality;
    push(slot.plot, T_MEAN, x, s.value);
    if (s.quality !== 0) push(slot.plot, T_OOD, x, s.value);
  }
  if (e.mean !== undefined && e.std !== undefined) {
    push(slot.plot, T_UPPER, x, e.mean + 2 * e.std);
    push(slot.plot, T_LOWER, x, e.mean - 2 * e.std);
    lastPred[slot.plot] = {ms: parseMs(s.ts), mean: e.mean, std: e.std};
    pend.delete(s.ts);
  } else {
    pend.set(s.ts, e);
    if (pend.size > 50) pend.delete(pend.keys().next().value);
  }
}

// ---------------------------------------------------------------------------------------------
// marks on the plots: roll changes, setpoint changes, proposals; target ± tolerance on targeted outputs;
// the out-of-domain reasons and the reason for no prediction as notes
function noteAnnotation(text, color, y) {
  return {text, xref: "paper", yref: "paper", x: 0.01, y: y ?? 0.98, xanchor: "left", yanchor: "top", showarrow: false,
          font: {size: 11, color: color || "#777"}, bgcolor: "rgba(255,255,255,0.8)", name: "note"};
}

function vline(ms, color, dash, name) {
  return {type: "line", xref: "x", yref: "paper", x0: wallString(ms), x1: wallString(ms), y0: 0, y1: 1,
          line: {color, width: 1.2, dash}, name, layer: "above"};
}

function topLabel(ms, text, color, hover, name) {
  const right = bounds && ms > (bounds.start + bounds.end) / 2;  // labels stay inside the plot
  return {x: wallString(ms), xref: "x", yref: "paper", y: 1.0, yanchor: "bottom", xanchor: right ? "right" : "left",
          text, showarrow: false,
          font: {size: 9, color}, hovertext: hover || text, name};
}

function inRange(ms) { return bounds && ms >= bounds.start && ms <= Math.max(bounds.end, Date.now()); }

function proposalMarks() {
  const out = [];
  for (const p of proposals.values()) {
    if (lineId && p.line_id && p.line_id !== lineId) continue;
    const what = (p.settings || []).map(s => `${s.parameter} ${fmt(s.current)} → ${fmt(s.proposed)} ${unitLabel(s.unit)}`).join(", ");
    out.push({ms: parseMs(p.created), state: "proposed", text: `proposed: ${what}`});
    if (p.state !== "proposed") {
      const t = p.state === "applied" || p.state === "evaluated" ? (p.applied || p.updated) : p.updated;
      out.push({ms: parseMs(t), state: p.state === "evaluated" ? "applied" : p.state,
                text: `${p.state}${p.approved_by ? " by " + p.approved_by : ""}: ${what}`});
    }
  }
  return out.filter(m => isFinite(m.ms) && inRange(m.ms));
}

function targetOf(output) {
  const t = targets && targets.targets && targets.targets[output];
  if (!t || typeof t.target !== "number") return null;
  const d = displayOf(output, t.unit);
  return {target: t.target * d.factor, tol: (t.tolerance || 0) * d.factor, unit: d.unit};
}

function decorate(id) {
  const gd = document.getElementById(id);
  if (!gd || !gd.layout) return;
  const shapes = [], ann = [];
  const labels = id === "plot-setpoints";  // the text labels go on the setpoint plot; the others get the lines
  for (const r of rolls) {
    if (!inRange(r.ts)) continue;
    shapes.push(vline(r.ts, "#6b7280", "dot", "roll:" + r.roll_id));
    ann.push(topLabel(r.ts, "roll " + esc(r.roll_id), "#4a5263", `roll ${r.roll_id} from ${wallString(r.ts).slice(0, 19)}`, "roll"));
  }
  const spc = setpointChanges.filter(c => inRange(c.ts)).slice(-60);
  for (const c of spc) {
    const i = SETPOINTS.indexOf(c.tag);
    shapes.push(vline(c.ts, SP_COLOURS[i] || "#1f5f9e", "dash", "setpoint:" + c.tag));
    if (labels) ann.push(topLabel(c.ts, "◆", SP_COLOURS[i] || "#1f5f9e",
      `${c.tag.split(".")[1]} ${fmt(c.from)} → ${fmt(c.to)} ${unitLabel(unitOf(c.tag))} at ${wallString(c.ts).slice(0, 19)}`, "setpoint"));
  }
  for (const m of proposalMarks().slice(-40)) {
    const col = STATE_COLOUR[m.state] || "#777";
    shapes.push(vline(m.ms, col, "solid", "proposal:" + m.state));
    ann.push(topLabel(m.ms, m.state === "proposed" ? "P" : m.state === "applied" ? "P✓" : m.state === "rejected" ? "P✗" : "P·",
                      col, `proposal ${m.text} at ${wallString(m.ms).slice(0, 19)}`, "proposal:" + m.state));
  }
  const pp = PRED_PLOTS[id];
  if (pp) {
    const t = targetOf(pp.output);
    if (t && tagInfo[pp.predicted]) {
      shapes.push({type: "rect", xref: "paper", yref: "y", x0: 0, x1: 1, y0: t.target - t.tol, y1: t.target + t.tol,
                   fillcolor: "rgba(46,157,91,0.12)", line: {width: 0}, layer: "below", name: "target band"});
      shapes.push({type: "line", xref: "paper", yref: "y", x0: 0, x1: 1, y0: t.target, y1: t.target,
                   line: {color: "#2e9d5b", width: 1.5, dash: "dashdot"}, name: "target"});
      ann.push({text: `target ${fmt(t.target)} ± ${fmt(t.tol)} ${unitLabel(t.unit)}`, xref: "paper", yref: "y", x: 0.99,
                y: t.target + t.tol, xanchor: "right", yanchor: "bottom", showarrow: false, font: {size: 10, color: "#2e7d4f"},
                name: "target"});
    }
    const notes = [];
    if (!tagInfo[pp.predicted]) notes.push(["no predictions: the surrogate predictor is not enabled", "#777"]);
    else {
      if (lastPrediction && lastPrediction.out_of_domain && isLive())
        notes.push(["⚠ out of domain: " + (lastPrediction.ood_reasons || []).join("; ").slice(0, 110), "#b03a2e"]);
      const reason = noPredictionReason();
      const mean = (gd.data || [])[T_MEAN];
      if (reason && (isLive() || !mean || !mean.x.length)) notes.push(["no prediction: " + reason.slice(0, 110), "#8a6a00"]);
    }
    notes.forEach(([t, c], i) => ann.push(noteAnnotation(esc(t), c, 0.98 - 0.1 * i)));
  }
  Plotly.relayout(gd, {shapes, annotations: ann});
}

function decorateAll() {
  for (const gd of document.querySelectorAll(".plot")) if (gd.layout) decorate(gd.id);
}

function scheduleDecorate() {
  if (decorateTimer === null) decorateTimer = setTimeout(() => { decorateTimer = null; decorateAll(); }, 1000);
}

function renderCoverage() {
  const el = document.getElementById("coverage");
  const parts = [], shares = [];
  for (const [k, label] of [["porosity", "porosity"], ["thickness_after_um", "thickness"]]) {
    const c = coverage[k];
    if (!c || !c.n) continue;
    const share = c.inside / c.n;
    shares.push(share);
    parts.push(`${label} ${Math.round(100 * share)} %`);
  }
  el.dataset.shares = JSON.stringify(Object.fromEntries(Object.entries(coverage).map(([k, c]) => [k, c.n ? c.inside / c.n : null])));
  if (!parts.length) {
    el.className = "badge muted-badge";
    el.textContent = "band coverage: no measured value beside a prediction in this range";
    return;
  }
  const worst = Math.min(...shares);
  el.className = "badge " + (worst >= 0.8 ? "on" : worst >= 0.5 ? "warn" : "off");
  el.textContent = "in ±2σ band: " + parts.join(", ");
  el.title = "share of measured values (bucket means) inside the predicted ±2σ band over the time range; " +
    "a calibrated band holds about 95 %";
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
      // one σ convention on the page: the *_std tags hold 1σ; shown as ±2σ like every band
      const isStd = id.endsWith("_predicted_std");
      const value = s ? (isStd ? "± " + fmt(2 * s.value) : fmt(s.value)) : "–";
      const name = (id.slice(step.length + 1) || id) + (isStd ? " (±2σ)" : "");
      html.push(`<tr data-tag="${esc(id)}"><td title="${esc(title)}">${esc(name)}</td>` +
        `<td>${esc(t.kind || "")}${t.role ? " · " + esc(t.role) : ""}</td>` +
        `<td class="num q${s ? s.quality : ""}">${value}</td><td>${esc(unitLabel(s ? s.unit : t.unit))}</td>` +
        `<td>${online}</td><td class="q${s ? s.quality : ""}">${esc(q)}</td><td class="muted">${s ? fmtTime(s.ts) : ""}</td></tr>`);
    }
    html.push("</tbody></table></div>");
  }
  document.getElementById("steps").innerHTML = html.join("");
  const w = latest["calendering.web_position"];
  if (w) document.getElementById("web").textContent = w.value.toFixed(1);
}

function setRoll(roll) { if (roll) document.getElementById("roll").textContent = roll; }

function onSamples(ev) {
  const live = isLive();
  for (const s of ev.samples || []) {
    if (!lineId) { lineId = s.line_id; renderLines(); }
    if (!lines.includes(s.line_id)) { lines.push(s.line_id); renderLines(); }
    if (s.line_id !== lineId) continue;
    const old = latest[s.tag];
    if (!old || s.ts >= old.ts) latest[s.tag] = s;
    if (stepOf(s.tag) === "calendering" && s.roll_id) setRoll(s.roll_id);
    if (live) for (const slot of slots[s.tag] || []) onPlotSample(s, slot);
  }
  for (const r of ev.rolls || []) {
    if (r.line_id !== lineId) continue;
    if (r.step === "calendering") setRoll(r.roll_id);
    if (!rolls.some(x => x.roll_id === r.roll_id)) {
      rolls.push({roll_id: r.roll_id, step: r.step, ts: parseMs(r.ts)});
      rolls.sort((a, b) => a.ts - b.ts);
      renderRollSelect();
      if (live) scheduleDecorate();
    }
  }
  scheduleRender();
}

function renderLines() {
  const sel = document.getElementById("line-select");
  const all = [...new Set([...(lineId ? [lineId] : []), ...lines])].sort();
  sel.innerHTML = all.length ? all.map(l => `<option value="${esc(l)}"${l === lineId ? " selected" : ""}>${esc(l)}</option>`).join("")
    : "<option>–</option>";
  sel.disabled = all.length < 2;
}

// ---------------------------------------------------------------------------------------------
// prediction and model card
function outputDisplay(k) {  // one display unit per output: porosity %, the rest as the model card states
  const units = (modelCard && modelCard.units) || {};
  return displayOf(k, units[k] ?? (k === "porosity" ? "1" : k === "thickness_after_um" ? "um" : null));
}

function onPrediction(pred) {
  if (lineId && pred.line_id !== lineId) return;
  lastPrediction = pred;
  predictionSkipping = false;
  renderNoPrediction();
  const badge = document.getElementById("ood");
  badge.textContent = pred.out_of_domain ? "OUT OF DOMAIN" : "in domain";
  badge.className = "badge " + (pred.out_of_domain ? "off" : "on");
  badge.title = pred.out_of_domain ? (pred.ood_reasons || []).join("\n") : "inputs inside the training domain";
  const rows = Object.keys(pred.mean || {}).map(k => {
    const d = outputDisplay(k), m = shown(pred.mean[k], d.factor), s = (pred.std || {})[k];
    return `<tr data-output="${esc(k)}"><td>${esc(k)}</td><td class="num">${fmt(m)}</td>` +
      `<td class="num">${s === undefined ? "" : "± " + fmt(shown(2 * s, d.factor))}</td><td>${esc(targetUnitLabel(d.unit))}</td></tr>`;
  }).join("");
  const el = document.getElementById("prediction");
  el.classList.remove("muted");
  el.innerHTML = `<div><b>raw model output</b> (uncorrected surrogate ensemble; the proposal's values are corrected, ` +
    `see there) · ${fmtTime(pred.ts)} · model ${esc(pred.model_version)} · ${fmt(pred.latency_ms)} ms` +
    `${pred.roll_id ? " · roll " + esc(pred.roll_id) : ""}</div>` +
    (pred.out_of_domain ? `<div class="error">out of domain: ${(pred.ood_reasons || []).map(esc).join("; ")}</div>` : "") +
    `<div class="scroll"><table><thead><tr><th>output</th><th class="num">mean</th><th class="num">±2σ</th><th>unit</th></tr></thead>` +
    `<tbody>${rows}</tbody></table></div>`;
  scheduleDecorate();
}

function noPredictionReason() {
  const p = status && status.predictor;
  if (status && !p) return "the surrogate predictor is not enabled";
  if (!p) return null;
  const has = lineId && p.latest && p.latest[lineId];
  if (has && !predictionSkipping) return null;
  if (has) return p.last_skip_reason;
  return `none for line ${lineId} since the twin started: predictions are made from the line's current inputs ` +
    `(a run replayed into the past gets none)` + (p.last_skip_reason ? `; the last skipped round: ${p.last_skip_reason}` : "");
}

function renderNoPrediction() {
  const el = document.getElementById("no-prediction-reason");
  const r = noPredictionReason();
  el.hidden = !r;
  el.innerHTML = r ? `<b>No ${lastPrediction ? "new " : ""}prediction:</b> ${esc(r)}` : "";
  renderNoProposal();
}

const METRICS = {r2: ["R²", ">="], mae: ["MAE", "<="], rmse: ["RMSE", "<="], mape_pct: ["MAPE", "<="],
                 coverage_2sigma: ["±2σ coverage", ">="], coverage_2sigma_max: ["±2σ coverage", "<="]};

function acceptanceTable(acc) {
  const rows = (acc.rows || []).map(r => {
    const [name, cmp] = METRICS[r.metric] || [r.metric, ""];
    // values in the page's units: porosity errors in % points, coverage and MAPE in %
    let f = 1, unit = "";
    if (r.metric === "coverage_2sigma" || r.metric === "coverage_2sigma_max") { f = 100; unit = "%"; }
    else if (r.metric === "mape_pct") unit = "%";
    else if (r.metric === "mae" || r.metric === "rmse") {
      const d = outputDisplay(r.output); f = d.factor; unit = d.unit === "percent" ? "% points" : targetUnitLabel(d.unit);
      if (unit === "1 (dimensionless)") unit = "";
    }
    const v = typeof r.value === "number" ? fmt(r.value * f) : "–", t = typeof r.target === "number" ? fmt(r.target * f) : "–";
    const met = r.met === true ? '<span class="pass">pass</span>' : r.met === false ? '<span class="fail">fail</span>' : "–";
    const note = r.target_above_ceiling ? `target above the noise ceiling (${fmt(r.noise_ceiling)})` : "";
    return `<tr data-metric="${esc(r.output)}:${esc(r.metric)}" data-met="${r.met}"><td>${esc(r.output)}</td><td>${esc(name)}</td>` +
      `<td class="num">${esc(cmp)} ${t}</td><td class="num">${v}</td><td>${esc(unit)}</td><td>${met}</td><td class="muted">${esc(note)}</td></tr>`;
  }).join("");
  return `<div>acceptance: ${acc.all_met === true ? '<span class="pass">all criteria met</span>' :
      acc.all_met === false ? `<span class="fail">${(acc.rows || []).filter(r => r.met === false).length} of ` +
      `${(acc.rows || []).length} criteria not met</span>` : "–"}</div>` +
    (rows ? `<div class="scroll"><table id="acceptance"><thead><tr><th>output</th><th>criterion</th><th class="num">target</th>` +
            `<th class="num">value</th><th>unit</th><th>result</th><th></th></tr></thead><tbody>${rows}</tbody></table></div>` : "");
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
    modelCard = c;
    const dom = c.domain || {}, units = c.units || {};
    const list = v => Array.isArray(v) ? v : (v && typeof v === "object" ? Object.keys(v) : []);
    const inputs = list(c.inputs).map(n => {
      // the card names an input's unit in its name when it has one (initial_thickness_um, wall_speed_mm_s, ..._C)
      const u = units[n] ?? (n.endsWith("_um") ? "um" : n.endsWith("_mm_s") ? "mm/s" : n.endsWith("_C") ? "degC" : "1");
      const d = displayOf(n, u);
      return `<tr data-input="${esc(n)}"><td>${esc(n)}</td><td class="num">${Array.isArray(dom[n]) ?
        dom[n].map(v => fmt(shown(v, d.factor))).join(" – ") : ""}</td><td>${esc(targetUnitLabel(d.unit))}</td></tr>`;
    }).join("");
    const outputs = list(c.outputs).map(n => {
      const d = outputDisplay(n);
      return `${esc(n)} (${esc(targetUnitLabel(d.unit))})`;
    }).join(", ");
    const acc = c.acceptance && typeof c.acceptance === "object" ? c.acceptance : null;
    el.innerHTML = `<div><b>${esc(m.loaded.family)}</b> version <b>${esc(m.loaded.version)}</b>` +
      `${c.created_utc ? " · created " + fmtTime(c.created_utc) : ""}</div>` +
      (c.summary ? `<p class="summary">${esc(c.summary)}</p>` : "") +
      (inputs ? `<div class="scroll"><table><thead><tr><th>input</th><th class="num">training domain</th><th>unit</th></tr></thead><tbody>${inputs}</tbody></table></div>` : "") +
      (outputs ? `<div>outputs: ${outputs}</div>` : "") +
      (c.dataset && c.dataset.n_runs !== undefined ? `<div>trained on ${esc(c.dataset.n_runs)} runs</div>` : "") +
      (acc ? acceptanceTable(acc) : "") +
      (c.acceptance_note ? `<p class="summary muted">${esc(c.acceptance_note)}</p>` : "") +
      `<details><summary>the whole model card (JSON)</summary><pre class="card-json">${esc(JSON.stringify(c, null, 1))}</pre></details>` +
      `<div class="muted">${(m.models || []).length} model(s) in the registry</div>`;
    if (lastPrediction) onPrediction(lastPrediction);
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
  renderNoProposal();
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
    ` · ${fmtTime(p.created)} · model ${esc(p.model_version || "–")}</div>` +
    `<div class="scroll"><table><thead><tr><th>setting</th><th class="num">current</th><th class="num">proposed</th><th>unit</th><th></th></tr></thead>` +
    `<tbody>${settings}</tbody></table></div>` +
    (pred ? `<div class="scroll"><table class="corrected"><thead><tr><th>corrected prediction</th><th class="num">now (±2σ)</th>` +
            `<th class="num">with the proposal (±2σ)</th><th class="num">target ± tolerance</th><th>unit</th></tr></thead>` +
            `<tbody>${pred}</tbody></table></div>` +
            `<p class="muted">Corrected: the model anchored at the measured value, its sensitivity scaled by the gain learnt ` +
            `from the line (docs/feedback.md). The raw model output is under "Prediction".</p>` : "") +
    `<div id="proposal-cell" class="muted">${cellText(p.id)}</div>` +
    (reasons ? `<div>reasons:</div><ul class="reasons">${reasons}</ul>` : "") +
    (p.approved_by ? `<div>decided by <b>${esc(p.approved_by)}</b> · ${fmtTime(p.updated)}</div>` : "") +
    (p.error ? `<div class="error">error: ${esc(p.error)}</div>` : "") +
    (p.realised ? `<div>realised: ${esc(JSON.stringify(p.realised))}</div>` : "") +
    (p.state === "proposed"
      ? `<div class="actions"><input id="proposal-comment" placeholder="comment (optional)" aria-label="comment (optional)" size="24">` +
        `<button type="button" id="approve" class="approve">Approve</button>` +
        `<button type="button" id="reject" class="reject">Reject</button></div>` : "");
  if (p.state === "proposed") {
    document.getElementById("approve").onclick = () => decide(p.id, "approve");
    document.getElementById("reject").onclick = () => decide(p.id, "reject");
  }
}

// the cell consequence of the proposal (GET /api/v1/cell/proposals/{id}: PyBaMM DFN at the current and the proposed
// setting, from the model's outputs); fetched once per proposal, shown when it arrives
const cellByProposal = new Map();  // id -> "loading" | {difference, current, proposed} | {error}
function cellText(id) {
  const c = cellByProposal.get(id);
  if (c === undefined) {
    cellByProposal.set(id, "loading");
    getJSON(`/api/v1/cell/proposals/${encodeURIComponent(id)}`)
      .then(r => cellByProposal.set(id, r), e => cellByProposal.set(id, {error: String(e && e.message || e)}))
      .then(() => { if (proposal && proposal.id === id) renderProposal(); });
    return "cell: computing the discharge at C/2 and 2C …";
  }
  if (c === "loading") return "cell: computing the discharge at C/2 and 2C …";
  if (c.error) return `cell: ${esc(c.error)}`;
  const parts = (c.current.discharges || []).map((d, i) => {
    const b = c.proposed.discharges[i];
    const diff = c.difference[`${d.c_rate}C`] || {};
    return `${fmt(d.c_rate)}C ${fmt(d.capacity_mAh_cm2)} → <b>${fmt(b.capacity_mAh_cm2)}</b> mAh/cm² ` +
      `(${diff.capacity_pct >= 0 ? "+" : ""}${fmt(diff.capacity_pct)} %)`;
  });
  return `<b>cell</b> (PyBaMM DFN, ${esc(c.current.parameter_set)}): ${parts.join(" · ")}`;
}

// why there is no (open) proposal: the feedback service's last decision for this line, in its words
function renderNoProposal() {
  const el = document.getElementById("no-proposal-reason");
  const open = proposal && proposal.state === "proposed";
  const f = status && status.feedback;
  let html = "";
  if (!open && feedback.enabled !== false && status) {
    if (!f) html = "<b>No proposal:</b> the feedback service is not enabled on this twin.";
    else {
      const d = lineId && f.decisions ? f.decisions[lineId] : null;
      if (!d) html = "<b>No proposal yet:</b> the feedback service has not decided for this line yet.";
      else if (!d.proposal_id || (proposal && proposal.id !== d.proposal_id)) {
        html = `<b>No proposal</b> (decision of ${fmtTime(d.ts)}):<ul>${(d.reasons || []).map(r => `<li>${esc(r)}</li>`).join("")}</ul>`;
      }
    }
  }
  const np = !open && status ? noPredictionReason() : null;  // no prediction, no proposal: said here too
  if (np && feedback.enabled !== false) html += `<div><b>No prediction:</b> ${esc(np)}</div>`;
  el.hidden = !html;
  el.innerHTML = html;
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
  scheduleDecorate();
}

function renderHistory() {
  const rows = [...proposals.values()].sort((a, b) => String(b.created).localeCompare(String(a.created))).slice(0, 20);
  document.querySelector("#proposal-history tbody").innerHTML = rows.map(p =>
    `<tr data-id="${esc(p.id)}"><td>${fmtTime(p.created)}</td><td class="state-${esc(p.state)}">${esc(p.state)}</td>` +
    `<td>${(p.settings || []).map(s => `${esc(s.parameter)} ${fmt(s.current)}→${fmt(s.proposed)}`).join(", ")}</td>` +
    `<td>${esc(p.approved_by || "")}</td></tr>`).join("");
}

async function loadProposals() {
  try {
    const [current, recent] = await Promise.all([getJSON("/api/v1/proposals/current"),
                                                 getJSON("/api/v1/proposals?limit=100")]);
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
      `<td><input name="target" type="number" step="any" aria-label="${esc(k)} target" value="${esc(shown(t.target, d.factor))}"></td>` +
      `<td><input name="tolerance" type="number" step="any" min="0" aria-label="${esc(k)} tolerance" value="${esc(shown(t.tolerance, d.factor))}"></td>` +
      `<td><input name="weight" type="number" step="any" min="0" aria-label="${esc(k)} weight" value="${esc(t.weight)}"></td>` +
      `<td class="unit">${esc(targetUnitLabel(d.unit))}</td></tr>`;
  }).join("");
  form.innerHTML = `<div class="scroll"><table><thead><tr><th>output</th><th>target</th><th>tolerance</th><th>weight</th><th>unit</th></tr></thead>` +
    `<tbody>${rows}</tbody></table></div><button type="submit" id="targets-save">save targets</button>`;
}

async function loadTargets() {
  try { targets = await getJSON("/api/v1/feedback/targets"); }
  catch (e) { targets = null; if (e.status !== 404) console.warn(e); }
  renderTargets();
  scheduleDecorate();
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
  try { targets = await writeJSON("PUT", "/api/v1/feedback/targets", body); renderTargets(); scheduleDecorate(); }
  catch (e) { showWriteError(e); }
}

// ---------------------------------------------------------------------------------------------
// export: the chosen tags over the range shown, through /api/v1/export (a download; the server streams it)
function plottedTags() {
  const t = [];
  for (const p of Object.values(PRED_PLOTS)) { if (p.measured) t.push(p.measured); t.push(p.predicted, p.predicted + "_std"); }
  t.push(...SETPOINTS, ...Object.values(SETPOINT_ACTUAL), ...savedPanels());
  return [...new Set(t)].filter(x => tagInfo[x]);
}

function renderExportTags() {
  const box = document.getElementById("export-tags");
  const checked = new Set(box.dataset.filled ? [...box.querySelectorAll("input:checked")].map(i => i.value) : plottedTags());
  const ids = Object.values(tagInfo).filter(t => t.value_type !== "string").map(t => t.id).sort();
  box.innerHTML = ids.map(i => `<label><input type="checkbox" value="${esc(i)}"${checked.has(i) ? " checked" : ""}> ${esc(i)}</label>`).join("");
  box.dataset.filled = "1";
}

function exportUrl(format) {
  const tags = [...document.querySelectorAll("#export-tags input:checked")].map(i => i.value).slice(0, 100);
  const b = isLive() ? computeBounds() : bounds;
  const q = new URLSearchParams();
  for (const t of tags) q.append("tags", t);
  q.set("start", new Date(b.start).toISOString());
  q.set("end", new Date(b.end).toISOString());
  q.set("format", format);
  if (lineId) q.set("line", lineId);
  return {url: "/api/v1/export?" + q.toString(), tags};
}

function exportData(format) {
  const {url, tags} = exportUrl(format);
  const box = document.getElementById("export-box");
  box.dataset.lastUrl = url;
  if (!tags.length) { box.dataset.error = "choose at least one tag"; return; }
  const a = document.createElement("a");
  a.href = url; a.download = "";
  document.body.appendChild(a); a.click(); a.remove();
}

// ---------------------------------------------------------------------------------------------
// health: per source (state, age of the newest value, gaps) from the stream's status events
function sourceLevel(s) {
  if (s.state === "disconnected" || s.state === "failed") return ["down", s.state];
  if (s.state === "finished") return ["idle", "finished"];
  if (s.state === "connected" && s.last_delivery_age_s == null) return ["warn", "connected, no value yet"];
  if (s.state === "connected" && s.last_delivery_age_s > STALE_S) return ["warn", "stale"];
  return ["ok", s.state];
}

function age(s) {
  if (s == null) return "–";
  return s < 60 ? `${s.toFixed(1)} s` : s < 3600 ? `${(s / 60).toFixed(0)} min` : s < 172800 ? `${(s / 3600).toFixed(1)} h` : `${(s / 86400).toFixed(0)} d`;
}

let sourcesHtml = "";
function renderHealth() {
  const badge = document.getElementById("live");
  const list = document.getElementById("sources");
  const st = status;
  let level = "ok", text = "live", why = [];
  if (!streamOpen) { level = "down"; text = everOpened ? "reconnecting" : "offline"; why.push("live stream to the twin is down"); }
  else if (!st || Date.now() - lastStatusAt > 4 * STATUS_S * 1000) { level = "warn"; text = "no status"; why.push("no status from the twin for a while"); }
  if (st) {
    const srcs = st.sources || [];
    const html = srcs.map(s => {
      const [lv, word] = sourceLevel(s);
      const gaps = s.gaps != null ? `${s.gaps} gap${s.gaps === 1 ? "" : "s"}` : "gaps not tracked";
      return `<li data-source="${esc(s.name)}" data-state="${esc(s.state)}" data-level="${lv}"` +
        ` title="${esc(s.last_error || "")}">${esc(s.name)} (${esc(s.kind)}): <b>${esc(word)}</b> · ` +
        (s.last_delivery_age_s == null ? "no value yet" : `newest value ${esc(age(s.last_delivery_age_s))} ago`) +
        ` · ${esc(gaps)} · ${s.reconnects ?? 0} reconnects</li>`;
    }).join("") + (st.problems || []).filter(p => !p.startsWith("source ")).map(p => `<li class="problem" data-level="warn">${esc(p)}</li>`).join("");
    if (html !== sourcesHtml) { list.innerHTML = html; sourcesHtml = html; }  // no flicker under the pointer
    if (streamOpen) {
      const lv = srcs.map(s => sourceLevel(s)[0]);
      if (lv.includes("down")) { level = "down"; text = "source down"; }
      else if ((st.problems || []).some(p => p.startsWith("store"))) { level = "down"; text = "store failing"; }
      else if (st.status !== "ok") { level = level === "down" ? level : "warn"; text = "degraded"; }
      else if (lv.includes("warn") && level === "ok") { level = "warn"; text = "stale"; }
      why.push(...(st.problems || []));
      for (const s of srcs) if (sourceLevel(s)[0] === "warn") why.push(`source ${s.name}: ${sourceLevel(s)[1]}`);
    }
  }
  badge.textContent = text;
  badge.dataset.level = level;
  badge.className = "badge " + (level === "ok" ? "on" : level === "warn" ? "warn" : "off");
  badge.title = why.length ? why.join("\n") : "the live stream is up and every source is connected and fresh";
}

function onStatus(st) {
  const p = st.predictor;
  if (p && prevPredictor) predictionSkipping = p.skipped > prevPredictor.skipped && p.count === prevPredictor.count;
  prevPredictor = p;
  status = st;
  lastStatusAt = Date.now();
  renderHealth();
  renderNoPrediction();
  renderNoProposal();
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
      `<tr><td class="muted">${fmtTime(d.received)}</td><td>${esc(d.source)}</td><td>${esc(d.address || "")}</td>` +
      `<td>${esc(d.reason_code)}</td><td title="${esc(d.payload || "")}">${esc(d.reason)}</td></tr>`).join("");
  } catch (e) { console.warn(e); }
}

// ---------------------------------------------------------------------------------------------
// live stream
function connect() {
  const es = new EventSource(`/api/v1/stream?status_s=${STATUS_S}`);
  es.onopen = async () => {
    streamOpen = true;
    renderHealth();
    if (everOpened) {  // reconnected: catch up on what the stream could not deliver meanwhile
      for (const s of await getJSON(withLine("/api/v1/latest"))) latest[s.tag] = s;
      scheduleRender(); loadProposals(); refreshDeadLetters();
      if (isLive()) loadRange();
    }
    everOpened = true;
  };
  es.onerror = () => { streamOpen = false; renderHealth(); };
  es.addEventListener("samples", e => onSamples(JSON.parse(e.data)));
  es.addEventListener("prediction", e => onPrediction(JSON.parse(e.data).prediction));
  es.addEventListener("proposal", e => onProposal(JSON.parse(e.data).proposal));
  es.addEventListener("status", e => onStatus(JSON.parse(e.data)));
  es.addEventListener("dead_letters", deadLettersArrived);
  es.addEventListener("targets", e => {  // someone changed the targets
    const t = JSON.parse(e.data);
    if (document.activeElement && document.activeElement.closest("#targets")) return;  // not under the user's cursor
    targets = {recipe: t.recipe, targets: t.targets}; renderTargets(); scheduleDecorate();
  });
  setInterval(renderHealth, 1000);  // a status that stops arriving turns the badge amber (no request)
}

async function main() {
  renderTokenButton();
  setupToolbar();
  document.getElementById("token-button").onclick = () => askToken("");
  document.getElementById("dl-refresh").onclick = refreshDeadLetters;
  document.getElementById("targets").addEventListener("submit", saveTargets);
  for (const t of await getJSON("/api/v1/tags")) tagInfo[t.id] = t;
  renderPanelChoices();
  const all = await getJSON("/api/v1/latest");
  lines = [...new Set(all.map(s => s.line_id))].sort();
  if (!lineId && lines.length) lineId = lines[0];
  for (const s of all) if (s.line_id === lineId) latest[s.tag] = s;
  renderLines();
  const cal = Object.values(latest).find(s => stepOf(s.tag) === "calendering" && s.roll_id);
  if (cal) setRoll(cal.roll_id);
  renderLatest();
  connect();  // events arriving before the plots exist only update the tables
  await Promise.all([loadRolls(), loadProposals(), loadTargets()]);
  if (!feedback.enabled) renderTargets();
  // a twin without recent data (a replayed run): the default range is the newest stored hour
  const newest = Math.max(0, ...Object.values(latest).map(s => parseMs(s.ts)).filter(isFinite));
  if (newest && Date.now() - newest > 30 * 60000) {
    range = {kind: "custom", start: newest - 3600000, end: newest + 1000};
    document.getElementById("range-select").value = "custom";
    document.getElementById("custom-range").hidden = false;
    document.getElementById("range-start").value = wallString(range.start).slice(0, 19).replace(" ", "T");
    document.getElementById("range-end").value = wallString(range.end).slice(0, 19).replace(" ", "T");
  }
  await loadRange();
  loadModel();
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
