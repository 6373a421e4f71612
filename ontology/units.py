"""Unit conversion through pint, compiled to affine maps.

Every conversion is computed by pint once per (source unit, canonical unit) pair; the result is an
affine map ``y = a*x + b`` (exact for every linear unit, offset temperatures such as degF -> degC
included), cached, so the per-reading cost is one multiply-add. Non-affine conversions (logarithmic
units) are refused at compile time.
"""

from __future__ import annotations

from functools import lru_cache

import pint

ureg = pint.UnitRegistry(autoconvert_offset_to_baseunit=True)
Q_ = ureg.Quantity

_ALIASES = {
    "µm": "micrometer",
    "μm": "micrometer",
    "um": "micrometer",
    "°C": "degC",
    "℃": "degC",
    "C": "degC",
    "°F": "degF",
    "F": "degF",
    "%": "percent",
    "1": "dimensionless",
    "": "dimensionless",
    "-": "dimensionless",
    "m/min": "meter/minute",
    "mg/cm2": "mg/cm**2",
    "mg/cm²": "mg/cm**2",
    "g/cm3": "g/cm**3",
    "g/cm³": "g/cm**3",
    "N/mm": "newton/millimeter",
    "kN/m": "kilonewton/meter",
}


class UnitError(ValueError):
    """A unit that pint does not know, or a conversion between different dimensions."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def normalise(unit: str) -> str:
    u = unit.strip()
    return _ALIASES.get(u, u)


@lru_cache(maxsize=4096)
def parse_unit(unit: str) -> pint.Unit:
    try:
        return ureg.Unit(normalise(unit))
    except (pint.UndefinedUnitError, pint.errors.DefinitionSyntaxError, AttributeError,
            TypeError, ValueError, AssertionError) as err:
        raise UnitError(f"unknown unit {unit!r}", "unknown_unit") from err


def dimensionality(unit: str) -> str:
    return str(parse_unit(unit).dimensionality)


@lru_cache(maxsize=4096)
def affine(source: str, target: str) -> tuple[float, float]:
    """(a, b) such that value_in_target = a * value_in_source + b, computed by pint."""
    su, tu = parse_unit(source), parse_unit(target)
    if su.dimensionality != tu.dimensionality:
        raise UnitError(
            f"unit {source!r} {su.dimensionality} cannot convert to {target!r} {tu.dimensionality}",
            "unit_dimension",
        )
    try:
        y0 = Q_(0.0, su).to(tu).magnitude
        y1 = Q_(1.0, su).to(tu).magnitude
        y2 = Q_(1000.0, su).to(tu).magnitude
    except pint.errors.DimensionalityError as err:  # pragma: no cover - caught above
        raise UnitError(str(err), "unit_dimension") from err
    a, b = y1 - y0, y0
    if abs((a * 1000.0 + b) - y2) > 1e-9 * max(1.0, abs(y2)):
        raise UnitError(f"conversion {source!r} -> {target!r} is not affine", "unit_dimension")
    return float(a), float(b)


def convert(value: float, source: str, target: str) -> float:
    a, b = affine(source, target)
    return a * value + b
