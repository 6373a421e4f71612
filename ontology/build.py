"""Author the pilot-line ontology (owlready2) and its alignment; write them as RDF/XML.

``twin ontology build`` (or ``python -m ontology.build``) regenerates ``ontology/pilotline.owl`` and
``ontology/alignment.owl``; a test checks that the committed files equal a fresh build, so edit this
module or ``seed004_parameters.csv``, never the .owl files.

Content of ``pilotline.owl`` (namespace :data:`NS`, no ``owl:imports``):

* the manufacturing steps of seed 004 (Mixing ... FormationAndDegassing) as classes under
  ``ManufacturingStep``, chained by ``hasPredecessor some <step>``, with ``hasInput`` / ``hasOutput``
  (intermediate products) and ``usesEquipment`` (equipment classes) restrictions;
* ``Parameter`` with the pairwise disjoint ``MachineParameter`` / ``ProcessParameter`` /
  ``StructureParameter``; one subclass per row of ``seed004_parameters.csv`` (Tables 5-12 of seed 004)
  and a few parameters the demo line needs beyond the tables (``PROJECT_PARAMETERS``), each annotated
  with step, canonical unit (pint spelling, UCUM code, QUDT unit IRI), quantity kind (QUDT IRI),
  measurability (the table's method text), accuracy, online/offline and the table's criticality cells;
* ``TraceQuantity`` (roll id, web position, web speed, data gap), disjoint with ``Parameter``;
* value roles (``SetpointRole``, ``ActualRole``, ``MeasuredRole``, ``PredictedRole``) as individuals of
  ``ValueRole`` -- GPO's nominal vs actual distinction;
* ``Point`` (a plant data point, typed with its parameter class), ``Roll`` and the properties that
  :mod:`ontology.plant` uses for the plant individuals.
"""

from __future__ import annotations

import csv
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

HERE = Path(__file__).resolve().parent
OWL_PATH = HERE / "pilotline.owl"
ALIGNMENT_PATH = HERE / "alignment.owl"
CSV_PATH = HERE / "seed004_parameters.csv"

BASE = "https://w3id.org/pilotline-twin/ontology"
NS = BASE + "#"
ALIGNMENT_BASE = "https://w3id.org/pilotline-twin/alignment"
QUDT_UNIT = "http://qudt.org/vocab/unit/"
QUDT_QK = "http://qudt.org/vocab/quantitykind/"
SKOS = "http://www.w3.org/2004/02/skos/core#"

# steps in line order: (local name, label, input products, output products, equipment)
STEPS: list[tuple[str, str, list[str], list[str], list[str]]] = [
    ("Mixing", "mixing (slurry preparation)", ["ActiveMaterial", "Binder", "ConductiveAdditive", "Solvent"],
     ["Slurry"], ["Mixer"]),
    ("Coating", "coating", ["Slurry", "CurrentCollectorFoil"], ["CoatedElectrode"], ["SlotDieCoater"]),
    ("Drying", "drying", ["CoatedElectrode"], ["DriedElectrode"], ["Dryer"]),
    ("Calendering", "calendering", ["DriedElectrode"], ["CalenderedElectrode"], ["Calender"]),
    ("SlittingAndPostDrying", "slitting and post-drying", ["CalenderedElectrode"], ["SlitElectrode"],
     ["Slitter", "VacuumDryer"]),
    ("CellAssembly", "cell assembly", ["SlitElectrode", "Separator"], ["DryCell"], ["StackingMachine", "Welder"]),
    ("ElectrolyteFilling", "electrolyte filling and wetting", ["DryCell", "Electrolyte"], ["FilledCell"],
     ["FillingStation"]),
    ("FormationAndDegassing", "formation and degassing", ["FilledCell"], ["FormedCell"],
     ["FormationCycler", "DegassingStation"]),
]
# tag-map step spellings -> step class (``line`` is the line as a whole)
STEP_ALIASES = {
    "mixing": "Mixing", "slurry": "Mixing", "coating": "Coating", "drying": "Drying",
    "calendering": "Calendering", "slitting": "SlittingAndPostDrying", "post_drying": "SlittingAndPostDrying",
    "slitting_and_post_drying": "SlittingAndPostDrying", "cell_assembly": "CellAssembly",
    "assembly": "CellAssembly", "electrolyte_filling": "ElectrolyteFilling", "filling": "ElectrolyteFilling",
    "formation": "FormationAndDegassing", "formation_and_degassing": "FormationAndDegassing", "line": "Line",
}

PRODUCTS = {
    "RawMaterial": ["ActiveMaterial", "Binder", "ConductiveAdditive", "Solvent", "CurrentCollectorFoil",
                    "Separator", "Electrolyte"],
    "IntermediateProduct": ["Slurry", "CoatedElectrode", "DriedElectrode", "CalenderedElectrode",
                            "SlitElectrode", "DryCell", "FilledCell"],
    "FinalProduct": ["FormedCell"],
}
EQUIPMENT = {
    "Equipment": ["Mixer", "Coater", "Dryer", "Calender", "Slitter", "VacuumDryer", "StackingMachine", "Welder",
                  "FillingStation", "FormationCycler", "DegassingStation", "Gauge"],
    "Coater": ["SlotDieCoater", "CommaBarCoater"],
    "Gauge": ["LaserTriangulationGauge", "BetaGauge"],
}

# quantity kind -> (QUDT quantity kind local name, pint reference unit giving its dimension)
QUANTITY_KINDS: dict[str, tuple[str, str | None]] = {
    "Length": ("Length", "m"),
    "Area": ("Area", "m**2"),
    "Volume": ("Volume", "m**3"),
    "Velocity": ("Velocity", "m/s"),
    "AngularVelocity": ("AngularVelocity", "rad/s"),
    "Frequency": ("Frequency", "1/s"),
    "Temperature": ("Temperature", "K"),
    "Time": ("Time", "s"),
    "Mass": ("Mass", "kg"),
    "Force": ("Force", "N"),
    "ForcePerLength": ("ForcePerLength", "N/m"),
    "Pressure": ("Pressure", "Pa"),
    "StressIntensityFactor": ("StressIntensityFactor", "Pa*m**0.5"),
    "MassPerArea": ("MassPerArea", "kg/m**2"),
    "Density": ("Density", "kg/m**3"),
    "DynamicViscosity": ("DynamicViscosity", "Pa*s"),
    "VolumeFlowRate": ("VolumeFlowRate", "m**3/s"),
    "Energy": ("Energy", "J"),
    "Power": ("Power", "W"),
    "ElectricCurrent": ("ElectricCurrent", "A"),
    "Voltage": ("Voltage", "V"),
    "Resistance": ("Resistance", "ohm"),
    "ElectricConductivity": ("Conductivity", "S/m"),
    "SpecificCapacity": ("ElectricChargePerMass", "C/kg"),
    "DimensionlessRatio": ("DimensionlessRatio", "dimensionless"),
    "Categorical": ("", None),  # no unit: a class label, a recipe name, an image
}

KIND_CLASS = {"MP": "MachineParameter", "PP": "ProcessParameter", "SP": "StructureParameter"}


@dataclass(frozen=True)
class ParamRow:
    table: str  # "5".."12", or "" for a project parameter
    step: str
    kind: str
    name: str
    local_name: str
    unit_paper: str
    accuracy: str
    measurability: str
    online_offline: str
    canonical_unit: str
    ucum: str
    qudt_unit: str
    quantity_kind: str
    crit_empirical: str
    crit_continuum: str
    crit_discrete: str
    crit_ml: str
    note: str


# parameters the demo line measures that Tables 5-12 do not name (kept apart from the seed table)
PROJECT_PARAMETERS = [
    ParamRow("", "Calendering", "SP", "Calendered coating thickness", "CalenderedCoatingThickness", "", "", "",
             "online", "um", "um", "MicroM", "Length", "", "", "", "",
             "coating thickness after the calender (laser triangulation downstream of the rolls)"),
    ParamRow("", "Calendering", "SP", "Compaction degree", "CompactionDegree", "", "", "", "online", "percent",
             "%", "PERCENT", "DimensionlessRatio", "", "", "", "",
             "1 - h_after / h_before (seed 003)"),
    ParamRow("", "Calendering", "MP", "Roll force", "CalenderRollForce", "", "", "", "online", "kN", "kN",
             "KiloN", "Force", "", "", "", "", "total roll force from the load cells"),
    ParamRow("", "Calendering", "SP", "Calendered density", "CalenderedDensity", "", "", "areal loading / thickness after",
             "online_offline", "g/cm**3", "g/cm3", "GM-PER-CentiM3", "Density", "", "", "", "",
             "coating density after the calender (areal loading / calendered coating thickness)"),
    ParamRow("", "Calendering", "MP", "Control mode", "CalenderControlMode", "", "", "", "online",
             "dimensionless", "1", "UNITLESS", "Categorical", "", "", "", "",
             "0 = gap control, 1 = line-load control"),
    # offline structure parameters the lab measures on samples of a calendered roll (seed 004, Table 8 and
    # section 3.4: electronic conductivity is named among the calendered electrode's properties, not in the table)
    ParamRow("", "Calendering", "SP", "Electronic conductivity", "ElectronicConductivity", "", "",
             "four-point probe / through-plane two-probe on a punched sample", "offline", "S/m", "S/m", "S-PER-M",
             "ElectricConductivity", "", "", "", "", "electronic conductivity of the calendered coating (lab)"),
]

# traceability quantities: (local name, label, canonical unit, ucum, qudt unit, quantity kind)
TRACE_QUANTITIES = [
    ("RollId", "roll (lot) id", "dimensionless", "1", "UNITLESS", "Categorical"),
    ("ParentRollId", "id of the upstream roll the current roll is made from", "dimensionless", "1", "UNITLESS",
     "Categorical"),
    ("WebPosition", "web position since the roll started", "m", "m", "M", "Length"),
    ("WebSpeed", "web speed", "m/min", "m/min", "M-PER-MIN", "Velocity"),
    ("DataGap", "seconds without data from a source", "s", "s", "SEC", "Time"),
]

ROLES = [("SetpointRole", "setpoint", "nominal value asked of the machine (GPO: nominal parameter)"),
         ("ActualRole", "actual", "value the machine reports back (GPO: actual parameter)"),
         ("MeasuredRole", "measured", "structure parameter measured by a gauge or in the lab"),
         ("PredictedRole", "predicted", "value written by the twin's surrogate models")]


def load_rows() -> list[ParamRow]:
    with CSV_PATH.open(newline="", encoding="utf-8") as fh:
        return [ParamRow(**{k: (v or "").strip() for k, v in r.items()}) for r in csv.DictReader(fh)]


def all_rows() -> list[ParamRow]:
    return load_rows() + PROJECT_PARAMETERS


def build_world() -> Any:  # an owlready2 World (the library has no type hints)
    """The ontology in a fresh owlready2 World (nothing global is touched)."""
    from owlready2 import (
        AllDisjoint,
        AnnotationProperty,
        DataProperty,
        FunctionalProperty,
        ObjectProperty,
        Thing,
        World,
        locstr,
    )

    world = World()
    onto = world.get_ontology(NS)
    qudt_u = onto.get_namespace(QUDT_UNIT)
    qudt_qk = onto.get_namespace(QUDT_QK)
    skos = onto.get_namespace(SKOS)

    def cls(name: str, bases: tuple[Any, ...], label: str | None = None, comment: str | None = None) -> Any:
        c: Any = types.new_class(name, bases)
        if label:
            c.label = [locstr(label, "en")]
        if comment:
            c.comment = [locstr(comment, "en")]
        return c

    with onto:
        onto.metadata.comment = [locstr(
            "Pilot-line ontology of the pilotline-twin project: manufacturing steps, intermediate products, "
            "equipment and the machine / process / structure parameters of seed 004 (Tables 5-12), with "
            "units, measurability and online/offline status. Generated by ontology/build.py.", "en")]
        onto.metadata.versionInfo = ["1"]

        # annotation properties (values: literals, or IRIs of steps / QUDT terms)
        ann = {}
        for name in ("ofStep", "canonicalUnit", "ucumCode", "qudtUnit", "quantityKind", "measurability",
                     "accuracy", "measurementMode", "paperUnit", "seedTable", "criticalityEmpirical",
                     "criticalityContinuum", "criticalityDiscrete", "criticalityML", "stepOrder", "kindCode",
                     "roleCode", "tagStep"):
            ann[name] = cls(name, (AnnotationProperty,))
        with skos:
            pref = types.new_class("prefLabel", (AnnotationProperty,))
            alt = types.new_class("altLabel", (AnnotationProperty,))

        # object / data properties
        hasPredecessor = cls("hasPredecessor", (ObjectProperty,), "has predecessor",
                             "the step that directly precedes this one on the line")
        hasInput = cls("hasInput", (ObjectProperty,), "has input")
        hasOutput = cls("hasOutput", (ObjectProperty,), "has output")
        usesEquipment = cls("usesEquipment", (ObjectProperty,), "uses equipment")
        hasRole = cls("hasRole", (ObjectProperty, FunctionalProperty), "has role",
                      "setpoint, actual, measured or predicted")
        onEquipment = cls("onEquipment", (ObjectProperty,), "on equipment")
        hasSource = cls("hasSource", (ObjectProperty,), "has source", "a source address that yields the point's values")
        inLine = cls("inLine", (ObjectProperty, FunctionalProperty), "in line")
        for name, rng in (("tagId", str), ("address", str), ("addressKind", str), ("sourceUnit", str), ("pointUnit", str),
                          ("rangeMin", None), ("rangeMax", None), ("pointAccuracy", None),
                          ("isOnline", bool), ("stepName", str)):
            p = cls(name, (DataProperty,))
            if rng is not None:  # numbers: xsd:double in the plant file (owlready2 would say xsd:decimal)
                p.range = [rng]

        # steps
        Process = cls("ManufacturingStep", (Thing,), "manufacturing step",
                      "a step of electrode and cell manufacturing (seed 004, section 4.1)")
        Line = cls("Line", (Thing,), "production line")
        Product = cls("Product", (Thing,), "product", "matter that enters or leaves a manufacturing step")
        prod_cls: dict[str, type] = {}
        for parent, kids in PRODUCTS.items():
            p = cls(parent, (Product,), parent)
            for k in kids:
                prod_cls[k] = cls(k, (p,))
        Equip = None
        eq_cls: dict[str, type] = {}
        for parent, kids in EQUIPMENT.items():
            if parent == "Equipment":
                Equip = eq_cls["Equipment"] = cls("Equipment", (Thing,), "equipment", "a machine or gauge of the line")
            for k in kids:
                eq_cls[k] = cls(k, (eq_cls[parent],))
        step_cls: dict[str, type] = {}
        prev = None
        for order, (name, label, ins, outs, eqs) in enumerate(STEPS, start=1):
            s = cls(name, (Process,), label)
            s.stepOrder.append(order)
            if prev is not None:
                s.is_a.append(hasPredecessor.some(prev))
            for i in ins:
                s.is_a.append(hasInput.some(prod_cls[i]))
            for o in outs:
                s.is_a.append(hasOutput.some(prod_cls[o]))
            for e in eqs:
                s.is_a.append(usesEquipment.some(eq_cls[e]))
            step_cls[name] = prev = s
        AllDisjoint(list(step_cls.values()))
        AllDisjoint([Process, Product, Equip, Line])

        # parameters
        Parameter = cls("Parameter", (Thing,), "parameter",
                        "a quantity of a manufacturing step that the line sets or measures (seed 004)")
        kinds = {
            "MP": cls("MachineParameter", (Parameter,), "machine parameter (MP)",
                      "externally controlled input of a step"),
            "PP": cls("ProcessParameter", (Parameter,), "process parameter (PP)",
                      "cannot be controlled externally; a result of the chosen MPs that affects the step's result"),
            "SP": cls("StructureParameter", (Parameter,), "structure parameter (SP)",
                      "resulting or output property of a step"),
        }
        for code, k in kinds.items():
            k.kindCode.append(code)
        AllDisjoint(list(kinds.values()))
        Trace = cls("TraceQuantity", (Thing,), "traceability quantity",
                    "roll id, web position and other values that place a sample, not a parameter")
        Trace.kindCode.append("TRACE")
        AllDisjoint([Parameter, Trace, Process, Product, Equip])

        units_done: dict[str, object] = {}
        qk_done: dict[str, object] = {}

        def unit_ind(code: str) -> object:
            if code not in units_done:
                units_done[code] = Thing(code, namespace=qudt_u)
            return units_done[code]

        def qk_ind(name: str) -> object:
            qudt_name = QUANTITY_KINDS[name][0]
            if qudt_name not in qk_done:
                qk_done[qudt_name] = Thing(qudt_name, namespace=qudt_qk)
            return qk_done[qudt_name]

        def annotate(c: Any, step: str, canonical: str, ucum: str, qudt: str, qk: str) -> None:
            if step:
                c.ofStep.append(step_cls[step])
            c.canonicalUnit.append(canonical)
            c.ucumCode.append(ucum)
            if qudt:
                c.qudtUnit.append(unit_ind(qudt))
            if QUANTITY_KINDS[qk][0]:
                c.quantityKind.append(qk_ind(qk))
            else:
                c.quantityKind.append(qk)

        for r in all_rows():
            c = cls(r.local_name, (kinds[r.kind],), r.name)
            c.prefLabel = [locstr(r.name, "en")] if r.table else []
            annotate(c, r.step, r.canonical_unit, r.ucum, r.qudt_unit, r.quantity_kind)
            c.measurability.append(r.measurability)
            c.accuracy.append(r.accuracy)
            c.measurementMode.append(r.online_offline or "unspecified")
            if r.table:
                c.seedTable.append(int(r.table))
                c.paperUnit.append(r.unit_paper)
                c.criticalityEmpirical.append(r.crit_empirical)
                c.criticalityContinuum.append(r.crit_continuum)
                c.criticalityDiscrete.append(r.crit_discrete)
                c.criticalityML.append(r.crit_ml)
            if r.note:
                c.comment = [locstr(r.note, "en")]
        for name, label, canonical, ucum, qudt, qk in TRACE_QUANTITIES:
            c = cls(name, (Trace,), label)
            annotate(c, "", canonical, ucum, qudt, qk)
        kinds["SP"].altLabel = [locstr("output property", "en")]

        # roles, points, rolls
        Role = cls("ValueRole", (Thing,), "value role", "what a point's value means: setpoint, actual, ...")
        for name, code, comment in ROLES:
            ind = Role(name)
            ind.label = [locstr(code, "en")]
            ind.comment = [locstr(comment, "en")]
            ind.roleCode.append(code)
        AllDisjoint([Role, Parameter, Trace, Process, Product, Equip])
        cls("Point", (Thing,), "data point",
            "a source address of the plant (OPC-UA node, MQTT topic, recorded column) that yields values of one "
            "parameter in one role; typed with its parameter class")
        cls("SourceAddress", (Thing,), "source address",
            "an OPC-UA NodeId, MQTT topic pattern or recorded column, with the unit the source speaks")
        cls("Roll", (Thing,), "roll (lot)", "a wound web of electrode; the unit of trace and track")
        _ = (hasRole, onEquipment, inLine, hasSource, pref, alt)
    return world, onto


def build_ontology_bytes() -> bytes:
    import io

    _, onto = build_world()
    buf = io.BytesIO()
    onto.save(file=buf, format="rdfxml")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------------------
# Alignment (skos mappings to BVCO, GPO, EMMO and the EMMO electrochemistry domain). Sources of the IRIs:
#   GPO: General-Process-Ontology GPO.ttl (as vendored in HE-BatCAT/lbco external/GPO.ttl), namespace
#        https://gpo.ontology.link/
#   BVCO: Battery-Value-Chain-Ontology/ontology BVCO.ttl, namespace
#        https://gitlab.cc-asp.fraunhofer.de/ISC-Public/ISC-Digital/ontology/BVCO#
#   EMMO / electrochemistry: emmo-repo/domain-battery context/context.json (label -> IRI); the manufacturing
#        steps and the calendering properties from emmo-repo/domain-electrochemistry 0.37.2
#        (modules/electrochemistry-manufacturing.ttl: ElectrodeCoatingProcess, ElectrodeDrying,
#        ElectrodeCalendering; reference/electrochemistry-quantities.ttl: CalenderedCoatingThickness,
#        CalenderedDensity, PositiveElectrodeCoatingPorosity)
# ---------------------------------------------------------------------------------------------------------------
GPO = "https://gpo.ontology.link/"
BVCO = "https://gitlab.cc-asp.fraunhofer.de/ISC-Public/ISC-Digital/ontology/BVCO#"
EMMO = "https://w3id.org/emmo#"
ECHEM = "https://w3id.org/emmo/domain/electrochemistry#"

EXT = {
    # GPO
    "gpo:Mixing": GPO + "GPO_45b3677d_f436_4cfd_aa55_3ae5eab2e232",
    "gpo:LiquidSolidMixing": GPO + "GPO_ee89d1c9_bd1a_452d_bcf7_cd583af0369d",
    "gpo:MixingDevice": GPO + "GPO_47df1439_d8e2_4392_8e90_258103fbb4fe",
    "gpo:MixingSpeed": GPO + "GPO_72ce86f4_f61d_4a79_86bd_1db6b4c6f270",
    "gpo:Coating": GPO + "GPO_ce7db854_9e14_4339_9e71_a8d4ab8f6331",
    "gpo:Calendering": GPO + "GPO_f846eaba_e75a_49df_b71a_5f769e6a7e7e",
    "gpo:Pressing": GPO + "GPO_d7b2ecea_f055_4e3e_b5b9_020b8d81130d",
    "gpo:ThermalDrying": GPO + "GPO_c7c1e32d_025b_4e30_8e8f_5b16e14a8190",
    "gpo:VacuumDrying": GPO + "GPO_66366e89_4a13_4996_b887_a127e498ed98",
    "gpo:DryingTemperature": GPO + "GPO_fdf81376_fd5d_4f7a_ab0e_f22cd0d35bd2",
    "gpo:Cutting": GPO + "GPO_275452d1_abaa_4c59_b4af_2f14332209c6",
    "gpo:Stacking": GPO + "GPO_5f02dbb0_2803_4aaa_9104_ba39f17a4c8d",
    "gpo:Welding": GPO + "GPO_7e0349b1_f5cd_4a61_ae5b_52441f61aa1b",
    "gpo:Filling": GPO + "GPO_680078b4_e669_407d_a9a5_902c1f55031a",
    "gpo:ChargeTreatment": GPO + "GPO_a1839bf6_9b67_48ca_a5a4_069b6e7fc0e9",
    "gpo:Degassing": GPO + "GPO_a32722d5_42c1_446f_a071_05071047831f",
    "gpo:ProcessParameter": GPO + "GPO_f3f83d9a_ad84_4ce0_aaec_a388f18cd681",
    "gpo:ObjectParameter": GPO + "GPO_6dab7b9a_48f2_4ab2_b031_214d5ceac2d0",
    "gpo:ObjectHumidity": GPO + "GPO_ba0bee97_1f2d_4201_b6dd_4868c8963780",
    "gpo:hasPredecessor": GPO + "GPO_389686f5_86d8_4e97_ba71_0537bedf0f38",
    "gpo:hasInput": GPO + "GPO_703ec528_ea40_486e_9924_b911782b1a75",
    "gpo:hasOutput": GPO + "GPO_8c869b47_a258_43b9_9c75_4285a80a1dfb",
    "gpo:hasTool": GPO + "GPO_2d23e608_57f5_4d0d_ba4e_c06ab274e101",
    "gpo:Rheometer": GPO + "GPO_b302ef9c_fb9d_4066_87f4_cb2cf7611bee",
    "gpo:WeighingScale": GPO + "GPO_1f42cf42_299b_43c4_8616_154920665540",
    "gpo:Sensor": GPO + "GPO_4823c56f_3708_4ddb_94b1_ccb928e65989",
    # BVCO
    "bvco:BatteryManufacturing": BVCO + "BVCO_e180eaa0_f66f_4b49_8370_ef574d5a77dc",
    "bvco:BatteryCellManufacturing": BVCO + "BVCO_813609a2_35e3_4d85_b902_5f1aebb97ab0",
    "bvco:BatteryComponentManufacturing": BVCO + "BVCO_a21be399_113f_40bf_8497_2d199785c5b3",
    "bvco:Electrode": BVCO + "BVCO_38ce2e41_8b62_4851_a5ac_47d77a6ffa3c",
    "bvco:ActiveMaterial": BVCO + "BVCO_f25eeb2f_54b0_4c4a_ada8_c7e53b11d49e",
    "bvco:CurrentCollector": BVCO + "BVCO_1f4d6016_890f_4e51_a2d0_1a2d0978f689",
    "bvco:Separator": BVCO + "BVCO_a2b509d5_32a0_404b_80b6_3f5ec39b851f",
    "bvco:Electrolyte": BVCO + "BVCO_1f9ffbd0_9c82_4a65_9f57_bc88712fa0fe",
    "bvco:GalvanicCell": BVCO + "BVCO_b4f9cd47_3d29_4fdb_b00a_060625e34b69",
    # EMMO core
    "emmo:Calendering": EMMO + "EMMO_c7f4684e_ee74_4119_87e0_ecd255e10d2f",
    "emmo:CoatingManufacturing": EMMO + "EMMO_92028373_3a43_4b80_9a69_caca22df3918",
    "emmo:Manufacturing": EMMO + "EMMO_a4d66059_5dd3_4b90_b4cb_10960559441b",
    "emmo:ManufacturingDevice": EMMO + "EMMO_86a305d1_7644_48be_b84c_1f976679b904",
    "emmo:Suspension": EMMO + "EMMO_4a464c8d_8895_44a8_a628_aed13509f1bd",
    "emmo:Porosity": EMMO + "EMMO_3a6578ac_aee0_43b9_9bc6_1eb208c8c9a9",
    "emmo:Thickness": EMMO + "EMMO_43003c86_9d15_433b_9789_ee2940920656",
    "emmo:Tortuosity": EMMO + "EMMO_c413d96f_c57b_4c70_9ac1_312db6c009a8",
    "emmo:Pressure": EMMO + "EMMO_50a44256_9dc5_434b_bad4_74a4d9a29989",
    "emmo:CelsiusTemperature": EMMO + "EMMO_66bc9029_f473_45ff_bab9_c3509ff37a22",
    "emmo:Density": EMMO + "EMMO_06448f64_8db6_4304_8b2c_e785dba82044",
    "emmo:DynamicViscosity": EMMO + "EMMO_908da3d5_775e_425e_af96_33914618eb66",
    "emmo:MassFraction": EMMO + "EMMO_7c055d65_2929_40e1_af4f_4bf10995ad50",
    "emmo:Mass": EMMO + "EMMO_ed4af7ae_63a2_497e_bb88_2309619ea405",
    "emmo:Duration": EMMO + "EMMO_0adabf6f_7404_44cb_9f65_32d83d8101a3",
    "emmo:DewPointTemperature": EMMO + "EMMO_a383e332_a271_463f_9e44_559604547220",
    "emmo:ElectricCurrent": EMMO + "EMMO_c995ae70_3b84_4ebb_bcfc_69e6a281bb88",
    "emmo:MeasuredProperty": EMMO + "EMMO_873b0ab3_88e6_4054_b901_5531e01f14a4",
    "emmo:ConventionalProperty": EMMO + "EMMO_d8aa8e1f_b650_416d_88a0_5118de945456",
    "emmo:Strain": EMMO + "EMMO_acf636d4_9ac2_4ce3_960a_d54338e6cae3",
    # EMMO electrochemistry domain
    "echem:CalenderedCoatingThickness": ECHEM + "electrochemistry_f9e1c862_c510_4b11_9141_bc91045df817",
    "echem:CalenderedDensity": ECHEM + "electrochemistry_520995f8_ec9c_4b3c_bb64_2cd691947379",
    "echem:CoatingThickness": ECHEM + "electrochemistry_3b938708_e7e4_4ac0_a959_9c04306302e7",
    "echem:MassLoading": ECHEM + "electrochemistry_c955c089_6ee1_41a2_95fc_d534c5cfd3d5",
    "echem:CoatedElectrode": ECHEM + "electrochemistry_92147e31_d015_4889_a092_04fbab033f15",
    "echem:ElectrodeCoatingProcess": ECHEM + "electrochemistry_cfcf6ca6_70e9_4369_9314_7f20b3efbf21",
    "echem:ElectrodeDrying": ECHEM + "electrochemistry_36c2e19c_cb1a_41e9_bcd5_baf9dfd21905",
    "echem:ElectrodeCalendering": ECHEM + "electrochemistry_38a2b407_3be9_4b66_86cf_b961cdffb4c9",
    "echem:PositiveElectrodeCoatingPorosity": ECHEM + "electrochemistry_7481c4c9_c247_4248_a045_a1077230acba",
    "echem:ConductiveAdditive": ECHEM + "electrochemistry_82fef384_8eec_4765_b707_5397054df594",
    "echem:CoulombicEfficiency": ECHEM + "electrochemistry_5696453c_9da7_41e2_bbda_603c1b90a8fc",
    "echem:Capacity": ECHEM + "electrochemistry_791c1915_a791_4450_acd8_7f94764743b5",
}

# (our local name, relation, external key). exactMatch only where the meaning is the same; closeMatch where
# the external term is near but broader in use; broadMatch where the external term is a more general one.
ALIGNMENTS: list[tuple[str, str, str]] = [
    # steps
    ("Mixing", "closeMatch", "gpo:LiquidSolidMixing"), ("Mixing", "broadMatch", "gpo:Mixing"),
    ("Mixing", "broadMatch", "bvco:BatteryComponentManufacturing"),
    ("Coating", "broadMatch", "gpo:Coating"), ("Coating", "broadMatch", "emmo:CoatingManufacturing"),
    ("Coating", "broadMatch", "bvco:BatteryComponentManufacturing"),
    ("Drying", "closeMatch", "gpo:ThermalDrying"), ("Drying", "broadMatch", "bvco:BatteryComponentManufacturing"),
    ("Calendering", "closeMatch", "emmo:Calendering"), ("Calendering", "broadMatch", "gpo:Pressing"),
    # the EMMO electrochemistry domain's manufacturing module names the electrode steps BVCO leaves out
    ("Coating", "closeMatch", "echem:ElectrodeCoatingProcess"), ("Drying", "closeMatch", "echem:ElectrodeDrying"),
    ("Calendering", "closeMatch", "echem:ElectrodeCalendering"),
    ("Calendering", "broadMatch", "bvco:BatteryComponentManufacturing"),
    ("SlittingAndPostDrying", "broadMatch", "gpo:Cutting"), ("SlittingAndPostDrying", "broadMatch", "gpo:VacuumDrying"),
    ("CellAssembly", "broadMatch", "bvco:BatteryCellManufacturing"), ("CellAssembly", "broadMatch", "gpo:Stacking"),
    ("ElectrolyteFilling", "broadMatch", "gpo:Filling"),
    ("ElectrolyteFilling", "broadMatch", "bvco:BatteryCellManufacturing"),
    ("FormationAndDegassing", "broadMatch", "gpo:ChargeTreatment"),
    ("FormationAndDegassing", "broadMatch", "gpo:Degassing"),
    ("FormationAndDegassing", "broadMatch", "bvco:BatteryCellManufacturing"),
    ("ManufacturingStep", "broadMatch", "emmo:Manufacturing"),
    # relations, kinds and roles
    ("hasPredecessor", "exactMatch", "gpo:hasPredecessor"), ("hasInput", "closeMatch", "gpo:hasInput"),
    ("hasOutput", "closeMatch", "gpo:hasOutput"), ("usesEquipment", "closeMatch", "gpo:hasTool"),
    ("MachineParameter", "broadMatch", "gpo:ProcessParameter"),
    ("ProcessParameter", "closeMatch", "gpo:ProcessParameter"),
    ("StructureParameter", "broadMatch", "gpo:ObjectParameter"),
    ("MeasuredRole", "closeMatch", "emmo:MeasuredProperty"),
    ("SetpointRole", "broadMatch", "emmo:ConventionalProperty"),
    # products, equipment
    ("Slurry", "broadMatch", "emmo:Suspension"), ("CoatedElectrode", "closeMatch", "echem:CoatedElectrode"),
    ("DriedElectrode", "broadMatch", "bvco:Electrode"), ("CalenderedElectrode", "broadMatch", "bvco:Electrode"),
    ("ActiveMaterial", "exactMatch", "bvco:ActiveMaterial"),
    ("ConductiveAdditive", "exactMatch", "echem:ConductiveAdditive"),
    ("CurrentCollectorFoil", "closeMatch", "bvco:CurrentCollector"), ("Separator", "exactMatch", "bvco:Separator"),
    ("Electrolyte", "exactMatch", "bvco:Electrolyte"), ("FormedCell", "broadMatch", "bvco:GalvanicCell"),
    ("Mixer", "closeMatch", "gpo:MixingDevice"), ("Equipment", "broadMatch", "emmo:ManufacturingDevice"),
    ("Gauge", "closeMatch", "gpo:Sensor"),
    # mixing
    ("MixerRotationalSpeed", "closeMatch", "gpo:MixingSpeed"), ("FormulationRatio", "broadMatch", "emmo:MassFraction"),
    ("SolidContent", "broadMatch", "emmo:MassFraction"), ("MixingTemperature", "broadMatch", "emmo:CelsiusTemperature"),
    ("MixingTime", "broadMatch", "emmo:Duration"), ("SlurryDensity", "broadMatch", "emmo:Density"),
    ("SlurryViscosity", "broadMatch", "emmo:DynamicViscosity"),
    # coating (every MP and SP)
    ("CoatingSetUp", "broadMatch", "gpo:ProcessParameter"), ("CoatingSpeed", "broadMatch", "gpo:ProcessParameter"),
    ("CoatingGap", "broadMatch", "gpo:ProcessParameter"), ("CoatingWebTension", "broadMatch", "gpo:ProcessParameter"),
    ("CoatingAmbientTemperature", "broadMatch", "emmo:CelsiusTemperature"),
    ("CoatingSlurryRheology", "broadMatch", "emmo:DynamicViscosity"),
    ("WetFilmThickness", "broadMatch", "echem:CoatingThickness"), ("WetFilmThickness", "broadMatch", "emmo:Thickness"),
    ("CoatingDefects", "broadMatch", "gpo:ObjectParameter"), ("EdgeGeometry", "broadMatch", "gpo:ObjectParameter"),
    ("CoatingAdhesion", "broadMatch", "gpo:ObjectParameter"), ("ArealLoading", "closeMatch", "echem:MassLoading"),
    # drying
    ("DryingTemperature", "closeMatch", "gpo:DryingTemperature"),
    ("DryingTemperature", "broadMatch", "emmo:CelsiusTemperature"),
    ("DryCoatingThickness", "closeMatch", "echem:CoatingThickness"), ("DriedCoatingWeight", "broadMatch", "echem:MassLoading"),
    ("DriedPorosity", "broadMatch", "emmo:Porosity"),
    # calendering (every MP and SP)
    ("CalenderGap", "broadMatch", "gpo:ProcessParameter"), ("CalenderPressure", "broadMatch", "emmo:Pressure"),
    ("CalenderPressure", "broadMatch", "gpo:ProcessParameter"),
    ("CalenderingSpeed", "broadMatch", "gpo:ProcessParameter"),
    ("CalenderRollTemperature", "broadMatch", "emmo:CelsiusTemperature"),
    ("ElectrodeComposition", "broadMatch", "emmo:MassFraction"),
    ("CalenderThickness", "broadMatch", "emmo:Thickness"),
    ("CalenderThickness", "closeMatch", "echem:CalenderedCoatingThickness"),
    ("CalenderedPorosity", "closeMatch", "emmo:Porosity"), ("PoreSizeDistribution", "broadMatch", "gpo:ObjectParameter"),
    ("CalenderedMicrostructure", "broadMatch", "gpo:ObjectParameter"),
    ("TortuosityFactor", "closeMatch", "emmo:Tortuosity"), ("CrossPlaneTortuosityFactor", "broadMatch", "emmo:Tortuosity"),
    ("Hardness", "broadMatch", "gpo:ObjectParameter"), ("YoungModulus", "broadMatch", "gpo:ObjectParameter"),
    ("FractureToughness", "broadMatch", "gpo:ObjectParameter"), ("CalenderedRoughness", "broadMatch", "gpo:ObjectParameter"),
    ("CalenderedAdhesion", "broadMatch", "gpo:ObjectParameter"),
    ("CalenderedCoatingThickness", "exactMatch", "echem:CalenderedCoatingThickness"),
    ("CalenderedDensity", "exactMatch", "echem:CalenderedDensity"), ("CalenderedDensity", "broadMatch", "emmo:Density"),
    # the domain's porosity of a positive electrode's coating is narrower than a calendered coating's porosity
    ("CalenderedPorosity", "narrowMatch", "echem:PositiveElectrodeCoatingPorosity"),
    ("CompactionDegree", "broadMatch", "emmo:Strain"), ("CalenderRollForce", "broadMatch", "gpo:ProcessParameter"),
    ("CalenderControlMode", "broadMatch", "gpo:ProcessParameter"),
    ("ElectronicConductivity", "broadMatch", "gpo:ObjectParameter"),
    # later steps
    ("SlittingResidualHumidity", "broadMatch", "gpo:ObjectHumidity"),
    ("PostDryingResidualMoisture", "broadMatch", "gpo:ObjectHumidity"),
    ("DewPoint", "exactMatch", "emmo:DewPointTemperature"), ("SlittingWeight", "broadMatch", "emmo:Mass"),
    ("StackWeight", "broadMatch", "emmo:Mass"),
    ("FormationElectrochemicalParameters", "broadMatch", "emmo:ElectricCurrent"),
    ("FormationCapacity", "broadMatch", "echem:Capacity"), ("CoulombicEfficiency", "exactMatch", "echem:CoulombicEfficiency"),
]
# a related (not equivalent) term kept for the record: GPO files Calendering under Coating (docs/ontology.md)
RELATED: list[tuple[str, str]] = [("Calendering", "gpo:Calendering")]


def build_alignment_bytes() -> bytes:
    """The alignment as RDF/XML, written in a fixed order (byte-stable)."""
    by_subject: dict[str, list[tuple[str, str]]] = {}
    for local, rel, key in ALIGNMENTS:
        by_subject.setdefault(local, []).append((rel, EXT[key]))
    for local, key in RELATED:
        by_subject.setdefault(local, []).append(("relatedMatch", EXT[key]))
    out = ['<?xml version="1.0" encoding="utf-8"?>',
           '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"',
           '         xmlns:rdfs="http://www.w3.org/2000/01/rdf-schema#"',
           '         xmlns:owl="http://www.w3.org/2002/07/owl#"',
           f'         xmlns:skos="{SKOS}">',
           f'  <owl:Ontology rdf:about="{ALIGNMENT_BASE}">',
           '    <rdfs:comment xml:lang="en">SKOS mappings from the pilotline-twin ontology to BVCO, GPO, EMMO and '
           'the EMMO electrochemistry domain. Refers to their IRIs only (no imports). Generated by '
           'ontology/build.py.</rdfs:comment>',
           '  </owl:Ontology>']
    for local in sorted(by_subject):
        out.append(f'  <rdf:Description rdf:about="{escape(NS + local)}">')
        for rel, iri in sorted(by_subject[local]):
            out.append(f'    <skos:{rel} rdf:resource="{escape(iri)}"/>')
        out.append("  </rdf:Description>")
    out.append("</rdf:RDF>")
    return ("\n".join(out) + "\n").encode("utf-8")


def build(write: bool = True) -> tuple[bytes, bytes]:
    owl, alignment = build_ontology_bytes(), build_alignment_bytes()
    if write:
        OWL_PATH.write_bytes(owl)
        ALIGNMENT_PATH.write_bytes(alignment)
    return owl, alignment


if __name__ == "__main__":  # pragma: no cover
    o, a = build()
    print(f"wrote {OWL_PATH} ({len(o)} bytes) and {ALIGNMENT_PATH} ({len(a)} bytes)")
