// The dashboard's lab panel in a headless Chromium: the drift badge and alert lines, the comparison table, and an
// approval from the panel (the write token preset in the tab's sessionStorage, as the token dialog leaves it).
//
//   node drive_lab_panel.js '{"url": "http://127.0.0.1:PORT/", "token": "...", "chromium": "/usr/bin/chromium"}'
//
// The last stdout line is the result as one JSON object.
"use strict";
const path = require("path");
const {chromium} = require(path.join(__dirname, "..", "browser", "pw"));

const opts = JSON.parse(process.argv[2]);
const result = {page_errors: []};

async function main() {
  const browser = await chromium.launch({executablePath: opts.chromium || "/usr/bin/chromium",
                                         args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]});
  try {
    const page = await browser.newPage({viewport: {width: 1400, height: 1000}});
    page.on("pageerror", e => result.page_errors.push(String(e)));
    await page.addInitScript(t => sessionStorage.setItem("twin.token", t), opts.token);
    await page.goto(opts.url);
    await page.waitForSelector("#lab-comparison tbody tr", {timeout: 30000});
    result.badge = await page.textContent("#drift-badge");
    result.badge_hidden = await page.$eval("#drift-badge", b => b.hidden);
    result.alerts = await page.$$eval("#drift-alerts li", ls => ls.map(l => l.textContent));
    result.comparison = await page.$$eval("#lab-comparison tbody tr", rs => rs.map(r =>
      [...r.querySelectorAll("td")].map(td => td.textContent)));
    result.requests_before = await page.$$eval("#lab-requests tbody tr", rs => rs.map(r => r.textContent));
    await page.click('#lab-requests button[data-act="approve"]');
    await page.waitForFunction(() => [...document.querySelectorAll("#lab-requests tbody tr")]
      .some(r => r.textContent.includes("applied")), null, {timeout: 30000, polling: 200});
    result.requests_after = await page.$$eval("#lab-requests tbody tr", rs => rs.map(r => r.textContent));
    result.panel = await page.textContent("#lab-panel");
  } finally {
    await browser.close();
  }
}

main().then(() => console.log(JSON.stringify(result)))
  .catch(e => { result.fatal = String(e.stack || e); console.log(JSON.stringify(result)); process.exit(2); });
