// Drives the dashboard in a real headless Chromium (Debian's /usr/bin/chromium through playwright-core;
// no browser download) and prints one JSON object with what it observed. The pytest side asserts.
//
//   node drive_dashboard.js '{"url": "http://127.0.0.1:PORT/", "token": "...", "screenshot": "/tmp/x.png"}'
//
// Steps: load the page; wait for plotted points; watch for a new point from the live stream (and
// record every API request the page makes meanwhile: there must be none, updates come only through
// the stream); wait for an open proposal, click Approve (the page has no token yet, so the API answers
// 401 and the page opens its token dialog), enter the token, and wait for the proposal's state on the
// page to change; take a full-page screenshot.
"use strict";

const {chromium} = require("./pw");

const opts = JSON.parse(process.argv[2]);
const result = {console_errors: [], page_errors: []};
const sleep = ms => new Promise(r => setTimeout(r, ms));
const MEASURED = ["plot-porosity", "plot-thickness"];

async function measuredPoints(page) {
  return page.evaluate(ids => Object.fromEntries(ids.map(id => {
    const gd = document.getElementById(id);
    const tr = (gd.data || []).find(t => t.name === "measured");
    return [id, tr ? tr.x.length : 0];
  })), MEASURED);
}

async function plotData(page) {
  // straight from the plotly graph divs: trace name, number of x values and of finite y values
  return page.evaluate(() => Object.fromEntries([...document.querySelectorAll(".plot")].map(gd =>
    [gd.id, (gd.data || []).map(t => ({name: t.name, x: t.x.length,
                                         finite_y: Array.from(t.y).filter(v => Number.isFinite(v)).length}))])));
}

// mode "targets": read the targets table (units shown), save a porosity target in % through the form (401 ->
// token dialog -> token), then try a refused one (outside the physical range) and report what the page showed
async function targetsCase(page) {
  const t = {};
  result.targets = t;
  const puts = [];
  page.on("request", r => { if (r.method() === "PUT") puts.push({url: r.url(), body: r.postData()}); });
  await page.goto(opts.url);
  await page.waitForSelector('#targets tr[data-target="porosity"]', {timeout: 60000});
  const table = () => page.$$eval("#targets tr[data-target]", rows => Object.fromEntries(rows.map(r =>
    [r.dataset.target, {unit_shown: r.querySelector("td.unit").textContent, unit_sent: r.dataset.unit,
                        target: r.querySelector("input[name=target]").value,
                        tolerance: r.querySelector("input[name=tolerance]").value}])));
  t.header = await page.$$eval("#targets thead th", ths => ths.map(h => h.textContent));
  t.before = await table();
  const row = '#targets tr[data-target="porosity"]';
  await page.fill(`${row} input[name=target]`, String(opts.porosity_percent));
  await page.fill(`${row} input[name=tolerance]`, String(opts.tolerance_percent));
  let resp = page.waitForResponse(r => r.request().method() === "PUT" && r.status() !== 401, {timeout: 45000});
  await page.click("#targets-save");
  await page.waitForSelector("#token-dialog[open]", {timeout: 20000});
  t.dialog_reason = await page.textContent("#token-reason");
  await page.fill("#token-input", opts.token);
  await page.click("#token-ok");
  t.put_status = (await resp).status();
  await page.waitForFunction(v => {
    const i = document.querySelector('#targets tr[data-target="porosity"] input[name=target]');
    return i && i.value === String(v);
  }, opts.porosity_percent, {timeout: 30000}).catch(() => {});
  t.after = await table();
  t.puts = puts.map(p => p.body);
  // refused: porosity 300 % is outside (0, 1)
  await page.fill(`${row} input[name=target]`, "300");
  resp = page.waitForResponse(r => r.request().method() === "PUT", {timeout: 45000});
  await page.click("#targets-save");
  t.refused_status = (await resp).status();
  await page.waitForSelector("#write-error:not([hidden])", {timeout: 20000});
  t.refused_error = await page.textContent("#write-error");
}

async function main() {
  const browser = await chromium.launch({executablePath: opts.chromium || "/usr/bin/chromium",
                                         args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]});
  if (opts.mode === "targets") {
    try {
      const page = await browser.newPage({viewport: {width: 1400, height: 1000}});
      page.setDefaultTimeout(20000);
      page.on("pageerror", e => result.page_errors.push(String(e)));
      await targetsCase(page);
    } finally {
      await browser.close();
    }
    return;
  }
  try {
    const page = await browser.newPage({viewport: {width: 1400, height: 1000}});
    page.setDefaultTimeout(20000);
    page.on("console", m => { if (m.type() === "error") result.console_errors.push(m.text()); });
    page.on("pageerror", e => result.page_errors.push(String(e)));
    const requests = [];
    page.on("request", r => requests.push({t: Date.now(), url: r.url(), method: r.method()}));

    const t0 = Date.now();
    await page.goto(opts.url);
    await page.waitForSelector('body[data-plots-ready="1"]');
    result.plots_ready_s = (Date.now() - t0) / 1000;

    // 1. plots with data points (history from the query API or first live points)
    let pts = await measuredPoints(page);
    const until = Date.now() + 15000;
    while (MEASURED.some(id => pts[id] === 0) && Date.now() < until) { await sleep(200); pts = await measuredPoints(page); }
    result.initial_points = pts;
    result.plot_data = await plotData(page);

    // 2. a new point through the live stream within 5 s
    // the plotted points and the stream's count read together (a flush between two reads would pair a
    // count from after it with points from before it)
    const snapshot = () => page.evaluate(ids => ({points: Object.fromEntries(ids.map(id => {
      const tr = (document.getElementById(id).data || []).find(t => t.name === "measured");
      return [id, tr ? tr.x.length : 0];
    })), stream: window.twin.streamPoints()}), MEASURED);
    const first = await snapshot();
    const before = first.points, streamedBefore = first.stream;
    const tLive = Date.now();
    let last = first, after = before, arrived = null;
    while (Date.now() - tLive < 8000) {
      last = await snapshot();
      after = last.points;
      if (MEASURED.every(id => after[id] > before[id])) { arrived = (Date.now() - tLive) / 1000; break; }
      await sleep(100);
    }
    result.live = {before, after, arrived_after_s: arrived,
                   streamed_before: streamedBefore,
                   streamed_after: last.stream,
                   api_requests_meanwhile: requests.filter(r => r.t >= tLive && r.url.includes("/api/")).map(r => r.url)};

    // 3. approve the open proposal through the page
    const prop = {};
    result.proposal = prop;
    const tProp = Date.now();
    try {
      await page.waitForSelector('#proposal[data-state="proposed"], #proposal[data-feedback="disabled"]',
                                 {timeout: (opts.proposal_timeout_s || 25) * 1000});
      prop.waited_s = (Date.now() - tProp) / 1000;
      const el = await page.$("#proposal");
      prop.feedback = await el.getAttribute("data-feedback");
      if (prop.feedback === "disabled") {
        prop.error = "page says: " + (await el.textContent());
      } else {
        prop.id = await el.getAttribute("data-proposal-id");
        prop.text_before = (await el.textContent()).slice(0, 400);
        prop.reasons_shown = await page.$$eval("#proposal ul.reasons li", els => els.length);
        prop.approve_buttons = await page.$$eval("#proposal button#approve", els => els.length);
        // the cell consequence of the proposal (PyBaMM, GET /api/v1/cell/proposals/{id}), shown in the proposal
        await page.waitForFunction(() => {
          const c = document.getElementById("proposal-cell");
          return c && (c.textContent.includes("mAh/cm²") || c.textContent.startsWith("cell: ") &&
                       !c.textContent.includes("computing"));
        }, null, {timeout: 30000}).catch(() => {});
        prop.cell_text = await page.textContent("#proposal-cell").catch(() => null);
        const reqStart = Date.now();
        await page.click("#approve");
        await page.waitForSelector("#token-dialog[open]", {timeout: 5000});
        prop.dialog_reason = await page.textContent("#token-reason");
        await page.fill("#token-input", opts.token);
        await page.click("#token-ok");
        await page.waitForFunction(id => {
          const e = document.getElementById("proposal"), err = document.getElementById("write-error");
          return (e.dataset.proposalId === id && e.dataset.state !== "proposed") || !err.hidden;
        }, prop.id, {timeout: 15000});
        prop.state_after = await page.getAttribute("#proposal", "data-state");
        prop.id_after = await page.getAttribute("#proposal", "data-proposal-id");
        prop.write_error = await page.evaluate(() => {
          const err = document.getElementById("write-error"); return err.hidden ? null : err.textContent; });
        prop.token_stored = await page.evaluate(() => sessionStorage.getItem("twin.token") !== null);
        prop.writes = requests.filter(r => r.t >= reqStart && r.method === "POST").map(r => r.url);
      }
    } catch (e) {
      prop.error = String(e).split("\n")[0];
      prop.page_text = ((await page.textContent("#proposal").catch(() => "")) || "").slice(0, 300);
    }

    // the decided proposal marked on the plots (issue #22)
    await page.waitForFunction(() => (window.twin.marks()["plot-setpoints"] || []).some(
      m => m === "proposal:approved" || m === "proposal:applied"), null, {timeout: 8000}).catch(() => {});
    result.marks_end = await page.evaluate(() => window.twin.marks && window.twin.marks());

    // the plots and the domain badge once predictions have had time to arrive
    result.plot_data_end = await plotData(page);
    result.ood_badge = await page.textContent("#ood");

    // 4. screenshot, and where the plots are on it (for the non-blank check of a plot region)
    await page.screenshot({path: opts.screenshot, fullPage: true});
    result.screenshot = opts.screenshot;
    result.plot_boxes = {};
    for (const id of MEASURED) result.plot_boxes[id] = await (await page.$("#" + id)).boundingBox();
  } finally {
    await browser.close();
  }
}

main().then(() => console.log(JSON.stringify(result)))
  .catch(e => { result.fatal = String(e.stack || e); console.log(JSON.stringify(result)); process.exit(2); });
