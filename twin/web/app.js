// Pilot-line twin dashboard: initial data from the query API, then live points from the SSE stream.
"use strict";
const PLOTS = {
  "plot-thickness": {title: "Thickness after calender (µm)", tags: ["calendering.thickness_after"]},
  "plot-porosity": {title: "Porosity, online (%)", tags: ["calendering.porosity_online"]},
  "plot-gap": {title: "Roll gap (µm)", tags: ["calendering.gap_setpoint", "calendering.gap_actual"]},
  "plot-load": {title: "Line load (N/mm)", tags: ["calendering.line_load"]},
};
const tagInfo = {};
const traceIndex = {};  // tag -> [plotId, index]
const latest = {};
let pointsReceived = 0;
window.twin = {pointsReceived: () => pointsReceived};

async function getJSON(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(url + ": " + r.status);
  return r.json();
}

function unitLabel(u) {
  const names = {um: "µm", degC: "°C", percent: "%", dimensionless: "", "N/mm": "N/mm", "m/min": "m/min"};
  if (u in names) return names[u];
  return u.replace(/\*\*2/g, "²").replace(/\*\*3/g, "³").replace(/\bum\b/g, "µm").replace(/degC/g, "°C");
}

function fmt(v) { return Math.abs(v) >= 1000 ? v.toFixed(0) : v.toPrecision(4); }

async function initPlots() {
  const end = new Date();
  const start = new Date(end.getTime() - 30 * 60 * 1000);
  for (const [id, p] of Object.entries(PLOTS)) {
    const traces = [];
    for (const [i, tag] of p.tags.entries()) {
      let xs = [], ys = [];
      try {
        const s = await getJSON(`/api/v1/series/${tag}?start=${start.toISOString()}&end=${end.toISOString()}&points=300`);
        xs = s.buckets.map(b => b.ts); ys = s.buckets.map(b => b.mean);
      } catch (e) { console.warn(e); }
      traces.push({x: xs, y: ys, name: tag.split(".")[1], mode: "lines+markers", marker: {size: 3},
                   line: {shape: tag.endsWith("setpoint") ? "hv" : "linear"}});
      traceIndex[tag] = [id, i];
    }
    Plotly.newPlot(id, traces, {title: {text: p.title, font: {size: 13}}, margin: {l: 50, r: 10, t: 30, b: 30},
      legend: {orientation: "h", y: -0.15}, xaxis: {type: "date"}}, {displayModeBar: false, responsive: true});
  }
}

function renderLatest() {
  const body = document.querySelector("#latest tbody");
  const rows = Object.values(latest).sort((a, b) => a.tag.localeCompare(b.tag));
  body.innerHTML = rows.map(s => {
    const t = tagInfo[s.tag] || {};
    const online = t.online === false ? '<span class="off-line" title="offline (lab)">offline</span>' : "";
    return `<tr><td>${s.tag}</td><td>${t.kind || ""}${t.role ? " · " + t.role : ""}</td>` +
      `<td class="num q${s.quality}">${fmt(s.value)}</td><td>${unitLabel(s.unit)}</td><td>${online}</td>` +
      `<td class="muted">${s.ts.slice(11, 19)}</td></tr>`;
  }).join("");
  const any = rows.find(s => s.roll_id);
  if (any) { document.getElementById("roll").textContent = any.roll_id; document.getElementById("line").textContent = any.line_id; }
  const w = latest["calendering.web_position"];
  if (w) document.getElementById("web").textContent = w.value.toFixed(1);
}

async function refreshDeadLetters() {
  try {
    const dl = await getJSON("/api/v1/dead-letters?limit=20");
    document.getElementById("dl-count").textContent = dl.length ? `(latest ${dl.length})` : "(none)";
    document.querySelector("#dead tbody").innerHTML = dl.map(d =>
      `<tr><td class="muted">${d.received.slice(11, 19)}</td><td>${d.address || ""}</td><td>${d.reason}</td></tr>`).join("");
  } catch (e) { console.warn(e); }
}

function onSamples(ev) {
  const bySlot = {};
  for (const s of ev.samples) {
    latest[s.tag] = s;
    const slot = traceIndex[s.tag];
    if (!slot) continue;
    const key = slot.join(":");
    (bySlot[key] = bySlot[key] || {slot, x: [], y: []});
    bySlot[key].x.push(s.ts); bySlot[key].y.push(s.value);
  }
  for (const {slot, x, y} of Object.values(bySlot)) {
    Plotly.extendTraces(slot[0], {x: [x], y: [y]}, [slot[1]], 2000);
    pointsReceived += x.length;
  }
  renderLatest();
}

function connect() {
  const badge = document.getElementById("live");
  const es = new EventSource("/api/v1/stream");
  es.onopen = () => { badge.textContent = "live"; badge.className = "badge on"; };
  es.onerror = () => { badge.textContent = "reconnecting"; badge.className = "badge off"; };
  es.addEventListener("samples", e => onSamples(JSON.parse(e.data)));
}

async function main() {
  for (const t of await getJSON("/api/v1/tags")) tagInfo[t.id] = t;
  for (const s of await getJSON("/api/v1/latest")) latest[s.tag] = s;
  renderLatest();
  await initPlots();
  connect();
  refreshDeadLetters();
  setInterval(refreshDeadLetters, 10000);
}
main();
