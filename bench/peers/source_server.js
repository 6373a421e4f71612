// The source of the peer benchmark: a node-opcua server (none of the contenders wrote it) with N Double
// variables under Objects/Bench (ns=1;s=Bench.V00000 ...) that all change at HZ (default 10 Hz).
// Every value is the step number k = floor(epoch_ms / (1000/HZ)), the same for all variables, with the
// source timestamp of that step: a stored (variable, value) pair names exactly one change, so lost changes
// are counted exactly, also across a restart of this server (the counter is the wall clock).
//
//   node bench/peers/source_server.js PORT N [HZ] STEPLOG
//
// The server reports every change (exception-based monitored items, see below).
//
// Prints "READY opc.tcp://127.0.0.1:PORT" when it serves; appends "k epoch_ms" per step to STEPLOG.
"use strict";
const fs = require("fs");
const { OPCUAServer, Variant, DataType, StatusCodes } = require("node-opcua");
const { MonitoredItem } = require("node-opcua-server");

// Exception-based reporting of the Bench variables, whatever sampling interval a client asks for: the server
// queues every change (a timer-sampled item at 100 ms beats against a 10 Hz change and drops a change now and
// then, at the source). So a lost change is the client's, not the source's.
const startSampling = MonitoredItem.prototype.__start_sampling;
MonitoredItem.prototype.__start_sampling = function (recordInitialValue) {
  if (this.node && this.node.exceptionBased) this.samplingInterval = 0;
  return startSampling.call(this, recordInitialValue);
};

const port = parseInt(process.argv[2], 10);
const n = parseInt(process.argv[3], 10);
const hz = parseFloat(process.argv[4] || "10");
const stepLog = process.argv[5];
const period = 1000 / hz;

async function main() {
  const server = new OPCUAServer({
    port, hostname: "127.0.0.1", allowAnonymous: true,
    maxConnectionsPerEndpoint: 10,
    serverCapabilities: { maxMonitoredItemsPerSubscription: 100000, maxMonitoredItems: 200000 },
  });
  await server.initialize();
  const as = server.engine.addressSpace;
  const ns = as.getOwnNamespace();
  const folder = ns.addFolder(as.rootFolder.objects, { browseName: "Bench", nodeId: "s=Bench" });
  const vars = [];
  for (let i = 0; i < n; i++) {
    const id = String(i).padStart(5, "0");
    vars.push(ns.addVariable({ componentOf: folder, nodeId: `s=Bench.V${id}`, browseName: `V${id}`,
                               dataType: "Double", minimumSamplingInterval: 0 }));
    vars[i].exceptionBased = true;
  }
  const log = stepLog ? fs.openSync(stepLog, "a") : null;
  let last = -1;
  function tick() {
    const now = Date.now();
    const k = Math.floor(now / period);
    if (k !== last) {
      last = k;
      const ts = new Date(k * period);  // the step's nominal instant (<= now)
      const variant = new Variant({ dataType: DataType.Double, value: k });
      for (const v of vars) v.setValueFromSource(variant, StatusCodes.Good, ts);
      if (log !== null) fs.writeSync(log, `${k} ${now}\n`);
    }
    const next = (Math.floor(Date.now() / period) + 1) * period - Date.now();
    setTimeout(tick, Math.max(1, next + 1));
  }
  await server.start();
  tick();
  process.stdout.write(`READY opc.tcp://127.0.0.1:${port}\n`);
  const stop = async () => { await server.shutdown(0); process.exit(0); };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}
main().catch((err) => { console.error(err); process.exit(1); });
