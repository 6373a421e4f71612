// The header's health badge in a headless Chromium while the test stops the twin's sources one after the
// other. A line protocol on stdin/stdout keeps the page and the test in step:
//
//   driver -> {"ready": NAME}      the page shows every source connected and the badge is not red
//   test   -> "go"                 the test has stopped source NAME (the process has exited)
//   driver -> {"down": NAME, ...}  seconds from "go" until the badge was red and NAME's entry disconnected
//   test   -> "go"                 after restarting NAME (or "skip"): the driver waits for it to recover
//
//   node drive_health.js '{"url": "http://127.0.0.1:PORT/", "sources": ["broker", "simline"], "restart": [true, false]}'
//
// The last stdout line is the whole result as one JSON object.
"use strict";
const path = require("path");
const readline = require("readline");

let chromium;
try {
  ({chromium} = require(path.join(__dirname, "node", "node_modules", "playwright-core")));
} catch (e) {
  console.log(JSON.stringify({fatal: "playwright-core is not installed in tests/browser/node: run scripts/setup.sh"}));
  process.exit(3);
}

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
    for (let i = 0; i < opts.sources.length; i++) {
      const name = opts.sources[i];
      const r = result.sources[name] = {};
      await allUp(page, 30000);
      r.before = await badge(page);
      console.log(JSON.stringify({ready: name}));
      await nextLine(60000);
      const t0 = Date.now();
      try {
        await page.waitForFunction(n => {
          const l = document.querySelector(`#sources li[data-source="${n}"]`);
          return document.getElementById("live").dataset.level === "down" && l && l.dataset.level === "down";
        }, name, {timeout: 15000, polling: 100});
        r.red_after_s = (Date.now() - t0) / 1000;
      } catch (e) {
        r.red_after_s = null;
      }
      r.during = await badge(page);
      console.log(JSON.stringify({down: name, red_after_s: r.red_after_s}));
      const word = await nextLine(60000);
      if (word === "go" && opts.restart[i]) {
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
