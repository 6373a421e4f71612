// playwright-core from tests/browser/node (installed by scripts/setup.sh), shared by the drive_*.js scripts;
// without it a script prints one JSON line {fatal: ...} and exits 3.
"use strict";
const path = require("path");

try {
  module.exports = require(path.join(__dirname, "node", "node_modules", "playwright-core"));
} catch (e) {
  console.log(JSON.stringify({fatal: "playwright-core is not installed in tests/browser/node: run scripts/setup.sh"}));
  process.exit(3);
}
