"""Worst-case time of the unit guard (ontology.units.parse_unit / affine) among inputs it lets
through to pint, and among the ones it refuses.

    .venv/bin/python -m bench.bench_unit_guard [--random 20000] [--seed 1]

Every call is timed cold (the guard's LRU caches and pint's parser cache cleared before it), in
thread CPU time. Candidates: hand-made worst cases (longest allowed names, which make pint try every
prefix and suffix; 64-digit numbers at the largest exponent; groups nested as deep as allowed with
the largest exponent product; many operators; superscripts) and a random search over the allowed
alphabet and a unit grammar; the slowest candidates are timed again (best of 5) to drop noise.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

from bench.common import percentile, versions, write_result
from ontology import units
from ontology.units import MAX_UNIT_LEN, UnitError

try:  # pint's own parser cache (functools.lru_cache on a classmethod)
    from pint.util import ParserHelper

    _PINT_CLEAR: Callable[[], None] | None = ParserHelper.from_string.__func__.cache_clear  # type: ignore[attr-defined]
except (ImportError, AttributeError):  # pragma: no cover
    _PINT_CLEAR = None

NAMES = ["m", "mm", "um", "km", "s", "min", "h", "kg", "g", "N", "kN", "Pa", "MPa", "degC", "degF", "K", "percent",
         "meter", "inch", "furlong", "angstrom", "fathom", "kilometer", "millimeter", "micrometer", "nanometer",
         "e", "pi", "dimensionless", "rpm", "Hz", "W", "kWh", "ohm", "Ω", "Å", "µm", "mPa·s", "degree", "radian"]

HAND = [
    "a" * MAX_UNIT_LEN,  # unknown name: pint tries every prefix and suffix split
    "kilo" * 16,
    "millimicronanopicofemtoattozeptoyoctometer" + "s" * 20,
    "9" * 60 + "**12",
    "(" + "9" * 54 + "**12)",
    "((9999999999**3)**2)**2",
    "(((m**12)**1)**1)**1/(((s**12)**1)**1)**1",
    "m*" * 31 + "m",
    "m/" * 31 + "m",
    "km**12*mm**-12*um**12*nm**-12*pm**12/fm**12",
    "(km*mm*um*nm*pm*fm*am*zm*ym)**1/(s*s*s*s*s*s*s*s*s)",
    "m²·s⁻¹·kg³·Ω²·Å⁻¹·µm²·K⁻¹·N²·Pa⁻¹·W³·h⁻¹",
    "1e308**12",
    "0.000000000000000000000000000000000000000000001**12",
    "(((1.5**12.5)))",
    "furlong**12/fortnight**12*angstrom**-12*lightyear**12",
    "(" * 3 + "m" + ")" * 3 + "**12",
    "m ** 12 / s ** 12 * kg ** 12 / K ** 12 * A ** 12 / mol ** 12",
    # lengths: affine(..., "um") converts them (a conversion factor from pint, not only a parse)
    "(km*mm*um*nm*pm*fm*am*zm*ym)/(m*m*m*m*m*m*m*m)",
    "furlong**12/fathom**11",
    "lightyear**12/angstrom**11",
    "((Mm**3)**2)**2/((nm**11))",
    "ym**-11*Ym**12",
    "inch**7*league**5/(yard**6*mile**5)",
]


def _random_units(n: int, rng: random.Random) -> list[str]:
    alphabet = sorted(units._ALLOWED)
    ops = ["*", "/", "**", "^", " ", "·", "(", ")"]
    out = []
    for i in range(n):
        if i % 2:
            s = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, MAX_UNIT_LEN)))
        else:
            parts = []
            while sum(map(len, parts)) < rng.randint(4, MAX_UNIT_LEN):
                parts.append(rng.choice(NAMES) if rng.random() < 0.5 else rng.choice(ops))
                if parts[-1] in ("**", "^"):
                    parts.append(str(rng.choice([1, 2, 3, 6, 12, -12, 0.5])))
            s = "".join(parts)[:MAX_UNIT_LEN]
        out.append(s)
    return out


def _cold(fn: Callable[..., object], *args: object) -> tuple[float, str]:
    units._parse.cache_clear()
    units._affine.cache_clear()
    if _PINT_CLEAR is not None:
        _PINT_CLEAR()
    t0 = time.thread_time()
    try:
        fn(*args)
        out = "ok"
    except UnitError as err:
        out = err.code
    return time.thread_time() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--random", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    units.parse_unit("m")
    units.affine("mm", "um")  # warm pint's tokenizer regexes
    cands = HAND + _random_units(args.random, rng)
    results: dict[str, dict[str, object]] = {}
    for name, fn, mk in (("parse_unit", units.parse_unit, lambda u: (u,)),
                         ("affine_to_um", units.affine, lambda u: (u, "um"))):
        timed = []
        for u in cands:
            dt, out = _cold(fn, *mk(u))
            timed.append((dt, out, u))
        reached = [t for t in timed if not units._check_syntax(units.normalise(t[2]))]
        slow = sorted(timed, reverse=True)[:10]
        again = []
        for _, out, u in slow:  # best of 5 against noise from other processes
            again.append((min(_cold(fn, *mk(u))[0] for _ in range(5)), out, u))
        again.sort(reverse=True)
        all_ms = [t[0] * 1e3 for t in timed]
        reached_ms = [t[0] * 1e3 for t in reached]
        results[name] = {
            "candidates": len(timed), "reached_pint": len(reached), "accepted": sum(t[1] == "ok" for t in timed),
            "median_ms": round(statistics.median(all_ms), 4), "p99_ms": round(percentile(all_ms, 99), 4),
            "max_ms_reaching_pint_first_pass": round(max(reached_ms), 3),
            "worst_best_of_5": [{"unit": u, "ms": round(dt * 1e3, 3), "outcome": out} for dt, out, u in again[:5]],
        }
    write_result("unit_guard", {"random_candidates": args.random, "seed": args.seed, "cpu_time": "thread_time",
                                "results": results}, versions("Pint"))


if __name__ == "__main__":
    main()
