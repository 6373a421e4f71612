"""The lab quantities compiled against the ontology: each names an SP term, stores the term's canonical
unit, converts a row's unit by pint and checks the range. Refuses start-up on a quantity that does not fit."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ontology.plant import ontology_index
from ontology.units import UnitError, affine

if TYPE_CHECKING:  # the config imports this module to check its quantities
    from twin.lab.config import LabQuantity

DIMENSIONLESS = ("", "1", "-", "dimensionless")


class CatalogError(ValueError):
    """A configured lab quantity that does not fit the ontology."""


class RowError(ValueError):
    """A lab row that cannot be stored; ``code`` is the dead letter's reason code."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Quantity:
    name: str
    parameter: str
    iri: str
    label: str
    unit: str
    lo: float
    hi: float
    method: str
    model_output: str | None
    offline: bool

    def as_json(self) -> dict[str, object]:
        return {"name": self.name, "parameter": self.parameter, "iri": self.iri, "label": self.label,
                "unit": self.unit, "range": [self.lo, self.hi], "method": self.method,
                "model_output": self.model_output, "offline": self.offline}


class Catalog:
    def __init__(self, quantities: Sequence[LabQuantity]) -> None:
        idx = ontology_index()
        self.by_name: dict[str, Quantity] = {}
        self.by_parameter: dict[str, Quantity] = {}
        problems = []
        for q in quantities:
            term = idx.resolve(q.parameter)
            if term is None:
                problems.append(f"lab quantity {q.name!r}: {q.parameter!r} is not a term of the ontology")
                continue
            if term.kind != "SP":
                problems.append(f"lab quantity {q.name!r}: {term.local} is a {term.kind}, not a structure parameter")
                continue
            try:
                a, c = affine(q.unit, term.canonical_unit)
            except UnitError as err:
                problems.append(f"lab quantity {q.name!r}: unit {q.unit!r} does not fit {term.local}: {err}")
                continue
            if (a, c) != (1.0, 0.0):
                problems.append(f"lab quantity {q.name!r}: unit {q.unit!r} is not {term.local}'s canonical unit "
                                f"{term.canonical_unit!r}")
                continue
            qq = Quantity(q.name, term.local, term.iri, term.label, term.canonical_unit, q.range[0], q.range[1],
                          q.method, q.model_output, term.mode in ("offline", "online_offline"))
            self.by_name[q.name] = qq
            self.by_parameter.setdefault(term.local, qq)
        if problems:
            raise CatalogError("; ".join(problems))

    def resolve(self, ref: str) -> Quantity:
        """A quantity by its name or its ontology term; RowError ``unknown_quantity``."""
        q = self.by_name.get(ref) or self.by_parameter.get(ref)
        if q is None:
            raise RowError(f"unknown lab quantity {ref[:100]!r} (known: {', '.join(sorted(self.by_name))})",
                           "unknown_quantity")
        return q

    @staticmethod
    def convert(q: Quantity, value: float, unit: str | None) -> float:
        """``value`` in ``unit`` -> the quantity's unit, range-checked. RowError with the reason code."""
        if not math.isfinite(value):
            raise RowError(f"{q.name}: value {value!r} is not a finite number", "non_finite")
        if unit is None or not unit.strip():
            if q.unit != "dimensionless":
                raise RowError(f"{q.name}: no unit given; {q.parameter} is in {q.unit!r} (state the unit)",
                               "unknown_unit")
            unit = "dimensionless"
        elif unit.strip() in DIMENSIONLESS:  # a stated pure number: a fraction for a percent quantity
            unit = "dimensionless"
        try:
            a, c = affine(unit.strip(), q.unit)
        except UnitError as err:
            raise RowError(f"{q.name}: {err}", err.code) from err
        v = a * value + c
        if not q.lo <= v <= q.hi:
            raise RowError(f"{q.name}: {value:g} {unit} = {v:g} {q.unit} is outside [{q.lo:g}, {q.hi:g}] {q.unit}",
                           "out_of_range")
        return v
