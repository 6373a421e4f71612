// The screenshots of docs/dashboard.md: the dashboard at 1400, 768 and 360 px (full page), taken from a running
// twin (not a test; run it against `twin demo` after a few minutes, when there is history and a proposal):
//
//   twin demo --time-scale 30 --write-token T &      # wait ~5 minutes
//   node tests/browser/shoot_docs.js '{"url": "http://127.0.0.1:8000/", "outdir": "docs/img", "range": "last:15"}'
//
// Writes OUTDIR/dashboard-<width>.png; prints one JSON line (scroll width per width, files).
"use strict";
const path = require("path");
const {chromium} = require("./pw");

const opts = JSON.parse(process.argv[2]);

(async () => {
  const out = {};
  const browser = await chromium.launch({executablePath: opts.chromium || "/usr/bin/chromium",
                                         args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]});
  try {
    for (const width of opts.widths || [1400, 768, 360]) {
      const context = await browser.newContext({viewport: {width, height: 900}, timezoneId: opts.timezone || "Europe/Berlin"});
      const page = await context.newPage();
      await page.goto(opts.url);
      await page.waitForSelector('body[data-plots-ready="1"]', {timeout: 30000});
      if (opts.range) {
        await page.selectOption("#range-select", opts.range);
        await page.waitForFunction(() => document.body.dataset.plotsReady === "1", null, {timeout: 30000});
      }
      await page.waitForSelector("#prediction table", {timeout: 20000}).catch(() => {});
      await page.waitForTimeout(2500);
      const file = path.join(opts.outdir, `dashboard-${width}.png`);
      await page.screenshot({path: file, fullPage: true});
      out[width] = {file, scroll_width: await page.evaluate(() => document.documentElement.scrollWidth)};
      await context.close();
    }
  } finally {
    await browser.close();
  }
  console.log(JSON.stringify(out));
})();
