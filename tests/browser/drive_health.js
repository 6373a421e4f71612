// The header's health badge in a headless Chromium while the test stops the twin's sources. A line protocol on
// stdin/stdout keeps the page and the test in step, for each step {name, source, expect: "down" | "warn", restart}:
//
//   driver -> {"ready": NAME}      the page shows every source connected and the badge is not red
//   test   -> "go"                 the test has done step NAME (stopped the source, or its publisher)
//   driver -> {"seen": NAME, ...}  seconds from "go" until the badge and the source's entry were at `expect`
//   test   -> "go"                 after restarting (or not): with restart, the driver waits for recovery
//
//   node drive_health.js '{"url": "http://127.0.0.1:PORT/?stale_s=3", "sources": ["broker", "simline"],
//                          "steps": [{"name": "broker", "source": "broker", "expect": "down", "restart": true}, ...]}'
//
// The last stdout line is the whole result as one JSON object.
"use strict";
const readline = require("readline");

const {chromium} = require("./pw");

const opts = JSON.parse(process.argv[2]);
const result = {page_errors: [], sources: {}};
const lines = [];
let waiter = null;
readline.createInterface({input: process.stdin}).on("line", l => { lines.push(l.trim()); if (waiter) { waiter(); waiter = null; } });
async function nextLine(timeoutMs) {
  const until = Date.now() + timeoutMs;
  while (!lines.length) {
    if (Date.now() > until) throw new Error("no word from the test");
    await new Promise(r => { waiter = r; setTimeout(r, 200); });
  }
  return lines.shift();
}

function badge(page) {
  return page.evaluate(() => {
    const b = document.getElementById("live");
    return {text: b.textContent, level: b.dataset.level, title: b.title,
            sources: Object.fromEntries([...document.querySelectorAll("#sources li[data-source]")].map(l =>
              [l.dataset.source, {state: l.dataset.state, level: l.dataset.level, text: l.textContent}]))};
  });
}

async function allUp(page, timeoutMs) {
  await page.waitForFunction(names => {
    const b = document.getElementById("live");
    return b.dataset.level !== "down" && names.every(n => {
      const l = document.querySelector(`#sources li[data-source="${n}"]`);
      return l && l.dataset.state === "connected";
    });
  }, opts.sources, {timeout: timeoutMs, polling: 100});
}

async function main() {
  const browser = await chromium.launch({executablePath: opts.chromium || "/usr/bin/chromium",
                                         args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]});
  try {
    const page = await browser.newPage({viewport: {width: 1000, height: 700}});
    page.on("pageerror", e => result.page_errors.push(String(e)));
    await page.goto(opts.url);
    await page.waitForSelector('body[data-plots-ready="1"]', {timeout: 30000});
    for (const step of opts.steps) {
      const r = result.sources[step.name] = {};
      await allUp(page, 30000);
      r.before = await badge(page);
      console.log(JSON.stringify({ready: step.name}));
      await nextLine(60000);
      const t0 = Date.now();
      try {
        await page.waitForFunction(([n, want]) => {
          const l = document.querySelector(`#sources li[data-source="${n}"]`);
          return document.getElementById("live").dataset.level === want && l && l.dataset.level === want;
        }, [step.source, step.expect], {timeout: 15000, polling: 100});
        r.seen_after_s = (Date.now() - t0) / 1000;
      } catch (e) {
        r.seen_after_s = null;
      }
      r.during = await badge(page);
      console.log(JSON.stringify({seen: step.name, after_s: r.seen_after_s}));
      await nextLine(60000);
      if (step.restart) {
        const t1 = Date.now();
        try { await allUp(page, 30000); r.recovered_after_s = (Date.now() - t1) / 1000; }
        catch (e) { r.recovered_after_s = null; }
        r.after = await badge(page);
      }
    }
  } finally {
    await browser.close();
  }
}

main().then(() => console.log(JSON.stringify(result)))
  .catch(e => { result.fatal = String(e.stack || e); console.log(JSON.stringify(result)); process.exit(2); });
