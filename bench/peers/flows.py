"""Node-RED flows of the peer benchmark (node-red-contrib-opcua + node-red-node-sqlite), built as flows.json.

Both flows: an inject fires once at start-up; it sends the two PRAGMAs (WAL, synchronous=NORMAL: the same
durability as the twin's default, safe against a process crash) to the SQLite node and one subscribe message
to the OpcUa-Client node: topic "multiple" with every variable in msg.payload, which node-red-contrib-opcua turns
into one monitored-item group in one subscription (publishing interval 100 ms) - the way its client node takes
many items. Each change comes out as one message (topic = node id, payload = the DataValue).

- per message: a function node maps the message to msg.params and a SQLite node in "prepared" mode runs one
  INSERT per message (the node's documented way to insert with parameters);
- batched: a function node gathers rows and every 100 ms (or at 1,000 rows) sends one
  ``BEGIN; INSERT ... VALUES (...),(...); COMMIT;`` to a SQLite node in "batch" mode (db.exec).
"""

from __future__ import annotations

from typing import Any

INSERT = "INSERT INTO samples(node, ts, value) VALUES ($node, $ts, $value)"

TO_PARAMS = """
const dv = msg.payload;
if (!dv || !dv.sourceTimestamp) return null;  // the client's first message is the subscription id
msg.params = { $node: msg.topic, $ts: dv.sourceTimestamp.getTime(), $value: dv.value.value };
return msg;
"""

BATCH_SETUP = """
context.set('rows', []);
const flush = () => {
  const rows = context.get('rows');
  if (rows.length === 0) return;
  context.set('rows', []);
  node.send({ topic: 'BEGIN; INSERT INTO samples(node, ts, value) VALUES ' + rows.join(',') + '; COMMIT;' });
};
context.set('flush', flush);
context.set('timer', setInterval(flush, %(period)d));
"""

BATCH = """
const dv = msg.payload;
if (!dv || !dv.sourceTimestamp) return null;  // the client's first message is the subscription id
const rows = context.get('rows');
rows.push("('" + msg.topic + "'," + dv.sourceTimestamp.getTime() + "," + dv.value.value + ")");
if (rows.length >= 1000) context.get('flush')();
return null;
"""

BATCH_CLOSE = "clearInterval(context.get('timer'));"


def flows(url: str, nodes: list[str], db: str, batched: bool, period_ms: float) -> list[dict[str, Any]]:
    tab = "n_tab1"
    out: list[dict[str, Any]] = [
        {"id": tab, "type": "tab", "label": "bench"},
        {"id": "n_ep", "type": "OpcUa-Endpoint", "endpoint": url, "secpol": "None", "secmode": "None", "none": True,
         "login": False, "usercert": False},
        {"id": "n_db", "type": "sqlitedb", "db": db, "mode": "RWC"},
        {"id": "n_start", "type": "inject", "z": tab, "name": "start", "props": [{"p": "payload"}], "repeat": "",
         "once": True, "onceDelay": "1", "payload": "", "payloadType": "date", "wires": [["n_subscribe", "n_pragmas"]]},
        {"id": "n_pragmas", "type": "function", "z": tab, "name": "pragmas", "outputs": 1,
         "func": "return [[{topic: 'PRAGMA journal_mode=WAL'}, {topic: 'PRAGMA synchronous=NORMAL'}]];",
         "wires": [["n_sqlpragma"]]},
        {"id": "n_sqlpragma", "type": "sqlite", "z": tab, "mydb": "n_db", "sqlquery": "msg.topic", "sql": "", "wires": [[]]},
        {"id": "n_subscribe", "type": "function", "z": tab, "name": "subscribe all", "outputs": 1,
         "func": "return {topic: 'multiple', interval: %d, payload: %s.map(n => ({nodeId: n}))};"
                 % (period_ms, _js_list(nodes)), "wires": [["n_client"]]},
        {"id": "n_client", "type": "OpcUa-Client", "z": tab, "endpoint": "n_ep", "action": "subscribe",
         "time": int(period_ms), "timeUnit": "ms", "deadbandtype": "a", "deadbandvalue": 0, "certificate": "n",
         "securitymode": "None", "securitypolicy": "None", "useTransport": False, "setstatusandtime": False,
         "keepsessionalive": False, "name": "source", "wires": [["n_map"], [], []]},
    ]
    if batched:
        out += [
            {"id": "n_map", "type": "function", "z": tab, "name": "gather rows", "outputs": 1, "func": BATCH,
             "initialize": BATCH_SETUP % {"period": period_ms}, "finalize": BATCH_CLOSE, "wires": [["n_sql"]]},
            {"id": "n_sql", "type": "sqlite", "z": tab, "mydb": "n_db", "sqlquery": "batch", "sql": "", "wires": [[]]},
        ]
    else:
        out += [
            {"id": "n_map", "type": "function", "z": tab, "name": "to params", "outputs": 1, "func": TO_PARAMS,
             "wires": [["n_sql"]]},
            {"id": "n_sql", "type": "sqlite", "z": tab, "mydb": "n_db", "sqlquery": "prepared", "sql": INSERT, "wires": [[]]},
        ]
    return out


def _js_list(xs: list[str]) -> str:
    import json
    return json.dumps(xs)
