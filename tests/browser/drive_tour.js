// Drives the dashboard through the acceptance points of issue #22 in one headless Chromium (Debian's
// /usr/bin/chromium through playwright-core) and prints one JSON object with what it saw; the pytest side
// (test_dashboard_issue22.py) asserts. Every request of the browser context is recorded; one to another host
// than the twin's is recorded and aborted.
//
//   node drive_tour.js '{"base": "http://127.0.0.1:PORT", "timezone": "Asia/Kolkata", "outdir": "/tmp/x",
//                        "panel_tag": "drying.zone1_temperature", "replay_line": "pilot-rec",
//                        "custom_start": "2026-11-02T12:20:00", "custom_end": "2026-11-02T12:30:00"}'
//
// Steps: the live line (plots, status, the reason for no proposal, explanations); an operator panel added
// (kept over a reload); layout at 1400, 768 and 360 px (scroll width, every panel's box, a screenshot each);
// keyboard focus order; the replayed line browsed by roll and by a custom range; CSV and Parquet export of
// the custom range through the page's buttons; the panel removed again.
"use strict";
const fs = require("fs");
const path = require("path");

const {chromium} = require("./pw");

const opts = JSON.parse(process.argv[2]);
const base = new URL(opts.base);
const result = {page_errors: [], console_errors: [], requests: [], seen: [], blocked: [], failed: [], steps: {}};
const sleep = ms => new Promise(r => setTimeout(r, ms));

const PANEL_SELECTORS = ["header", "#toolbar", "#conventions", ".plot", ".side", ".values", "#proposal",
                         "#steps .step", "#add-panel", "footer"];

async function ready(page) {
  await page.waitForSelector('body[data-plots-ready="1"]', {timeout: 30000});
}

async function plotted(page) {
  return page.evaluate(() => Object.fromEntries([...document.querySelectorAll(".plot")].map(gd =>
    [gd.id, (gd.data || []).map(t => {
      const xs = Array.from(t.x || []);
      return {name: t.name, points: xs.length, finite_y: Array.from(t.y || []).filter(Number.isFinite).length,
              x_min: xs.length ? xs.reduce((a, b) => a < b ? a : b) : null,
              x_max: xs.length ? xs.reduce((a, b) => a > b ? a : b) : null};
    })])));
}

async function layout(page, width) {
  await page.setViewportSize({width, height: 900});
  await sleep(300);
  // plotly's responsive resize: until every plot's svg fits its box again (then the measurement below)
  await page.waitForFunction(() => [...document.querySelectorAll(".plot")].every(gd => {
    const s = gd.querySelector("svg.main-svg");
    return s && Math.abs(s.getBoundingClientRect().width - gd.getBoundingClientRect().width) <= 1;
  }), null, {timeout: 10000, polling: 100}).catch(() => {});
  await sleep(300);
  const out = await page.evaluate(sels => {
    const boxes = [];
    for (const sel of sels) {
      document.querySelectorAll(sel).forEach((el, i) => {
        const r = el.getBoundingClientRect();
        boxes.push({sel, i, id: el.id || "", left: r.left, right: r.right, width: r.width, height: r.height});
      });
    }
    const svgs = [...document.querySelectorAll(".plot")].map(gd => {
      const s = gd.querySelector("svg.main-svg");
      return {id: gd.id, plot: gd.getBoundingClientRect().width, svg: s ? s.getBoundingClientRect().width : null};
    });
    return {scroll_width: document.documentElement.scrollWidth, body_scroll_width: document.body.scrollWidth,
            inner_width: window.innerWidth, boxes, svgs};
  }, PANEL_SELECTORS);
  const shot = path.join(opts.outdir, `dashboard-${width}.png`);
  await page.screenshot({path: shot, fullPage: true});
  out.screenshot = shot;
  return out;
}

async function chooseRoll(page, roll) {
  await page.selectOption("#range-select", "roll");
  const value = await page.$$eval("#roll-select option", (os, r) => {
    const o = os.find(x => x.textContent.startsWith(r + " "));
    return o ? o.value : null;
  }, roll);
  if (value === null) throw new Error(`roll ${roll} is not offered: ` + await page.textContent("#roll-select"));
  await page.selectOption("#roll-select", value);
  await page.waitForFunction(r => document.getElementById("range-label").textContent.includes("roll " + r) &&
                                  document.body.dataset.plotsReady === "1", roll, {timeout: 30000});
}

async function main() {
  const browser = await chromium.launch({executablePath: opts.chromium || "/usr/bin/chromium",
                                         args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]});
  try {
    const context = await browser.newContext({viewport: {width: 1400, height: 900}, timezoneId: opts.timezone,
                                              acceptDownloads: true, serviceWorkers: "block"});
    await context.route("**/*", r => {
      const u = new URL(r.request().url());
      result.requests.push({url: r.request().url(), type: r.request().resourceType()});
      if (u.protocol === "data:" || u.protocol === "blob:" || u.host === base.host) return r.continue();
      result.blocked.push(r.request().url());
      return r.abort();
    });
    // also every request event (downloads are not routed; they are seen here)
    context.on("request", r => result.seen.push({url: r.url(), type: r.resourceType()}));
    const page = await context.newPage();
    page.setDefaultTimeout(30000);
    page.on("pageerror", e => result.page_errors.push(String(e)));
    page.on("console", m => { if (m.type() === "error") result.console_errors.push(m.text()); });
    page.on("requestfailed", r => result.failed.push({url: r.url(), error: (r.failure() || {}).errorText}));

    // 1. the live line: plots with points, the sources in the header, the reason for no proposal
    const s1 = result.steps.live = {};
    const t0 = Date.now();
    await page.goto(opts.base + "/");
    await ready(page);
    s1.ready_s = (Date.now() - t0) / 1000;
    await page.waitForFunction(() => {
      const gd = document.getElementById("plot-porosity");
      const m = (gd.data || []).find(t => t.name === "measured");
      return m && m.x.length > 0 && document.querySelectorAll("#sources li[data-source]").length >= 2;
    }, null, {timeout: 30000});
    await page.waitForSelector('#no-proposal-reason:not([hidden]), #proposal[data-state="proposed"]', {timeout: 20000});
    s1.proposal_state = await page.getAttribute("#proposal", "data-state");
    s1.no_proposal_visible = await page.isVisible("#no-proposal-reason");
    // the text and the status it was made from, read together (a status event arrives every 2 s)
    const snap = await page.evaluate(() => ({text: document.getElementById("no-proposal-reason").textContent,
                                             status: window.twin.status()}));
    s1.no_proposal_text = snap.text;
    s1.status_seen = snap.status;
    s1.no_proposal_box = await (await page.$("#proposal")).boundingBox();
    s1.no_proposal_reason_box = s1.no_proposal_visible ? await (await page.$("#no-proposal-reason")).boundingBox() : null;
    // what the feedback API says at the same moment
    const api = await context.request.get(opts.base + "/api/v1/feedback/status");
    s1.api_feedback_status = await api.json();
    s1.sources = await page.$$eval("#sources li[data-source]", ls => ls.map(l => ({source: l.dataset.source,
      state: l.dataset.state, level: l.dataset.level, text: l.textContent})));
    s1.badge = {text: await page.textContent("#live"), level: await page.getAttribute("#live", "data-level")};
    s1.range_label = await page.textContent("#range-label");
    s1.range = await page.evaluate(() => window.twin.range());
    s1.zone_options = await page.$$eval("#tz-select option", os => os.length);
    s1.zone_selected = await page.$eval("#tz-select", s => s.value);
    s1.coverage_badge = await page.textContent("#coverage");
    s1.coverage = await page.evaluate(() => window.twin.coverage());
    s1.ood_badge = await page.textContent("#ood");
    s1.conventions = await page.textContent("#conventions");
    await page.waitForSelector("#acceptance tbody tr", {timeout: 20000});
    s1.acceptance = await page.$$eval("#acceptance tbody tr", rs => rs.map(r => ({metric: r.dataset.metric, met: r.dataset.met,
      cells: [...r.querySelectorAll("td")].map(td => td.textContent.trim())})));
    s1.card_json_open = await page.$eval("#model details", d => d.open);
    await page.waitForSelector("#prediction table", {timeout: 20000});
    s1.prediction_head = await page.textContent("#prediction > div");
    s1.prediction_rows = await page.$$eval("#prediction tr[data-output]", rs => Object.fromEntries(rs.map(r =>
      [r.dataset.output, [...r.querySelectorAll("td")].map(td => td.textContent.trim())])));
    s1.plots = await plotted(page);
    s1.marks = await page.evaluate(() => window.twin.marks());

    // 2. an operator panel for any tag, kept in this browser (localStorage) over a reload
    const s2 = result.steps.panel = {};
    await page.selectOption("#panel-tag", opts.panel_tag);
    await page.click("#add-panel button[type=submit]");
    const panelSel = `.panel[data-tag="${opts.panel_tag}"] .plot`;
    const panelPoints = () => page.$eval(panelSel, gd => ((gd.data || [])[2] || {x: []}).x.length).catch(() => -1);
    await page.waitForFunction(sel => { const gd = document.querySelector(sel); return gd && gd.data && gd.data[2].x.length > 0; },
                               panelSel, {timeout: 30000});
    s2.points_added = await panelPoints();
    await page.reload();
    await ready(page);
    await page.waitForFunction(sel => { const gd = document.querySelector(sel); return gd && gd.data && gd.data[2].x.length > 0; },
                               panelSel, {timeout: 30000}).catch(() => {});
    s2.points_after_reload = await panelPoints();
    s2.stored = await page.evaluate(() => localStorage.getItem("twin.panels"));
    s2.offered = await page.$$eval("#panel-tag option", os => os.length);

    // 3. layout at three widths: no horizontal scrolling, every panel inside the viewport; screenshots
    result.steps.layout = {};
    for (const w of [1400, 768, 360]) result.steps.layout[w] = await layout(page, w);
    await page.setViewportSize({width: 1400, height: 900});
    await sleep(500);

    // 4. keyboard: Tab through the page from the top; what gets the focus, and whether it shows
    const s4 = result.steps.keyboard = {focus: []};
    await page.evaluate(() => { window.scrollTo(0, 0); document.activeElement && document.activeElement.blur(); });
    for (let i = 0; i < 80; i++) {  // once round the page: until the focus leaves it (back to the body)
      await page.keyboard.press("Tab");
      const f = await page.evaluate(() => {
        const e = document.activeElement, cs = getComputedStyle(e);
        return {tag: e.tagName.toLowerCase(), id: e.id, text: (e.textContent || "").trim().slice(0, 30),
                outline: cs.outlineStyle, outline_width: parseFloat(cs.outlineWidth) || 0};
      });
      if (f.tag === "body") { s4.wrapped = true; break; }
      s4.focus.push(f);
    }
    // the range picker works from the keyboard: focus it, choose "last 1 h" with the arrow key
    await page.focus("#range-select");
    await page.keyboard.press("ArrowDown");
    await page.waitForFunction(() => document.getElementById("range-label").textContent.startsWith("last 1 h") &&
                               document.body.dataset.plotsReady === "1", null, {timeout: 20000}).catch(() => {});
    s4.range_after_key = await page.textContent("#range-label");
    s4.clickable_divs = await page.$$eval("div[onclick], span[onclick], div[role=button]", es => es.length);

    // a history range of the live line (20 to 10 minutes ago) does not follow the stream
    const s4b = result.steps.history = {};
    const local = ms => new Date(ms).toLocaleString("sv-SE", {timeZone: opts.timezone}).replace(" ", "T");
    await page.selectOption("#range-select", "custom");
    const now = Math.floor(Date.now() / 1000) * 1000;
    await page.fill("#range-start", local(now - 20 * 60000));
    await page.fill("#range-end", local(now - 10 * 60000));
    await page.click("#range-apply");
    await page.waitForFunction(() => document.getElementById("range-label").textContent.startsWith("custom") &&
                               document.body.dataset.plotsReady === "1", null, {timeout: 30000});
    s4b.label = await page.textContent("#range-label");
    s4b.range = await page.evaluate(() => window.twin.range());
    s4b.points_before = await plotted(page);
    s4b.stream_before = await page.evaluate(() => window.twin.streamPoints());
    await sleep(3000);
    s4b.stream_after = await page.evaluate(() => window.twin.streamPoints());
    s4b.points_after = await plotted(page);

    // 5. the replayed line, browsed by its rolls and by a custom range (its times are in the past)
    const s5 = result.steps.replay = {};
    await page.goto(opts.base + "/?line=" + encodeURIComponent(opts.replay_line));
    await ready(page);
    s5.lines = await page.$$eval("#line-select option", os => os.map(o => o.value));
    s5.line_selected = await page.$eval("#line-select", s => s.value);
    s5.default_label = await page.textContent("#range-label");
    s5.rolls_offered = await page.$$eval("#roll-select option", os => os.map(o => o.textContent));
    await page.waitForSelector("#no-prediction-reason:not([hidden])", {timeout: 10000}).catch(() => {});
    s5.no_prediction = await page.isVisible("#no-prediction-reason") ? await page.textContent("#no-prediction-reason") : null;
    s5.no_proposal = await page.isVisible("#no-proposal-reason") ? await page.textContent("#no-proposal-reason") : null;
    s5.rolls = {};
    for (const roll of opts.rolls) {
      await chooseRoll(page, roll);
      s5.rolls[roll] = {label: await page.textContent("#range-label"), range: await page.evaluate(() => window.twin.range()),
                        plots: await plotted(page), marks: await page.evaluate(() => window.twin.marks())};
    }
    await page.selectOption("#range-select", "custom");
    await page.fill("#range-start", opts.custom_start);
    await page.fill("#range-end", opts.custom_end);
    await page.click("#range-apply");
    await page.waitForFunction(() => document.getElementById("range-label").textContent.startsWith("custom") &&
                               document.body.dataset.plotsReady === "1", null, {timeout: 30000});
    s5.custom = {label: await page.textContent("#range-label"), range: await page.evaluate(() => window.twin.range()),
                 plots: await plotted(page), marks: await page.evaluate(() => window.twin.marks())};
    await page.screenshot({path: path.join(opts.outdir, "dashboard-replay-1400.png"), fullPage: false});

    // 6. export the custom range through the page's buttons (CSV and Parquet)
    const s6 = result.steps.export = {};
    await page.click("#export-box summary");
    s6.checked = await page.$$eval("#export-tags input:checked", is => is.map(i => i.value));
    for (const fmt of ["csv", "parquet"]) {
      const [dl] = await Promise.all([page.waitForEvent("download", {timeout: 60000}), page.click("#export-" + fmt)]);
      const file = path.join(opts.outdir, "export." + fmt);
      await dl.saveAs(file);
      s6[fmt] = {url: dl.url(), file, failure: await dl.failure(), bytes: fs.statSync(file).size,
                 suggested: dl.suggestedFilename()};
    }

    // 7. the panel removed again (and gone from localStorage)
    await page.goto(opts.base + "/");
    await ready(page);
    await page.click(`.panel[data-tag="${opts.panel_tag}"] button.remove`);
    s2.after_remove = {panels: await page.$$eval(".panel", ps => ps.length),
                       stored: await page.evaluate(() => localStorage.getItem("twin.panels"))};
    await context.close();
  } finally {
    await browser.close();
  }
}

main().then(() => console.log(JSON.stringify(result)))
  .catch(e => { result.fatal = String(e.stack || e); console.log(JSON.stringify(result)); process.exit(2); });
