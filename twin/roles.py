"""Input roles of the predictor, the feedback service and the dashboard, bound to ontology terms.

The services need points of the line in a given meaning: "the actual roll gap", "the online porosity
gauge after the calender". A role names that meaning as an ontology term and a value role
(``CalenderGap`` / ``actual``), so any plant's tag ids work: the tag map says which of its tags is
which term (``parameter = "CalenderGap"``, ``role = "actual"``), and the role finds it.

A config field that names an input (``[predictor.inputs] gap``, ``[feedback] gap_actual_tag``,
``[[feedback.manipulables]] setpoint_tag``, ``[feedback.measured.<output>] tag``) takes

* a tag id (``"calendering.gap_actual"``): that tag, as before;
* an ontology reference ``"<Term>/<role>"`` or ``"<Term>"`` (``"CalenderGap/actual"``; the role
  defaults to the role's own; the term may be its full IRI): the one tag of the tag map with that
  parameter and role.

A field left at its default resolves by its role when the default id is not in the tag map, so a
plant whose ids differ from the demo's needs no ``[predictor.inputs]`` at all. An explicit tag id
that is not in the tag map is an error (it is a typo, not a hint).

:func:`check_roles` lists every role a config needs, how it resolved, and each problem with the
field path and the fix (``twin check-config``). :func:`bind_predictor_inputs` and
:func:`bind_feedback` give the services plain tag ids at start-up and raise :class:`RoleError`
naming every role that does not resolve.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ontology.build import NS
from ontology.plant import ontology_index
from ontology.tagmap import Tag
from twin.ports import TagCatalog

TAG_ID = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_]+)+$")
VALUE_ROLES = ("setpoint", "actual", "measured", "predicted")


class RoleError(ValueError):
    """One or more input roles do not resolve to a tag; the message names each field path and its fix."""


@dataclass(frozen=True)
class RoleSpec:
    """What a consumer needs: a term in a value role, the demo's id for it, and why."""

    path: str  # config field path, e.g. "predictor.inputs.gap"
    term: str  # ontology term (local name)
    role: str  # setpoint / actual / measured
    default_id: str  # the id the demo's tag map gives it (and `twin init` writes)
    what: str  # what it is for, in words
    consumer: str  # predictor / feedback / dashboard


# The surrogate's line inputs (twin/predictor.py: line_to_model_inputs)
PREDICTOR_ROLES: dict[str, RoleSpec] = {
    "dry_thickness": RoleSpec("predictor.inputs.dry_thickness", "DryCoatingThickness", "measured",
                              "coating.dry_thickness", "dry coating thickness before the calender (um)", "predictor"),
    "areal_loading": RoleSpec("predictor.inputs.areal_loading", "ArealLoading", "measured", "coating.areal_loading",
                              "areal mass loading (mg/cm^2)", "predictor"),
    "gap": RoleSpec("predictor.inputs.gap", "CalenderGap", "actual", "calendering.gap_actual",
                    "actual roll gap (um)", "predictor"),
    "roll_speed": RoleSpec("predictor.inputs.roll_speed", "CalenderingSpeed", "actual", "calendering.roll_speed",
                           "calender roll (web) speed (m/min)", "predictor"),
    "roll_temperature": RoleSpec("predictor.inputs.roll_temperature", "CalenderRollTemperature", "actual",
                                 "calendering.roll_temperature", "roll surface temperature (degC)", "predictor"),
}

# The feedback service (twin/feedback/): measured outputs, the manipulables' setpoints, gap and speed
FEEDBACK_MEASURED_ROLES: dict[str, RoleSpec] = {
    "porosity": RoleSpec("feedback.measured.porosity.tag", "CalenderedPorosity", "measured",
                         "calendering.porosity_online", "online porosity gauge after the calender", "feedback"),
    "thickness_after_um": RoleSpec("feedback.measured.thickness_after_um.tag", "CalenderedCoatingThickness",
                                   "measured", "calendering.thickness_after",
                                   "thickness gauge after the calender", "feedback"),
}
FEEDBACK_SETPOINT_ROLES: dict[str, RoleSpec] = {
    "gap": RoleSpec("feedback.manipulables.gap.setpoint_tag", "CalenderGap", "setpoint", "calendering.gap_setpoint",
                    "roll gap setpoint the feedback may write", "feedback"),
    "roll_temperature": RoleSpec("feedback.manipulables.roll_temperature.setpoint_tag", "CalenderRollTemperature",
                                 "setpoint", "calendering.roll_temperature_setpoint",
                                 "roll temperature setpoint the feedback may write", "feedback"),
}
FEEDBACK_ROLES: dict[str, RoleSpec] = {
    "gap_actual_tag": RoleSpec("feedback.gap_actual_tag", "CalenderGap", "actual", "calendering.gap_actual",
                               "actual roll gap (um)", "feedback"),
    "web_speed_tag": RoleSpec("feedback.web_speed_tag", "CalenderingSpeed", "actual", "calendering.roll_speed",
                              "web speed at the calender (transport lag to the gauge)", "feedback"),
}

# The dashboard's plots read fixed tag ids (twin/web/app.js); a tag of the right term under another id
# is invisible there, so check-config warns and names the id to use.
DASHBOARD_ROLES: list[RoleSpec] = [
    RoleSpec("dashboard.porosity", "CalenderedPorosity", "measured", "calendering.porosity_online",
             "porosity plot, measured trace", "dashboard"),
    RoleSpec("dashboard.thickness", "CalenderedCoatingThickness", "measured", "calendering.thickness_after",
             "thickness plot, measured trace", "dashboard"),
    RoleSpec("dashboard.gap_setpoint", "CalenderGap", "setpoint", "calendering.gap_setpoint",
             "setpoint plot", "dashboard"),
    RoleSpec("dashboard.gap_actual", "CalenderGap", "actual", "calendering.gap_actual", "setpoint plot", "dashboard"),
    RoleSpec("dashboard.line_load_setpoint", "CalenderPressure", "setpoint", "calendering.line_load_setpoint",
             "setpoint plot", "dashboard"),
    RoleSpec("dashboard.line_load", "CalenderPressure", "actual", "calendering.line_load", "setpoint plot",
             "dashboard"),
    RoleSpec("dashboard.roll_temperature_setpoint", "CalenderRollTemperature", "setpoint",
             "calendering.roll_temperature_setpoint", "setpoint plot", "dashboard"),
    RoleSpec("dashboard.roll_temperature", "CalenderRollTemperature", "actual", "calendering.roll_temperature",
             "setpoint plot", "dashboard"),
    RoleSpec("dashboard.web_position", "WebPosition", "actual", "calendering.web_position",
             "web position in the header", "dashboard"),
]


def canonical_ids() -> dict[tuple[str, str], str]:
    """(term, role) -> the tag id the services and the dashboard expect by default."""
    out: dict[tuple[str, str], str] = {}
    for spec in [*PREDICTOR_ROLES.values(), *FEEDBACK_MEASURED_ROLES.values(), *FEEDBACK_SETPOINT_ROLES.values(),
                 *FEEDBACK_ROLES.values(), *DASHBOARD_ROLES]:
        out.setdefault((spec.term, spec.role), spec.default_id)
    return out


@dataclass(frozen=True)
class Resolution:
    spec: RoleSpec
    ref: str  # what the config says (or the default)
    tag_id: str | None  # the tag it resolved to (None: it did not)
    how: str  # "tag id", "term", "role" (default resolved by its role), "-"
    problem: str | None = None
    fix: str | None = None

    @property
    def ok(self) -> bool:
        return self.tag_id is not None

    def message(self) -> str:
        text = f"{self.spec.path}: {self.problem}"
        return text + (f"; fix: {self.fix}" if self.fix else "")


def parse_term_ref(ref: str) -> tuple[str, str | None] | None:
    """``"CalenderGap/actual"`` -> ("CalenderGap", "actual"); ``"CalenderGap"`` -> ("CalenderGap", None);
    an IRI of the ontology with or without ``/role``; None when ``ref`` is a tag id."""
    text = ref.strip()
    if TAG_ID.match(text):
        return None
    role = None
    head, sep, tail = text.rpartition("/")
    if sep and tail in VALUE_ROLES:
        text, role = head, tail
    if text.startswith(NS):
        text = text[len(NS):]
    return text, role


def _term_of(tag: Tag) -> str | None:
    p = tag.parameter
    if not p:
        return None
    return p[len(NS):] if p.startswith(NS) else p


def tags_with(tagmap: TagCatalog, term: str, role: str) -> list[str]:
    """Ids of the tags of the tag map with this parameter and role (sorted)."""
    return sorted(t.id for t in tagmap.tags.values() if _term_of(t) == term and t.role.value == role)


def _by_term(spec: RoleSpec, tagmap: TagCatalog, term: str, role: str, ref: str, how: str) -> Resolution:
    found = tags_with(tagmap, term, role)
    if len(found) == 1:
        return Resolution(spec, ref, found[0], how)
    if len(found) > 1:
        pick = spec.default_id if spec.default_id in found else None
        if pick is not None:  # the canonical id among several: it is the one meant
            return Resolution(spec, ref, pick, how)
        return Resolution(spec, ref, None, how, f"{len(found)} tags are {term} / {role}: {', '.join(found)}",
                          f'name one: {_field_hint(spec)} = "{found[0]}"')
    same_term = sorted(t.id for t in tagmap.tags.values() if _term_of(t) == term)
    extra = f" (tags of {term} in other roles: {', '.join(same_term)})" if same_term else ""
    return Resolution(spec, ref, None, how, f"no tag of the tag map is {term} / {role} "
                      f"({spec.what}){extra}",
                      f'give a tag parameter = "{term}" and role = "{role}" in the tag map, or set '
                      f'{_field_hint(spec)} = "<tag id>"')


def _field_hint(spec: RoleSpec) -> str:
    p = spec.path
    if p.startswith("predictor.inputs."):
        return f"[predictor.inputs] {p.rsplit('.', 1)[1]}"
    if p.startswith("feedback.measured."):
        return f"[feedback.measured.{p.split('.')[2]}] tag"
    if p.startswith("feedback.manipulables."):
        return f"[[feedback.manipulables]] (name = \"{p.split('.')[2]}\") setpoint_tag"
    if p.startswith("feedback."):
        return f"[feedback] {p.split('.', 1)[1]}"
    return p


def resolve(spec: RoleSpec, ref: str | None, tagmap: TagCatalog, *, explicit: bool) -> Resolution:
    """One role: the configured reference (or the default) -> a tag id of the tag map."""
    ref = spec.default_id if ref is None else ref
    term_ref = parse_term_ref(ref)
    if term_ref is None:  # a tag id
        if ref in tagmap.tags:
            return Resolution(spec, ref, ref, "tag id")
        if explicit:
            r = _by_term(spec, tagmap, spec.term, spec.role, ref, "-")
            hint = f'"{r.tag_id}" (the tag map\'s {spec.term} / {spec.role})' if r.ok else \
                f'"{spec.term}/{spec.role}" once the tag map has it'
            return Resolution(spec, ref, None, "tag id", f"tag {ref!r} is not in the tag map ({spec.what})",
                              f"set {_field_hint(spec)} = {hint}")
        return _by_term(spec, tagmap, spec.term, spec.role, ref, "role")
    term, role = term_ref
    if ontology_index().resolve(term) is None:
        return Resolution(spec, ref, None, "term", f"{ref!r} is neither a tag id nor a term of the ontology",
                          f'use a tag id or "{spec.term}/{spec.role}"')
    return _by_term(spec, tagmap, term, role or spec.role, ref, "term")


# -- the services' view -----------------------------------------------------------------------------

def predictor_resolutions(cfg: Any, tagmap: TagCatalog) -> list[Resolution]:
    inputs = cfg.inputs
    given: set[str] = getattr(inputs, "model_fields_set", set())
    return [resolve(spec, getattr(inputs, name), tagmap, explicit=name in given)
            for name, spec in PREDICTOR_ROLES.items()]


def feedback_resolutions(cfg: Any, tagmap: TagCatalog) -> list[Resolution]:
    given: set[str] = getattr(cfg, "model_fields_set", set())
    out = []
    for name, spec in FEEDBACK_ROLES.items():
        out.append(resolve(spec, getattr(cfg, name), tagmap, explicit=name in given))
    for output, m in cfg.measured.items():
        role = FEEDBACK_MEASURED_ROLES.get(output)
        if role is None:  # an output without a role: only an explicit tag id can name it
            spec = RoleSpec(f"feedback.measured.{output}.tag", "", "measured", m.tag, f"gauge of {output}", "feedback")
            out.append(Resolution(spec, m.tag, m.tag, "tag id") if m.tag in tagmap.tags else
                       Resolution(spec, m.tag, None, "tag id", f"tag {m.tag!r} is not in the tag map",
                                  f"set [feedback.measured.{output}] tag to a tag id of the tag map"))
            continue
        out.append(resolve(role, m.tag, tagmap, explicit="measured" in given))
    for m in cfg.manipulables:
        spec = FEEDBACK_SETPOINT_ROLES[m.name]
        out.append(resolve(spec, m.setpoint_tag, tagmap, explicit="manipulables" in given))
    return out


def dashboard_resolutions(tagmap: TagCatalog) -> list[Resolution]:
    """The dashboard reads fixed ids: a role is met only when its tag has the demo's id."""
    out = []
    for spec in DASHBOARD_ROLES:
        if spec.default_id in tagmap.tags:
            out.append(Resolution(spec, spec.default_id, spec.default_id, "tag id"))
            continue
        found = tags_with(tagmap, spec.term, spec.role)
        if found:
            out.append(Resolution(spec, spec.default_id, None, "-",
                                  f"the {spec.what} reads tag {spec.default_id!r}; the tag map has {spec.term} / "
                                  f"{spec.role} as {', '.join(found)}",
                                  f'rename tag {found[0]!r} to "{spec.default_id}" in the tag map'))
        else:
            out.append(Resolution(spec, spec.default_id, None, "-",
                                  f"the {spec.what} reads tag {spec.default_id!r} ({spec.term} / {spec.role}); "
                                  "the tag map has none (the trace stays empty)", None))
    return out


def check_roles(cfg: Any, tagmap: TagCatalog) -> tuple[list[Resolution], list[str], list[str]]:
    """Every role the config needs: (resolutions, errors, warnings). Errors: a role of an enabled
    predictor or feedback service that does not resolve. Warnings: the dashboard's, and the roles of
    a disabled service (they would fail when it is enabled)."""
    res: list[Resolution] = []
    errors: list[str] = []
    warnings: list[str] = []
    for enabled, items in ((cfg.predictor.enabled, predictor_resolutions(cfg.predictor, tagmap)),
                           (cfg.feedback.enabled, feedback_resolutions(cfg.feedback, tagmap))):
        res.extend(items)
        for r in items:
            if not r.ok:
                (errors if enabled else warnings).append(r.message() + ("" if enabled else " (service disabled)"))
    if cfg.feedback.enabled:
        warnings.extend(_write_warnings(cfg, tagmap, [r for r in res if r.ok and ".manipulables." in r.spec.path]))
    dash = dashboard_resolutions(tagmap)
    res.extend(dash)
    if cfg.api.enabled:
        warnings.extend(r.message() for r in dash if not r.ok)
    return res, errors, warnings


def _write_warnings(cfg: Any, tagmap: TagCatalog, setpoints: list[Resolution]) -> list[str]:
    """An approved proposal writes the setpoint tag's OPC-UA node: say so when no connector allows that node."""
    allowed = {n for c in cfg.connectors if getattr(c, "kind", None) == "opcua" for n in c.writes.allowed_nodes}
    out = []
    for r in setpoints:
        if r.tag_id is None:  # only resolved setpoints are passed
            continue
        nodes = [a for k, a, _ in tagmap.sources_of(r.tag_id) if k == "opcua"]
        if not nodes:
            out.append(f"{r.spec.path}: setpoint tag {r.tag_id!r} has no OPC-UA source: proposals for it cannot be "
                       "approved into a write")
        elif not allowed.intersection(nodes):
            out.append(f"{r.spec.path}: approving a proposal writes {nodes[0]!r} ({r.tag_id}), which no OPC-UA "
                       f"connector allows; fix: add it to [connectors.writes] allowed_nodes")
    return out


def bind_predictor_inputs(cfg: Any, tagmap: TagCatalog) -> dict[str, str]:
    """Model input name -> tag id; raises RoleError naming every input that does not resolve."""
    res = predictor_resolutions(cfg, tagmap)
    bad = [r.message() for r in res if not r.ok]
    if bad:
        raise RoleError("predictor inputs do not resolve:\n  " + "\n  ".join(bad))
    return {name: r.tag_id for name, r in zip(PREDICTOR_ROLES, res)}  # type: ignore[misc]


def bind_feedback(cfg: Any, tagmap: TagCatalog) -> Any:
    """A copy of the FeedbackConfig with every role replaced by its tag id; raises RoleError.

    A measured output resolved by its role (the field was left at its default) drops the default's
    factor: pint derives it from the tag's unit (a gauge in fractions and one in percent both work)."""
    res = feedback_resolutions(cfg, tagmap)
    bad = [r.message() for r in res if not r.ok]
    if bad:
        raise RoleError("feedback roles do not resolve:\n  " + "\n  ".join(bad))
    it = iter(res)
    update: dict[str, Any] = {name: next(it).tag_id for name in FEEDBACK_ROLES}
    measured = {}
    for output, m in cfg.measured.items():
        r = next(it)
        changes: dict[str, Any] = {"tag": r.tag_id}
        if r.how in ("role", "term") and r.tag_id != m.tag and "measured" not in cfg.model_fields_set:
            changes["factor"] = None
        measured[output] = m.model_copy(update=changes)
    manips = [m.model_copy(update={"setpoint_tag": next(it).tag_id}) for m in cfg.manipulables]
    update.update({"measured": measured, "manipulables": manips})
    return cfg.model_copy(update=update)
