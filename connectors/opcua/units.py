"""Engineering units of OPC-UA (EUInformation, UNECE Recommendation 20 codes) <-> unit strings.

OPC-UA servers state a variable's unit in its ``EngineeringUnits`` property: an EUInformation with the
namespace http://www.opcfoundation.org/UA/units/un/cefact, a ``UnitId`` computed from the UNECE common
code (OPC 10000-8, 5.6.3: the code's ASCII characters packed into an Int32, e.g. "4H" -> 13384) and a
display name. This module maps the codes a pilot line uses to the pint spellings the tag map speaks.
It is a table of names, not of conversions (those go through pint in ontology.units).
Pure Python: no asyncua import.
"""

from __future__ import annotations

from dataclasses import dataclass

UNECE_NAMESPACE = "http://www.opcfoundation.org/UA/units/un/cefact"


@dataclass(frozen=True)
class EngineeringUnit:
    code: str  # UNECE common code
    unit: str  # pint spelling used by the tag map
    display: str  # what OPC-UA clients show
    description: str

    @property
    def unit_id(self) -> int:
        return unit_id(self.code)


def unit_id(code: str) -> int:
    """OPC 10000-8 5.6.3: UnitId = the common code's ASCII bytes, big-endian, in an Int32."""
    if not 1 <= len(code) <= 3:
        raise ValueError(f"UNECE common code {code!r} must have 1 to 3 characters")
    v = 0
    for ch in code:
        v = (v << 8) | ord(ch)
    return v


_TABLE = (
    EngineeringUnit("4H", "um", "µm", "micrometre (micron)"),
    EngineeringUnit("MMT", "mm", "mm", "millimetre"),
    EngineeringUnit("CMT", "cm", "cm", "centimetre"),
    EngineeringUnit("MTR", "m", "m", "metre"),
    EngineeringUnit("2X", "m/min", "m/min", "metre per minute"),
    EngineeringUnit("MTS", "m/s", "m/s", "metre per second"),
    EngineeringUnit("CEL", "degC", "°C", "degree Celsius"),
    EngineeringUnit("KEL", "K", "K", "kelvin"),
    EngineeringUnit("MQH", "m^3/h", "m³/h", "cubic metre per hour"),
    EngineeringUnit("F47", "N/mm", "N/mm", "newton per millimetre"),
    EngineeringUnit("N31", "kN/m", "kN/m", "kilonewton per metre"),
    EngineeringUnit("4P", "N/m", "N/m", "newton per metre"),
    EngineeringUnit("NEW", "N", "N", "newton"),
    EngineeringUnit("B47", "kN", "kN", "kilonewton"),
    EngineeringUnit("H63", "mg/cm^2", "mg/cm²", "milligram per square centimetre"),
    EngineeringUnit("GM", "g/m^2", "g/m²", "gram per square metre"),
    EngineeringUnit("23", "g/cm^3", "g/cm³", "gram per cubic centimetre"),
    EngineeringUnit("P1", "percent", "%", "percent"),
    EngineeringUnit("C62", "dimensionless", "1", "one"),
    EngineeringUnit("SEC", "s", "s", "second"),
    EngineeringUnit("MIN", "min", "min", "minute"),
    EngineeringUnit("HTZ", "Hz", "Hz", "hertz"),
    EngineeringUnit("RPM", "rpm", "r/min", "revolutions per minute"),
    EngineeringUnit("PAL", "Pa", "Pa", "pascal"),
    EngineeringUnit("KPA", "kPa", "kPa", "kilopascal"),
    EngineeringUnit("MPA", "MPa", "MPa", "megapascal"),
    EngineeringUnit("BAR", "bar", "bar", "bar"),
    EngineeringUnit("MBR", "mbar", "mbar", "millibar"),
    EngineeringUnit("KGM", "kg", "kg", "kilogram"),
    EngineeringUnit("GRM", "g", "g", "gram"),
    EngineeringUnit("WTT", "W", "W", "watt"),
    EngineeringUnit("KWT", "kW", "kW", "kilowatt"),
    EngineeringUnit("KWH", "kWh", "kW·h", "kilowatt hour"),
    EngineeringUnit("AMP", "A", "A", "ampere"),
    EngineeringUnit("VLT", "V", "V", "volt"),
    EngineeringUnit("C24", "mPa*s", "mPa·s", "millipascal second"),
    EngineeringUnit("59", "ppm", "ppm", "part per million"),
)

BY_ID: dict[int, EngineeringUnit] = {u.unit_id: u for u in _TABLE}
BY_UNIT: dict[str, EngineeringUnit] = {u.unit: u for u in _TABLE}


def unit_from_eu(namespace_uri: str | None, unit_id_: int | None, display: str | None) -> str | None:
    """The unit string of an EUInformation, or None when it is not one this table knows.

    A known UNECE UnitId wins; a server that leaves the UnitId at -1 but shows a display name this
    table knows (e.g. "µm") is accepted by the display name.
    """
    if unit_id_ is not None and unit_id_ >= 0 and (not namespace_uri or namespace_uri == UNECE_NAMESPACE):
        hit = BY_ID.get(int(unit_id_))
        if hit is not None:
            return hit.unit
    if display:
        text = display.strip()
        for u in _TABLE:
            if text in (u.display, u.unit):
                return u.unit
    return None


def eu_for(unit: str) -> EngineeringUnit:
    """The EngineeringUnit of a pint spelling (for servers, e.g. the simulator); KeyError if unknown."""
    return BY_UNIT[unit]
