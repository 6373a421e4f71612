"""Setpoint writers: which connector writes a setpoint tag (OPC-UA verified write or MQTT command with echo),
and the value in the unit that connector's node speaks."""

from __future__ import annotations

from collections.abc import Sequence

from twin.feedback.config import affine_to, clean
from twin.ports import OwnsSetpoints, SetpointWriter, TagCatalog

WRITABLE_KINDS = ("opcua", "mqtt")


def select_writer(tagmap: TagCatalog, writers: Sequence[SetpointWriter], tag: str,
                  write_connector: str | None = None) -> tuple[SetpointWriter, str]:
    """The connector that owns one of the tag's source addresses (OPC-UA or MQTT) and that address; a
    connector of the address's kind that does not declare it still gets it (and refuses it). ``write_connector``
    restricts the choice to the connector of that name. Raises RuntimeError when none can write the tag."""
    sources = [(kind, addr) for kind, addr, _ in tagmap.sources_of(tag) if kind in WRITABLE_KINDS]
    if not sources:
        raise RuntimeError(f"setpoint tag {tag!r} has no OPC-UA or MQTT source address to write to")
    node = sources[0][1]
    fallback: tuple[SetpointWriter, str] | None = None
    for c in writers:
        if write_connector is not None and c.name != write_connector:
            continue
        for kind, addr in sources:
            if kind == c.kind:
                if not isinstance(c, OwnsSetpoints) or c.owns_setpoint(addr):
                    return c, addr
                fallback = fallback or (c, addr)
    if fallback is not None:
        return fallback
    raise RuntimeError(f"no connector can write {tag!r} (an OPC-UA connector with writes.allowed_nodes = "
                       f"[{node!r}] or an MQTT one with writes.setpoints"
                       + (f" named {write_connector!r}" if write_connector else "") + ")")


def in_source_unit(tagmap: TagCatalog, tag: str, node: str, value: float) -> tuple[float, str | None]:
    """A setpoint in the tag's canonical unit -> the unit the node speaks (the tag map's source unit, pint);
    (value, that unit) or (value, None) when they are the same."""
    spec = tagmap.tags[tag]
    unit = next((u for k, a, u in tagmap.sources_of(tag) if k in WRITABLE_KINDS and a == node), spec.unit)
    if unit == spec.unit:
        return value, None
    a, b = affine_to(spec.unit, unit, f"feedback: setpoint {tag!r} to node {node!r}")
    return clean(a * value + b), unit


def setpoint_writers(connectors: Sequence[object]) -> list[SetpointWriter]:
    """The connectors that can write setpoints (have ``write_setpoint``), in configuration order."""
    return [c for c in connectors if isinstance(c, SetpointWriter)]
