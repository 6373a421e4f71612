// Loads pages of the twin in a real headless Chromium (Debian's /usr/bin/chromium through playwright-core)
// and records every request each page makes, its workers' included. A request to any other host than the
// twin's is recorded and then aborted, so the pages are seen as a plant network without internet sees them.
// Prints one JSON object; tests/browser/test_offline_docs.py asserts.
//
//   node drive_offline.js '{"base": "http://127.0.0.1:PORT", "pages": ["/", "/docs", "/redoc"]}'
//
// Per page: every request (url, resource type), the failed ones, page errors, and what rendered:
// /docs: the Swagger UI title and number of operation blocks; /redoc: the ReDoc title and number of
// operation sections; other pages: the document title and body text length.
"use strict";

const {chromium} = require("./pw");

const opts = JSON.parse(process.argv[2]);
const base = new URL(opts.base);

async function visit(browser, route) {
  const out = {requests: [], blocked: [], failed: [], page_errors: [], console_errors: []};
  const context = await browser.newContext({viewport: {width: 1400, height: 1000}, serviceWorkers: "block"});
  // every request of the context (pages and their workers) passes here first
  await context.route("**/*", r => {
    const u = new URL(r.request().url());
    out.requests.push({url: r.request().url(), type: r.request().resourceType()});
    if (u.protocol === "data:" || u.protocol === "blob:" || u.host === base.host) return r.continue();
    out.blocked.push(r.request().url());
    return r.abort();
  });
  const page = await context.newPage();
  page.setDefaultTimeout(30000);
  page.on("requestfailed", r => out.failed.push({url: r.url(), error: (r.failure() || {}).errorText}));
  page.on("pageerror", e => out.page_errors.push(String(e)));
  page.on("console", m => { if (m.type() === "error") out.console_errors.push(m.text()); });
  try {
    const resp = await page.goto(base.origin + route, {waitUntil: "load"});
    out.status = resp ? resp.status() : null;
    if (route === "/docs") {
      await page.waitForSelector(".swagger-ui .opblock", {timeout: 30000});
      out.title = await page.$eval(".swagger-ui .info .title", e => e.textContent);
      out.operations = await page.$$eval(".swagger-ui .opblock", els => els.length);
    } else if (route === "/redoc") {
      await page.waitForSelector('[data-section-id^="operation/"]', {timeout: 30000});
      out.title = await page.$eval(".api-info h1", e => e.textContent);
      out.operations = await page.$$eval('[data-section-id^="operation/"]', els => els.length);
    } else {
      out.title = await page.title();
    }
    await page.waitForLoadState("networkidle", {timeout: 15000}).catch(() => { out.networkidle = false; });
    await page.waitForTimeout(1500);  // late requests (fonts, lazy scripts) are recorded too
    out.body_text = (await page.evaluate(() => document.body.innerText)).length;
  } catch (e) {
    out.error = String(e);
  }
  await context.close();
  return out;
}

(async () => {
  const result = {pages: {}};
  const browser = await chromium.launch({executablePath: opts.chromium || "/usr/bin/chromium",
                                         args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]});
  try {
    for (const route of opts.pages) result.pages[route] = await visit(browser, route);
  } catch (e) {
    result.fatal = String(e);
  } finally {
    await browser.close();
  }
  console.log(JSON.stringify(result));
})();
