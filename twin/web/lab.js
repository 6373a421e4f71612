// The dashboard's lab panel (docs/lab.md): the drift alert of the active model, the comparison of the active
// and shadow models against the lab results (MAE, bias, ±2σ coverage, n per output), the promotion / rollback /
// retrain requests with approve and reject (write scope: the token dialog of app.js), and the newest lab results.
// Uses app.js's helpers (getJSON, writeJSON, esc, fmt, fmtTime, showWriteError); polls every 15 s.
"use strict";

const LAB_POLL_MS = 15000;

function labMetricCells(m) {
  if (!m || !m.n) return `<td colspan="4" class="muted">no lab results yet</td>`;
  const cov = m.coverage_2sigma == null ? "–" : `${Math.round(100 * m.coverage_2sigma)} %`;
  return `<td>${m.n}</td><td>${fmt(m.mae)}</td><td>${fmt(m.bias)}</td><td>${cov}</td>`;
}

function labComparisonTable(cmp) {
  const rows = [];
  for (const [version, v] of Object.entries(cmp.versions || {})) {
    for (const [out, m] of Object.entries(v.outputs || {})) {
      rows.push(`<tr class="${v.role}"><td title="${esc(v.kind)}">${esc(version)}</td><td>${esc(v.role)}</td>` +
                `<td>${esc(out)}</td>${labMetricCells(m)}</tr>`);
    }
  }
  if (!rows.length) return `<p class="muted">no model to compare</p>`;
  const note = cmp.excluded_lab_ids && cmp.excluded_lab_ids.length
    ? `<p class="muted">${cmp.excluded_lab_ids.length} lab results left out: a candidate was fitted on them</p>` : "";
  return `<div class="scroll"><table id="lab-comparison"><thead><tr><th>version</th><th>role</th><th>output</th>` +
         `<th>n</th><th>MAE</th><th>bias</th><th>±2σ</th></tr></thead><tbody>${rows.join("")}</tbody></table></div>${note}`;
}

function labRequestRow(r) {
  const open = r.state === "proposed";
  const what = r.kind === "promote" ? `promote ${esc(r.version)}` : r.kind === "rollback" ? `roll back to ${esc(r.version)}`
    : `retrain ${esc(r.from_version)}${r.version ? " → " + esc(r.version) : ""}`;
  const buttons = open ? `<button type="button" data-req="${esc(r.id)}" data-act="approve">approve</button> ` +
                         `<button type="button" data-req="${esc(r.id)}" data-act="reject">reject</button>` : "";
  const who = r.decided_by ? `${esc(r.created_by)} → ${esc(r.decided_by)}` : esc(r.created_by);
  return `<tr><td>${fmtTime(r.created_ts_ns / 1e6)}</td><td>${what}</td><td>${esc(r.state)}</td><td>${who}</td>` +
         `<td title="${esc(r.reason || "")}">${buttons}</td></tr>`;
}

async function labRefresh() {
  const panel = document.getElementById("lab-panel");
  const badge = document.getElementById("drift-badge");
  if (!panel) return;
  let status;
  try {
    status = await getJSON("/api/v1/lab/drift");
  } catch (err) {
    panel.className = "card muted";
    panel.textContent = err && err.status === 404 ? "lab results are not enabled ([lab] enabled = true)" : String(err);
    badge.hidden = true;
    return;
  }
  const [cmp, reqs, results] = await Promise.all([
    getJSON("/api/v1/models/comparison"), getJSON("/api/v1/models/requests?limit=10"),
    getJSON("/api/v1/lab/results?limit=5")]);
  badge.hidden = false;
  badge.className = "badge " + (status.drift_alert ? "off" : "on");
  badge.textContent = status.drift_alert ? "drift" : "no drift";
  const alerts = (status.alerts || []).map(a =>
    `<li>${esc(a.output)}: ${a.outside_2sigma} of ${a.n} lab results outside ±2σ (calibrated coverage ` +
    `${Math.round(100 * a.calibrated_coverage)} %, p = ${fmt(a.p_value)})</li>`).join("");
  const candidates = (status.candidates || []).map(v =>
    `<button type="button" data-promote="${esc(v)}">propose promotion of ${esc(v)}</button>`).join(" ");
  const res = results.map(r => `<tr><td>${esc(r.roll_id)}</td><td>${fmt(r.start_m)}–${fmt(r.end_m)} m</td>` +
    `<td title="${esc(r.parameter)}">${esc(r.quantity)}</td><td>${fmt(r.value)} ${esc(r.unit)}</td></tr>`).join("");
  panel.className = "card";
  panel.innerHTML =
    `<p>active <b>${esc(status.active || "–")}</b>; shadow: ${esc((status.candidates || []).join(", ") || "none")}</p>` +
    (alerts ? `<ul class="error" id="drift-alerts">${alerts}</ul>` : "") +
    labComparisonTable(cmp) +
    `<p>${candidates} <button type="button" data-retrain="1">propose retrain</button></p>` +
    `<div class="scroll"><table id="lab-requests"><thead><tr><th>created</th><th>request</th><th>state</th><th>by</th>` +
    `<th></th></tr></thead><tbody>${reqs.map(labRequestRow).join("")}</tbody></table></div>` +
    `<details><summary>newest lab results (${status.counts ? status.counts.stored : 0} stored this run)</summary>` +
    `<table><tbody>${res}</tbody></table></details>`;
}

async function labAct(fn) {
  showWriteError(null);
  try { await fn(); } catch (err) { showWriteError(err); }
  labRefresh().catch(() => {});
}

document.addEventListener("click", ev => {
  const t = ev.target;
  if (!(t instanceof HTMLElement) || !document.getElementById("lab-panel")?.contains(t)) return;
  if (t.dataset.req) {
    labAct(() => writeJSON("POST", `/api/v1/models/requests/${encodeURIComponent(t.dataset.req)}/${t.dataset.act}`, {}));
  } else if (t.dataset.promote) {
    labAct(() => writeJSON("POST", "/api/v1/models/requests",
                           {kind: "promote", version: t.dataset.promote, reason: "from the dashboard"}));
  } else if (t.dataset.retrain) {
    labAct(() => writeJSON("POST", "/api/v1/models/requests", {kind: "retrain", reason: "from the dashboard"}));
  }
});

labRefresh().catch(() => {});
setInterval(() => labRefresh().catch(() => {}), LAB_POLL_MS);
