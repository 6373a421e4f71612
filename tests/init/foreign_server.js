// A foreign OPC-UA server for the set-up tests: node-opcua (not the project's asyncua simulator), with
// its own node ids, browse names, folders and units (mm, °F by UNECE code FAH, N/mm, ft/min, g/m²),
// values that change every 200 ms, and two writable setpoints (roll gap in mm, roll temperature in °F).
//
//   node tests/init/foreign_server.js PORT PKI_DIR [--secure]
//
// Prints "READY opc.tcp://127.0.0.1:PORT/acme" on stdout when it serves. With --secure it offers only
// Basic256Sha256 / SignAndEncrypt and trusts every client certificate (a commissioning PLC).
"use strict";

const path = require("path");
const {
  OPCUAServer, OPCUACertificateManager, Variant, DataType, StatusCodes, standardUnits, makeEUInformation,
  SecurityPolicy, MessageSecurityMode,
} = require("node-opcua");

const port = parseInt(process.argv[2] || "4841", 10);
const pkiDir = process.argv[3] || path.join(__dirname, "node", "pki");
const secure = process.argv.includes("--secure");

// Units that the twin's UNECE table does not know (FAH, FR, GM): the twin reads them from the display name.
const UNITS = {
  mm: standardUnits.millimetre,                                           // MMT
  degF: standardUnits.degree_fahrenheit,                                   // FAH, "°F"
  NPerMm: makeEUInformation("F47", "N/mm", "newton per millimetre"),
  ftPerMin: makeEUInformation("FR", "ft/min", "foot per minute"),
  um: makeEUInformation("4H", "µm", "micrometre (micron)"),
  gPerM2: makeEUInformation("GM", "g/m²", "gram per square metre"),
  percent: makeEUInformation("P1", "%", "percent"),
  m: standardUnits.metre,
};

// the line: a calender with a gap in mm and a roll temperature in °F; a QCS with thickness gauges
const state = {
  gapSp: 0.085, gapAct: 0.085, tempSp: 122.0, tempAct: 122.0, lineLoad: 1300.0, speed: 19.685,
  thkIn: 100.0, coatWeight: 228.0, thkOut: 76.0, porosity: 30.9, web: 0.0, roll: "R-7001",
};

async function main() {
  const certificateManager = new OPCUACertificateManager({
    rootFolder: path.join(pkiDir, "server"), automaticallyAcceptUnknownCertificate: true,
  });
  const server = new OPCUAServer({
    port, hostname: "127.0.0.1", resourcePath: "/acme", serverCertificateManager: certificateManager,
    securityPolicies: secure ? [SecurityPolicy.Basic256Sha256] : [SecurityPolicy.None],
    securityModes: secure ? [MessageSecurityMode.SignAndEncrypt] : [MessageSecurityMode.None],
    allowAnonymous: true,
    buildInfo: { productName: "ACME calender line", manufacturerName: "ACME", softwareVersion: "1.0" },
    serverInfo: { applicationUri: "urn:acme:calender-line", productUri: "urn:acme:calender-line" },
  });
  await server.initialize();
  const as = server.engine.addressSpace;
  const ns = as.getOwnNamespace();
  const line = ns.addFolder(as.rootFolder.objects, { browseName: "AcmeLine", nodeId: "s=Acme" });
  const cal = ns.addFolder(line, { browseName: "Calender", nodeId: "s=Acme.Cal" });
  const qcs = ns.addFolder(line, { browseName: "QCS", nodeId: "s=Acme.QCS",
                                   description: "quality control system (scanning gauges)" });

  const vars = {};
  function analog(folder, nodeId, name, key, unit, low, high, opts = {}) {
    const v = ns.addAnalogDataItem({
      organizedBy: folder, nodeId, browseName: name, dataType: "Double", engineeringUnits: unit,
      engineeringUnitsRange: { low, high }, description: opts.description, minimumSamplingInterval: 100,
      accessLevel: opts.writable ? "CurrentRead | CurrentWrite" : "CurrentRead",
      userAccessLevel: opts.writable ? "CurrentRead | CurrentWrite" : "CurrentRead",
      value: opts.writable ? {
        get: () => new Variant({ dataType: DataType.Double, value: state[key] }),
        set: (variant) => {
          const x = variant.value;
          if (typeof x !== "number" || !(x >= low && x <= high)) return StatusCodes.BadOutOfRange;
          state[key] = x;
          return StatusCodes.Good;
        },
      } : undefined,
    });
    if (!opts.writable) {
      v.setValueFromSource(new Variant({ dataType: DataType.Double, value: state[key] }), StatusCodes.Good, new Date());
    }
    vars[key] = v;
    return v;
  }
  analog(cal, "i=51001", "RollGapActual", "gapAct", UNITS.mm, 0.0, 0.5);
  analog(cal, "i=51002", "RollGapSP", "gapSp", UNITS.mm, 0.04, 0.2, { writable: true });
  analog(cal, "s=TT-4711", "RollTemp", "tempAct", UNITS.degF, 32.0, 400.0, { description: "roll surface temperature" });
  analog(cal, "s=TC-4711.SP", "RollTempSP", "tempSp", UNITS.degF, 68.0, 302.0, { writable: true });
  analog(cal, "i=51005", "LineLoad", "lineLoad", UNITS.NPerMm, 0.0, 3000.0);
  analog(cal, "i=51006", "LineSpeed", "speed", UNITS.ftPerMin, 0.0, 150.0);
  analog(cal, "s=WEB.LEN", "WebLength", "web", UNITS.m, 0.0, 100000.0, { description: "web position since the roll started" });
  analog(qcs, "s=QCS/ThkIn", "CoatThicknessIn", "thkIn", UNITS.um, 0.0, 300.0,
         { description: "dry coating thickness, incoming (laser)" });
  analog(qcs, "s=QCS/CW", "CoatWeight", "coatWeight", UNITS.gPerM2, 0.0, 600.0, { description: "coat weight (beta gauge)" });
  analog(qcs, "s=QCS/ThkOut", "CoatThicknessOut", "thkOut", UNITS.um, 0.0, 300.0,
         { description: "coating thickness after the calender (laser)" });
  analog(qcs, "s=QCS/Poro", "Porosity", "porosity", UNITS.percent, 0.0, 100.0, { description: "online porosity" });
  const roll = ns.addVariable({ organizedBy: cal, nodeId: "s=RollNo", browseName: "RollNo", dataType: "String",
                                accessLevel: "CurrentRead", userAccessLevel: "CurrentRead" });
  roll.setValueFromSource(new Variant({ dataType: DataType.String, value: state.roll }), StatusCodes.Good, new Date());

  let t = 0;
  setInterval(() => {
    t += 0.2;
    const n = () => (Math.random() - 0.5);
    state.gapAct += 0.5 * (state.gapSp - state.gapAct) + 0.0002 * n();
    state.tempAct += 0.2 * (state.tempSp - state.tempAct) + 0.2 * n();
    state.speed = 19.685 + 0.05 * n();
    state.thkIn = 100.0 + 0.5 * n();
    state.coatWeight = 228.0 + 0.5 * n();
    const coatGapUm = state.gapAct * 1000.0 - 15.0;  // roll to roll, minus the foil
    state.thkOut = coatGapUm * 1.086 + 0.3 * n();
    state.porosity = 100.0 * (1.0 - 10.0 * (state.coatWeight / 10.0) / (4.34 * state.thkOut)) + 0.1 * n();
    state.lineLoad = 1300.0 + 600.0 * (0.085 - state.gapAct) / 0.01 + 5 * n();
    state.web += 19.685 * 0.3048 / 60.0 * 0.2;
    const now = new Date();
    for (const [key, v] of Object.entries(vars)) {
      if (key === "gapSp" || key === "tempSp") continue;
      v.setValueFromSource(new Variant({ dataType: DataType.Double, value: state[key] }), StatusCodes.Good, now);
    }
  }, 200);

  await server.start();
  const url = `opc.tcp://127.0.0.1:${port}/acme`;
  process.stdout.write(`READY ${url}\n`);
  const stop = async () => { await server.shutdown(100); process.exit(0); };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((err) => { console.error(err); process.exit(1); });
