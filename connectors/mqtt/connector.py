"""MQTT connector on paho-mqtt 2.x.

Delivery guarantee: QoS 1 with a persistent session (fixed client id, no clean start) and manual
acknowledgement. A message is acknowledged to the broker (PUBACK) only after the pipeline has
stored everything in it, so a message the broker acknowledged to its publisher is either stored or
still held by the broker, which redelivers it after a reconnect; the store's idempotency on
(line, tag, source timestamp) turns the redelivery into exactly-once storage.

Acknowledgements are tied to the connection they belong to: a message id from an earlier
connection is never acknowledged on a new one (it would acknowledge a different message); the
broker redelivers it instead.

Reconnects use jittered exponential backoff (connectors.base.Backoff); subscriptions are renewed on
every connect. paho objects never leave this module.

No message stops the connector. The payload parser never raises (connectors.mqtt.payload); as a
last line of defence the whole paho callback is guarded: an unexpected exception while handling a
message makes that message an ``internal_error`` dead letter (payload bounded and made storable),
logs the traceback (rate-limited), counts it in ``counters.extra["internal_errors"]``, and the
message is acknowledged once the dead letter is stored, like any delivery. If paho's network loop
raises all the same (a bug in a callback outside that guard, or in paho), ``_run`` counts it in
``counters.extra["loop_errors"]``, drops that connection (its acknowledgements are not sent on the
next one: the broker redelivers) and reconnects with backoff; it never stays "connected" without
reading.

Beyond the built-in payload format: ``payloads`` mappings per topic pattern (connectors.mqtt.mapping),
Sparkplug B as a host application (connectors.mqtt.sparkplug: births, aliases, sequence numbers,
rebirth requests, deaths, STATE), and setpoint write-back (:meth:`MqttConnector.write_setpoint`:
allow-listed, QoS 1, confirmed by the controller's echo; the OPC-UA connector's contract). With
none of them configured, a message costs three attribute tests more than before (about 50 ns).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import ssl
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from connectors.base import Backoff, Connector, error_text, storable_text
from connectors.mqtt.config import (
    CommandFormat,
    MqttConnectorConfig,
    MqttProtocol,
    MqttSetpoint,
    TimestampPolicy,
    TlsVerify,
)
from connectors.mqtt.mapping import PayloadMapper
from connectors.mqtt.payload import MAX_ADDRESS, MAX_PAYLOAD_TEXT, MAX_REASON, parse_payload
from connectors.mqtt.sparkplug import SparkplugHost, state_payload
from connectors.mqtt.writes import (
    SetpointWriteError,
    WriteResult,
    check_value,
    coerce_sparkplug,
    json_command,
    matches,
    number_command,
)
from core.samples import DeadLetter, RawBatch, Redelivery, SourceKind, now_ns, ns_to_iso

log = logging.getLogger("twin.connectors.mqtt")
#: messages staged between paho's thread and the event loop at most (the hand-over's group size)
STAGE_MAX = 64
#: while messages flow, the event loop takes the staged ones this often instead of being woken per message
HANDOVER_LINGER_S = 0.001


def _writes_stay_on_the_network_thread(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    """paho's socket-write callback: nothing to do, its presence keeps writes on the network thread."""


class MqttConnector(Connector):
    kind = "mqtt"

    def __init__(self, config: MqttConnectorConfig, *, default_line_id: str = "") -> None:
        super().__init__(config.name, config.queue.max_batches, config.queue.overflow)
        self.config = config
        self.default_line_id = config.line_id or default_line_id
        self._generation = 0
        self._gen_lock = threading.Lock()
        self._intake_open = True
        self._loop: asyncio.AbstractEventLoop | None = None
        self._disconnected: asyncio.Event | None = None
        self._connected_evt: asyncio.Event | None = None
        self._closing = False
        self.last_error: str | None = None
        self.counters.extra.update({"messages": 0, "acked": 0, "dropped_acknowledged": 0, "handover_wakes": 0, "stale_acks_skipped": 0, "loop_errors": 0,
                                    "ack_errors": 0, "writes": 0, "write_failures": 0})
        # payload field mappings (None: every topic uses the built-in format; one check per message)
        self._mapper = (PayloadMapper(config.payloads, config.missing_timestamp) if config.payloads else None)
        self._sparkplug: Any = None
        if config.sparkplug.enabled:
            self._sparkplug = SparkplugHost(config.sparkplug, config.name, self._publish_raw, self.counters.extra)
        self._state_ts_ms = 0
        # setpoint write-back: the allow-list, the addresses whose values confirm a write
        self._setpoints: dict[str, MqttSetpoint] = {sp.address: sp for sp in config.writes.setpoints}
        self._echo_of: dict[str, str] = {a: self._echo_address(sp) for a, sp in self._setpoints.items()}
        self._echo_topics: frozenset[bytes] = frozenset(
            e.encode() for a, e in self._echo_of.items() if not self._setpoints[a].sparkplug)
        self._echo_spb = any(sp.sparkplug for sp in self._setpoints.values())
        self._echo_addresses = frozenset(self._echo_of.values())
        self._last_echo: dict[str, Any] = {}
        self._waiters: dict[str, list[tuple[asyncio.Future[Any], Any, bool]]] = {}
        self.write_log: deque[WriteResult] = deque(maxlen=1000)
        # hand-over from paho's thread to the event loop (issue #23): messages are staged under a lock and the loop
        # is woken once per group, not once per message (a cross-thread round trip each); at most STAGE_MAX
        # staged, beyond that paho's thread waits (back-pressure: it stops reading the socket). The stage is a
        # hand-over, not a second queue: what the connector holds stays max_batches + STAGE_MAX deliveries (with
        # the stage as large as the queue, a 5x overload held twice the queue's readings: 530 MiB, see
        # docs/reliability.md)
        self._stage_lock = threading.Lock()
        self._staged: list[RawBatch] = []
        self._stage_woken = False
        self._stage_max = max(1, min(config.queue.max_batches, STAGE_MAX))
        self._room = threading.Event()
        self._room.set()
        self._staged_evt: asyncio.Event | None = None
        self._handover_task: asyncio.Task[None] | None = None
        self._client = self._make_client()
        # a delivery the overflow policy drops is acknowledged: dropped means shed and counted. Held unacknowledged
        # (so that the broker redelivers it after a restart) it would occupy a slot of the broker's in-flight window
        # for this session (mosquitto's max_inflight_messages, 20 by default) until the next reconnect; once the
        # window is full of dropped messages the broker sends nothing more and ingestion stops, silently (measured:
        # bench/results/faults_overload_drop_*_slow.json before this change). ``block`` (the default) drops nothing.
        self.queue.on_drop = self._ack_dropped

    # -- client set-up -----------------------------------------------------------------------
    def _make_client(self) -> mqtt.Client:
        c = self.config
        if c.protocol is MqttProtocol.V5:
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=c.client_id,
                                 protocol=mqtt.MQTTv5, reconnect_on_failure=False, manual_ack=True)
        else:
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=c.client_id, clean_session=False,
                                 protocol=mqtt.MQTTv311, reconnect_on_failure=False, manual_ack=True)
        if c.username is not None:
            client.username_pw_set(c.username, c.password)
        if c.tls is not None:
            ctx = ssl.create_default_context(cafile=str(c.tls.ca_file) if c.tls.ca_file else None)
            if c.tls.cert_file is not None:
                ctx.load_cert_chain(str(c.tls.cert_file), str(c.tls.key_file))
            if c.tls.verify is TlsVerify.NO_HOSTNAME:
                ctx.check_hostname = False
            client.tls_set_context(ctx)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        # Only paho's network thread (loop_forever, run in a worker thread) may write to the socket. With
        # no socket callback set and no loop_start() thread, paho's publish()/ack() write themselves when
        # the network thread is between callbacks; an ack from the event loop that meets a dead connection
        # (broker killed) then runs paho's disconnect handling in the event loop, which waits for the
        # callback lock the network thread holds in _on_message while that thread waits for the event loop
        # in put_threadsafe: a deadlock that froze ingestion and the API. With a socket-write callback set,
        # publish()/ack() only queue the packet and wake the network thread (it selects on paho's socket pair).
        client.on_socket_register_write = _writes_stay_on_the_network_thread
        return client

    # -- paho callbacks (paho's thread) ------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                    properties: Any) -> None:
        if reason_code.is_failure:
            self.last_error = f"broker refused the connection: {reason_code}"
            log.error("mqtt %s: %s", self.name, self.last_error)
            return
        with self._gen_lock:
            self._generation += 1
        self.counters.connected = True
        self.last_error = None
        if self.config.protocol is MqttProtocol.V5:  # noLocal: our own commands and STATE do not come back
            # (a shared subscription must not set it: MQTT 5.0, 3.8.3.1)
            client.subscribe([(t, SubscribeOptions(qos=1, noLocal=not t.startswith("$share/")))
                              for t in self.subscriptions()])
        else:
            client.subscribe([(t, 1) for t in self.subscriptions()])
        if self._sparkplug is not None and self.config.sparkplug.host_id:
            client.publish(self._state_topic(), state_payload(True, self._state_ts_ms), qos=1, retain=True)
        log.info("mqtt %s: connected to %s:%s (session present: %s)", self.name, self.config.host,
                 self.config.port, getattr(flags, "session_present", "?"))
        if self._loop is not None and self._connected_evt is not None:
            self._loop.call_soon_threadsafe(self._connected_evt.set)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                       properties: Any) -> None:
        self.counters.connected = False
        with self._gen_lock:
            self._generation += 1  # acks of earlier deliveries must not go out on a new connection

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        """Never raises (paho would end its network loop)."""
        if not self._intake_open:
            return  # not acknowledged: the broker keeps it for the next session
        recv = now_ns()
        try:
            topic_b = msg._topic  # raw bytes: msg.topic raises on bad UTF-8
            mapping = None
            if self._sparkplug is not None and topic_b.startswith(b"spBv1.0/"):
                readings, dead = self._sparkplug.handle(topic_b, msg.payload, recv, self.config.max_payload_bytes)
            elif self._mapper is not None and (mapping := self._mapper.match(topic_b)) is not None:
                readings, dead = self._mapper.parse(mapping, topic_b, msg.payload, recv, connector=self.name,
                                                    max_bytes=self.config.max_payload_bytes)
            else:
                readings, dead = parse_payload(
                    topic_b, msg.payload, recv, connector=self.name,
                    batch_suffix=self.config.batch_topic_suffix,
                    fill_receive_time=self.config.missing_timestamp is TimestampPolicy.RECEIVE_TIME,
                    max_bytes=self.config.max_payload_bytes)
            if self._echo_of and readings and (topic_b in self._echo_topics
                                               or (self._echo_spb and topic_b.startswith(b"spBv1.0/"))):
                self._check_echo(readings)
        except Exception as err:  # noqa: BLE001 - last line of defence: the message becomes a dead letter
            readings, dead = [], [self._internal_error(msg, recv, err)]
        try:
            self.counters.extra["messages"] += 1
            self.counters.received += len(readings) + len(dead)
            self.counters.rejected += len(dead)
            batch = RawBatch(tuple(readings), tuple(dead), self._make_ack(client, msg),
                             Redelivery.SOURCE if msg.qos else Redelivery.NONE)
            self._stage(batch)
        except (RuntimeError, concurrent.futures.CancelledError):
            pass  # event loop gone (shutdown): left unacknowledged, the broker keeps it
        except Exception as err:  # noqa: BLE001 - unacknowledged: the broker redelivers it after a reconnect
            self._count_internal("mqtt_callback", err, "could not queue a message; it stays unacknowledged")

    def _stage(self, batch: RawBatch) -> None:
        """Hand a message's batch to the event loop (paho's thread). Wakes the loop only when nothing is staged
        yet; waits while ``_stage_max`` batches are staged. Raises RuntimeError when the event loop is gone."""
        loop = self._loop
        if loop is None or loop.is_closed():
            raise RuntimeError("event loop gone")
        with self._stage_lock:
            self._staged.append(batch)
            full = len(self._staged) >= self._stage_max
            if full:
                self._room.clear()
            wake = not self._stage_woken
            self._stage_woken = True
        if wake:
            self.counters.extra["handover_wakes"] += 1
            loop.call_soon_threadsafe(self._wake_handover)
        if full:
            while not self._room.wait(0.5):  # the loop takes what is staged; a stopped loop never will
                if self._closing or loop.is_closed():
                    return

    def _wake_handover(self) -> None:
        if self._staged_evt is not None:
            self._staged_evt.set()

    async def _handover(self) -> None:
        """The event loop's side of the hand-over: staged batches into the bounded queue, in arrival order.

        While messages flow, the loop takes what was staged every HANDOVER_LINGER_S without being woken (paho's
        thread sees the hand-over as awake and does not wake it again); only a take that finds the stage empty puts
        it back to sleep. A wake-up costs a cross-thread write and an event-loop turn, and the loop drains faster
        than single-reading messages arrive, so without the linger every message paid one."""
        assert self._staged_evt is not None
        while True:
            await self._staged_evt.wait()
            self._staged_evt.clear()
            while await self._flush_staged(stay_awake=HANDOVER_LINGER_S > 0):
                await asyncio.sleep(HANDOVER_LINGER_S)

    async def _flush_staged(self, stay_awake: bool = False) -> int:
        """Staged batches into the queue; returns how many. ``stay_awake``: paho's thread is not to wake the loop
        for what it stages next (the caller comes back), unless nothing was staged (then the hand-over sleeps)."""
        with self._stage_lock:
            items, self._staged = self._staged, []
            self._stage_woken = stay_awake and bool(items)
            self._room.set()
        for b in items:
            await self.queue.put(b)
        return len(items)

    def _ack_dropped(self, batch: RawBatch) -> None:
        self.counters.extra["dropped_acknowledged"] += 1
        batch.ack()

    def _make_ack(self, client: mqtt.Client, msg: mqtt.MQTTMessage) -> Callable[[], None]:
        gen, mid, qos = self._generation, msg.mid, msg.qos

        def ack() -> None:
            if qos == 0:
                return
            with self._gen_lock:
                current = self._generation
            if gen != current:
                self.counters.extra["stale_acks_skipped"] += 1
                return
            try:
                client.ack(mid, qos)
            except Exception as err:  # noqa: BLE001 - the pipeline must not fail on a lost connection
                self.counters.extra["ack_errors"] += 1
                self.errors_log.error(f"mqtt_ack:{type(err).__name__}", "mqtt %s: acknowledging message %s failed: %s",
                                      self.name, mid, error_text(err, 200), exc=None)
                return
            self.counters.extra["acked"] += 1

        return ack

    def _count_internal(self, stage: str, err: BaseException, what: str) -> None:
        self.counters.extra["internal_errors"] = self.counters.extra.get("internal_errors", 0) + 1
        self.counters.last_error = f"{stage}: {error_text(err)}"
        self.errors_log.error(f"{stage}:{type(err).__name__}", "mqtt %s: unexpected %s; %s", self.name,
                              error_text(err, 200), what, exc=err)

    def _internal_error(self, msg: mqtt.MQTTMessage, recv: int, err: BaseException) -> DeadLetter:
        """The dead letter for a message whose handling raised (never raises itself)."""
        self._count_internal("mqtt_callback", err, "the message is kept as an internal_error dead letter")
        try:
            topic = bytes(msg._topic[:MAX_ADDRESS]).decode("utf-8", "backslashreplace")
            payload = bytes(msg.payload[:MAX_PAYLOAD_TEXT]).decode("utf-8", "backslashreplace")
        except Exception:  # noqa: BLE001 - a dead letter must be made even from a message paho cannot show
            topic, payload = "?", ""
        return DeadLetter(SourceKind.MQTT, storable_text(topic, MAX_ADDRESS), storable_text(payload, MAX_PAYLOAD_TEXT),
                          "internal error while handling this message: " + error_text(err, MAX_REASON - 60),
                          "internal_error", recv, self.name)

    # -- the connection loop (asyncio) -------------------------------------------------------
    def _connect_blocking(self, first: bool) -> None:
        c = self.config
        if self._sparkplug is not None and c.sparkplug.host_id:
            # Sparkplug B 3.0 host application: the will (offline) and the birth (online) share a timestamp
            self._state_ts_ms = int(time.time() * 1000)
            self._client.will_set(self._state_topic(), state_payload(False, self._state_ts_ms), qos=1, retain=True)
        if first:
            if c.protocol is MqttProtocol.V5:
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = c.session_expiry_s
                self._client.connect(c.host, c.port, c.keepalive_s, clean_start=False, properties=props)
            else:
                self._client.connect(c.host, c.port, c.keepalive_s)
        else:
            self._client.reconnect()

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._connected_evt = asyncio.Event()
        if self._handover_task is None or self._handover_task.done():
            self._staged_evt = asyncio.Event()
            self._handover_task = asyncio.create_task(self._handover(), name=f"mqtt-handover:{self.name}")
            if self._staged:
                self._staged_evt.set()
        backoff = Backoff(self.config.backoff.initial_s, self.config.backoff.max_s)
        first = True
        while not self._closing:
            try:
                await asyncio.to_thread(self._connect_blocking, first)
                first = False
            except (OSError, ValueError, ssl.SSLError) as err:
                self.last_error = f"cannot connect to {self.config.host}:{self.config.port}: {err}"
                delay = backoff.next_delay()
                log.warning("mqtt %s: %s; retry in %.1f s", self.name, self.last_error, delay)
                await asyncio.sleep(delay)
                continue
            try:
                await asyncio.to_thread(self._client.loop_forever)  # returns when the connection drops
                loop_failed = False
            except Exception as err:  # noqa: BLE001 - paho's loop raised: drop this connection, reconnect
                loop_failed = True
                with self._gen_lock:
                    self._generation += 1  # acks of this connection's deliveries must not go out on the next
                self.counters.extra["loop_errors"] += 1
                self.last_error = f"network loop failed: {error_text(err)}"
                self.counters.last_error = self.last_error
                self.errors_log.error(f"mqtt_loop:{type(err).__name__}",
                                      "mqtt %s: paho's network loop raised %s; reconnecting", self.name,
                                      type(err).__name__, exc=err)
            self.counters.connected = False
            if self._closing:
                break
            if self._connected_evt.is_set() and not loop_failed:  # that connection had been accepted
                backoff.reset()
            self._connected_evt.clear()
            self.counters.reconnects += 1
            delay = backoff.next_delay()
            log.warning("mqtt %s: connection lost (%s); reconnect in %.1f s", self.name,
                        self.last_error or "dropped", delay)
            await asyncio.sleep(delay)

    def describe(self) -> dict[str, object]:
        d = super().describe()
        d["last_error"] = self.last_error or self.counters.last_error
        if self._sparkplug is not None:
            d["sparkplug"] = self._sparkplug.snapshot()
        return d

    # -- subscriptions, Sparkplug B host --------------------------------------------------------------
    def subscriptions(self) -> list[str]:
        """The configured topics, the Sparkplug groups and every echo topic of a writable setpoint."""
        subs = list(self.config.topics)
        if self._sparkplug is not None:
            subs += [f"spBv1.0/{g}/#" for g in self.config.sparkplug.groups]
        subs += [t.decode() for t in sorted(self._echo_topics)]
        return list(dict.fromkeys(subs))

    def _state_topic(self) -> str:
        return f"spBv1.0/STATE/{self.config.sparkplug.host_id}"

    def _publish_raw(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        self._client.publish(topic, payload, qos=qos, retain=retain)

    # -- setpoint write-back ---------------------------------------------------------------------
    def _echo_address(self, sp: MqttSetpoint) -> str:
        """The reading address whose value confirms a write of ``sp``."""
        if sp.sparkplug:
            return sp.address
        return (sp.echo_topic or sp.address).replace("{line}", self.default_line_id)

    def owns_setpoint(self, address: str) -> bool:
        """Whether ``address`` (a tag map source address) is one of this connector's writable setpoints."""
        return address in self._setpoints

    def _check_echo(self, readings: list[Any]) -> None:
        """paho's thread: hand values of watched addresses to the event loop (never raises)."""
        loop = self._loop
        for r in readings:
            if r.address in self._echo_addresses and loop is not None:
                loop.call_soon_threadsafe(self._echo_seen, r.address, r.value, r.quality)

    def _echo_seen(self, address: str, value: Any, quality: Any) -> None:
        waiters = self._waiters.get(address)
        if waiters:
            for fut, written, f32 in list(waiters):
                if not fut.done() and matches(written, value, self.config.writes.float_tolerance, f32):
                    fut.set_result(value)
        if int(quality) == 0:
            self._last_echo[address] = value

    async def write_setpoint(self, address: str, value: Any, *, reason: str = "", actor: str = "") -> WriteResult:
        """Publish one setpoint command (QoS 1) and wait until the controller echoes the value on the
        setpoint's echo topic. Raises SetpointWriteError; every attempt is logged and kept in ``write_log``."""
        sp = self._setpoints.get(address)
        requested, written, prev, dtype = value, None, None, "number"
        echo = self._echo_of.get(address, address)
        try:
            if sp is None:
                raise SetpointWriteError(f"{address} is not in writes.setpoints of connector {self.name!r}",
                                         "not_allowed")
            if not self.counters.connected or self._loop is None:
                raise SetpointWriteError(f"connector {self.name!r} is not connected ({self.last_error})",
                                         "not_connected")
            written = check_value(address, value, sp.min, sp.max)
            prev = self._last_echo.get(echo)
            f32 = False
            if sp.sparkplug:
                info = self._sparkplug.metric(address) if self._sparkplug is not None else None
                if info is None:
                    raise SetpointWriteError(f"{address}: no Sparkplug birth names this metric (sparkplug.enabled, "
                                             "and has the edge node been born?)", "unknown_node")
                written = coerce_sparkplug(address, written, info.datatype)
                dtype = info.datatype.name
                f32 = dtype == "FLOAT"
                topic, payload = self._sparkplug.command(info, written, int(time.time() * 1000))
            else:
                topic = sp.command_topic.replace("{line}", self.default_line_id)  # type: ignore[union-attr]
                if sp.format is CommandFormat.JSON:
                    payload = json_command(sp.value_key, written, ns_to_iso(now_ns()), uuid.uuid4().hex)
                else:
                    payload = number_command(written)
            timeout = self.config.writes.confirm_timeout_s
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            fut: asyncio.Future[Any] = loop.create_future()
            entry = (fut, written, f32)
            self._waiters.setdefault(echo, []).append(entry)  # before publishing: a fast echo is not missed
            try:
                info_ = self._client.publish(topic, payload, qos=1, retain=sp.retain)
                if info_.rc != mqtt.MQTT_ERR_SUCCESS:
                    raise SetpointWriteError(f"{address}: publishing on {topic} failed ({mqtt.error_string(info_.rc)})",
                                             "bad_status")
                while not info_.is_published():
                    if loop.time() >= deadline:
                        raise SetpointWriteError(f"{address}: the broker did not acknowledge the command on {topic} "
                                                 f"within {timeout:g} s", "bad_status")
                    await asyncio.sleep(0.01)
                try:
                    rb = await asyncio.wait_for(fut, max(0.0, deadline - loop.time()))
                except TimeoutError:
                    seen = self._last_echo.get(echo)
                    raise SetpointWriteError(
                        f"{address}: published {written!r} on {topic} but the controller did not echo it on {echo} "
                        f"within {timeout:g} s" + (f" (last value there: {seen!r})" if seen is not None else
                                                  " (nothing received there)"), "verify_failed") from None
            finally:
                waiters = self._waiters.get(echo, [])
                if entry in waiters:
                    waiters.remove(entry)
                if not waiters:
                    self._waiters.pop(echo, None)
        except SetpointWriteError as err:
            self.write_log.append(WriteResult(address, requested, written, prev, None, dtype, now_ns(), False, str(err),
                                              actor, reason))
            self.counters.extra["write_failures"] += 1
            log.warning("mqtt %s: setpoint write %s = %r refused or unconfirmed (%s) by=%s reason=%s", self.name,
                        address, requested, err, actor or "-", reason or "-")
            raise
        res = WriteResult(address, requested, written, prev, rb, dtype, now_ns(), True, "", actor, reason)
        self.write_log.append(res)
        self.counters.extra["writes"] += 1
        log.info("mqtt %s: setpoint write %s: %r -> %r on %s, echoed %r, by=%s reason=%s", self.name, address,
                 prev, written, topic, rb, actor or "-", reason or "-")
        return res

    async def wait_connected(self, timeout: float = 10.0) -> None:
        for _ in range(int(timeout / 0.02)):
            if self.counters.connected:
                return
            await asyncio.sleep(0.02)
        raise TimeoutError(f"mqtt {self.name}: not connected after {timeout} s ({self.last_error})")

    async def stop(self) -> None:
        """Stop intake: later messages stay unacknowledged at the broker; queued ones drain."""
        self._intake_open = False
        await self._flush_staged()  # what paho's thread handed over before is delivered and acknowledged
        self.queue.close()

    async def aclose(self) -> None:
        self._intake_open = False
        self._closing = True
        self._room.set()
        await self._flush_staged()
        self.queue.close()
        if self._sparkplug is not None and self.config.sparkplug.host_id and self.counters.connected:
            try:  # a graceful host death: Sparkplug B 3.0 wants the offline STATE before the disconnect
                self._client.publish(self._state_topic(), state_payload(False, self._state_ts_ms), qos=1,
                                     retain=True)
            except Exception:  # noqa: BLE001 - closing must not raise
                pass
        try:
            self._client.disconnect()  # queued PUBACKs go out first (FIFO)
        except Exception:  # noqa: BLE001 - closing must not raise
            pass
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout=5)
            except (TimeoutError, asyncio.CancelledError, Exception):  # noqa: BLE001 - closing must not raise
                self._task.cancel()
        if self._handover_task is not None:
            self._handover_task.cancel()
