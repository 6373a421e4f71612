"""Unit conversion through pint, compiled to affine maps, behind a guard.

Every conversion is computed by pint once per (source unit, canonical unit) pair; the result is an
affine map ``y = a*x + b`` (exact for every linear unit, offset temperatures such as degF -> degC
included), cached, so the per-reading cost is one multiply-add. Non-affine conversions (logarithmic
units) are refused at compile time.

Unit strings arrive from the line (an MQTT payload states its unit), so they are untrusted input.
pint evaluates a unit expression as arithmetic: ``1/0`` divides by zero, ``(m`` is a tokenizer
error, ``9**9**9`` computes a number with 370 million digits, ``km**99999999`` freezes the
conversion. :func:`parse_unit` and :func:`affine` therefore check the string before pint sees it:

- a ``str`` of at most :data:`MAX_UNIT_LEN` characters, after stripping and aliasing;
- only the characters of :data:`_ALLOWED` (ASCII letters and digits, space, ``* / ^ . ( ) - + _ %``
  and the few non-ASCII signs units are written with: ``µ μ ° ℃ ² ³ ⁻ ¹ · Ω Å``);
- balanced parentheses nested at most :data:`MAX_DEPTH` deep;
- every exponent (``**``, ``^``, superscripts) a plain number of magnitude at most
  :data:`MAX_EXPONENT`, not itself raised to a power, and exponents of nested groups multiplying
  to at most that; and in the parsed unit every exponent of magnitude at most :data:`MAX_EXPONENT`.

Whatever pint raises on what passes (ZeroDivisionError, TokenError, RecursionError, OverflowError,
...) becomes :class:`UnitError` with code ``unknown_unit``. So both functions raise only UnitError,
for any input, and return within a bounded time (bench: ``scripts/unit_guard_worst_case.py``).

Memory is bounded under a hostile sender: the caches are LRU caches keyed on the normalised string
(stripped, aliases applied; refusals are cached too, so a repeated bad unit costs a lookup), of
:data:`CACHE_SIZE` entries each, and pint's own registry caches (which grow with every new unit
expression) are reset to their start-up content when they grow by more than
:data:`PINT_CACHE_SLACK` entries.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache

import pint

ureg: pint.UnitRegistry = pint.UnitRegistry(autoconvert_offset_to_baseunit=True)
Q_ = ureg.Quantity

# Spellings pint does not read as meant. Bare "C" and "F" are deliberately absent: in pint (and SI) they are
# coulomb and farad, and they keep that meaning here; a temperature is written "°C", "℃", "degC" or
# "degree_Celsius" ("°F", "degF", "degree_Fahrenheit"). A source that sends "C" for a temperature tag gets a
# unit_dimension refusal that names the fix (see _TEMPERATURE_HINT).
_ALIASES = {
    "µm": "micrometer",
    "μm": "micrometer",
    "um": "micrometer",
    "°C": "degC",
    "℃": "degC",
    "°F": "degF",
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

# appended to a dimension refusal whose source is a bare "C" or "F" (read as coulomb / farad)
_TEMPERATURE_HINT = {
    "C": " ('C' is coulomb; a temperature in Celsius is written 'degC' or '°C')",
    "F": " ('F' is farad; a temperature in Fahrenheit is written 'degF' or '°F')",
}

MAX_UNIT_LEN = 64  # characters of a unit string (as given, and after aliasing)
MAX_DEPTH = 3  # nesting depth of parentheses
MAX_EXPONENT = 12  # magnitude of any exponent, written or resulting
CACHE_SIZE = 2048  # entries of each LRU cache (parse, affine)
PINT_CACHE_SLACK = 4096  # entries pint's registry caches may gain before they are reset

_ALLOWED = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 */^.()-+_%"
                     "µμ°℃²³⁻¹·ΩÅ")
_SUPERSCRIPTS = str.maketrans("⁻¹²³", "-123")
_SUPER_RUN = re.compile(r"[⁻¹²³]+")
# an exponent: one optional sign and a plain decimal number, optionally in parentheses
_NUMBER = r"\s*[-+]?\s*(\d+(?:\.\d+)?)(?![\d.eE])\s*"
_EXPONENT = re.compile(_NUMBER)
_EXPONENT_PAREN = re.compile(r"\s*\(" + _NUMBER + r"\)\s*")


class UnitError(ValueError):
    """A unit that pint does not know, or a conversion between different dimensions."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def _shown(unit: object) -> str:
    """A short printable form of a unit for an error message."""
    text = unit if isinstance(unit, str) else type(unit).__name__
    r = repr(text[:MAX_UNIT_LEN])  # escapes control characters and lone surrogates
    return r + ("..." if len(text) > MAX_UNIT_LEN else "")


def normalise(unit: str) -> str:
    u = unit.strip()
    return _ALIASES.get(u, u)


def _normalised(unit: object) -> str:
    """Type and length checks, then :func:`normalise` (raises UnitError)."""
    if not isinstance(unit, str):
        raise UnitError(f"unit must be a string, got {type(unit).__name__}", "unknown_unit")
    if len(unit) > MAX_UNIT_LEN:
        raise UnitError(f"unit of {len(unit)} characters is longer than {MAX_UNIT_LEN}: {_shown(unit)}",
                        "unknown_unit")
    return normalise(unit)


def _check_syntax(u: str) -> str | None:
    """Why pint must not see ``u`` (None: it may)."""
    if len(u) > MAX_UNIT_LEN:
        return f"longer than {MAX_UNIT_LEN} characters"
    bad = set(u) - _ALLOWED
    if bad:
        return f"character {min(bad)!r} is not allowed in a unit"
    depth = 0
    for ch in u:
        if ch == "(":
            depth += 1
            if depth > MAX_DEPTH:
                return f"parentheses nested deeper than {MAX_DEPTH}"
        elif ch == ")":
            depth -= 1
            if depth < 0:
                return "unbalanced parentheses"
    if depth:
        return "unbalanced parentheses"
    # exponents as pint will read them: superscript runs become **n, ^ becomes **. An exponent on a
    # parenthesised group multiplies the exponents inside it: their product is bounded too, or
    # "(((99999999999999999999**12)**12)**12)**12" makes pint compute a number of 400,000 digits.
    e = _SUPER_RUN.sub(lambda m: "**" + m.group(0).translate(_SUPERSCRIPTS), u).replace("^", "**")
    if "**" not in e:
        return None
    stack = [1.0]  # per open group: the largest magnitude of an exponent product inside it
    closed: float | None = None  # the group that just closed, while only white space follows it
    i, n = 0, len(e)
    while i < n:
        if e.startswith("**", i):
            m = _EXPONENT_PAREN.match(e, i + 2) or _EXPONENT.match(e, i + 2)
            if m is None:
                return "an exponent must be a plain number"
            x = float(m.group(1))
            if x > MAX_EXPONENT:
                return f"exponent {m.group(1)} is larger than {MAX_EXPONENT}"
            if e.startswith("**", m.end()):
                return "an exponent cannot be raised to a power"
            stack[-1] = max(stack[-1], x * closed if closed is not None else x)
            closed = None
            i = m.end()
            continue
        ch = e[i]
        if ch == "(":
            stack.append(1.0)
            closed = None
        elif ch == ")":
            closed = stack.pop()
            stack[-1] = max(stack[-1], closed)
        elif ch != " ":
            closed = None
        i += 1
    if stack[0] > MAX_EXPONENT:
        return f"nested exponents multiply to more than {MAX_EXPONENT}"
    return None


_BASE_CACHES: dict[str, dict[object, object]] = {
    name: dict(d) for name, d in vars(ureg._cache).items() if isinstance(d, dict)}
_BASE_SIZE = sum(len(d) for d in _BASE_CACHES.values())
pint_cache_resets = 0  # times pint's registry caches were reset to their start-up content


def _bound_pint_caches() -> None:
    """pint keeps every unit expression it met in plain dicts: reset them when they grew too much."""
    global pint_cache_resets
    cache = ureg._cache
    dicts = [(name, d) for name, d in vars(cache).items() if isinstance(d, dict)]
    if sum(len(d) for _, d in dicts) <= _BASE_SIZE + PINT_CACHE_SLACK:
        return
    for name, d in dicts:
        d.clear()
        d.update(_BASE_CACHES.get(name, {}))
    pint_cache_resets += 1


def _exponents_ok(u: pint.Unit) -> bool:
    return all(abs(float(p)) <= MAX_EXPONENT for p in u._units.values())  # type: ignore[arg-type]  # pint: Number


@lru_cache(maxsize=CACHE_SIZE)
def _parse(norm: str) -> pint.Unit | UnitError:
    """The unit of a normalised string, or the UnitError that refuses it (cached either way)."""
    # a refusal's message is a template: {unit} is filled with the unit as the caller wrote it
    why = _check_syntax(norm)
    if why is not None:
        return UnitError("unknown unit {unit}: " + why, "unknown_unit")
    try:
        u = ureg.Unit(norm)
        if not _exponents_ok(u):
            return UnitError(f"unknown unit {{unit}}: an exponent is larger than {MAX_EXPONENT}", "unknown_unit")
        return u
    except Exception as err:  # noqa: BLE001 - pint raises anything on odd input; all mean "unknown"
        return UnitError(f"unknown unit {{unit}} ({type(err).__name__})", "unknown_unit")
    finally:
        _bound_pint_caches()


def parse_unit(unit: str) -> pint.Unit:
    """The pint unit of a unit string; raises only UnitError (code ``unknown_unit``)."""
    r = _parse(_normalised(unit))
    if isinstance(r, UnitError):
        raise UnitError(str(r).replace("{unit}", _shown(unit)), r.code)
    return r


def dimensionality(unit: str) -> str:
    return str(parse_unit(unit).dimensionality)


@lru_cache(maxsize=CACHE_SIZE)
def _affine(source: str, target: str) -> tuple[float, float] | UnitError:
    # a refusal's message is a template: {source} and {target} are filled with the units as written
    su, tu = _parse(source), _parse(target)
    if isinstance(su, UnitError):
        return UnitError(str(su).replace("{unit}", "{source}"), su.code)
    if isinstance(tu, UnitError):
        return UnitError(str(tu).replace("{unit}", "{target}"), tu.code)
    try:
        if su.dimensionality != tu.dimensionality:
            return UnitError(f"unit {{source}} {su.dimensionality} cannot convert to {{target}} "
                             f"{tu.dimensionality}{_TEMPERATURE_HINT.get(source, '')}", "unit_dimension")
        y0 = float(Q_(0.0, su).to(tu).magnitude)
        y1 = float(Q_(1.0, su).to(tu).magnitude)
        y2 = float(Q_(1000.0, su).to(tu).magnitude)
    except pint.errors.DimensionalityError:
        return UnitError("unit {source} cannot convert to {target}", "unit_dimension")
    except Exception as err:  # noqa: BLE001 - overflow in a conversion factor, and the like
        return UnitError(f"conversion {{source}} -> {{target}} failed ({type(err).__name__})", "unknown_unit")
    finally:
        _bound_pint_caches()
    a, b = y1 - y0, y0
    if not (math.isfinite(a) and math.isfinite(b) and math.isfinite(y2)) or a == 0.0:
        return UnitError("conversion {source} -> {target} is not representable", "unknown_unit")
    if abs((a * 1000.0 + b) - y2) > 1e-9 * max(1.0, abs(y2)):
        return UnitError("conversion {source} -> {target} is not affine", "unit_dimension")
    return a, b


def affine(source: str, target: str) -> tuple[float, float]:
    """(a, b) such that value_in_target = a * value_in_source + b, computed by pint.

    Raises only UnitError: ``unknown_unit`` (a unit pint does not know or the guard refuses) or
    ``unit_dimension`` (different dimensions, or not an affine conversion)."""
    r = _affine(_normalised(source), _normalised(target))
    if isinstance(r, UnitError):
        raise UnitError(str(r).replace("{source}", _shown(source)).replace("{target}", _shown(target)), r.code)
    return r


def convert(value: float, source: str, target: str) -> float:
    a, b = affine(source, target)
    return a * value + b


def cache_info() -> dict[str, int]:
    """Sizes of the unit caches (for tests and /metrics)."""
    p, a = _parse.cache_info(), _affine.cache_info()
    return {"parse_entries": p.currsize, "affine_entries": a.currsize, "pint_cache_resets": pint_cache_resets,
            "pint_cache_entries": sum(len(d) for d in vars(ureg._cache).values() if isinstance(d, dict))}
