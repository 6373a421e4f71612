"""One set of definitions from the line to the model (issue #16, item 5).

The line's gauges, the simulated line, the DEM reference, the training features, the predictor's mapping from
line tags and the feedback targets all speak about the same four quantities. They are defined here, once, and
every one of those places imports them from here.

**Solid densities** (g/cm³). The cathode is active material (NMC) plus a carbon-binder domain (CBD: carbon black
and PVDF). The CBD is itself porous at the nanometre scale: its *skeletal* density (carbon and binder solids only)
is ≈ 1.84 g/cm³, its *apparent* density (solids plus the nanopores inside it) 0.95 g/cm³, a CBD nanoporosity of
≈ 0.48 (the value the DEM uses for the CBD's mass).

**Porosity.** Two kinds, never mixed:

* ``total`` — every pore, including the CBD's nanopores: what a thickness gauge plus the areal loading measure
  (``ε = 1 − M / (ρ_skeletal · h)``), what the line's porosity tags and the feedback targets mean, and what the
  simulated line reports;
* ``macro`` — the pores between particles only, the CBD counted as solid at its apparent density: what the DEM
  and its voxel metrics resolve (the resolved pore space that carries the electrolyte's tortuous transport), and
  what the surrogate takes and returns.

The same mass fills the same volume either way, so ``(1 − ε_total) ρ_skeletal = (1 − ε_macro) ρ_apparent`` and
``ε_total = 1 − (1 − ε_macro) ρ_apparent / ρ_skeletal`` — at 96 wt % NMC a macro-porosity of 0.25 is a total
porosity of 0.31.

**Compaction degree** (seed 003, eq. 3): ``Π = 1 − gap / h0`` — the coating gap (roll to roll minus the foil)
over the dry coating thickness before the calender; the DEM's top wall stops at ``h0 (1 − Π)``.

**Line load**: the roll force per unit coating width, N/mm (the DEM: peak wall pressure × nip contact length).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PorosityKind = Literal["total", "macro"]

#: NMC (LiNi_xMn_yCo_zO2) crystal density, g/cm³ (NMC111 4.75; NMC811 4.75–4.8)
RHO_NMC = 4.75
#: carbon black (conductive additive, e.g. C65) skeletal density, g/cm³
RHO_CARBON_BLACK = 1.90
#: PVDF binder, g/cm³
RHO_PVDF = 1.78
#: apparent density of the carbon-binder domain (nanopores counted as solid), g/cm³ — the DEM's CBD density
RHO_CBD_APPARENT = 0.95


@dataclass(frozen=True)
class Recipe:
    """Dry-coating composition. ``am_fraction`` is the active material's mass fraction; the rest is the CBD,
    of which ``carbon_share`` is carbon black and the remainder binder (by mass)."""

    am_fraction: float = 0.94
    carbon_share: float = 0.5
    rho_am: float = RHO_NMC
    rho_carbon: float = RHO_CARBON_BLACK
    rho_binder: float = RHO_PVDF
    rho_cbd_apparent: float = RHO_CBD_APPARENT

    def __post_init__(self) -> None:
        if not 0.0 < self.am_fraction < 1.0:
            raise ValueError(f"am_fraction {self.am_fraction} outside (0, 1)")
        if not 0.0 <= self.carbon_share <= 1.0:
            raise ValueError(f"carbon_share {self.carbon_share} outside [0, 1]")
        if self.rho_cbd_apparent > self.rho_cbd_skeletal:
            raise ValueError("the CBD's apparent density cannot exceed its skeletal density")

    @property
    def rho_cbd_skeletal(self) -> float:
        c = self.carbon_share
        return 1.0 / (c / self.rho_carbon + (1.0 - c) / self.rho_binder)

    @property
    def cbd_nanoporosity(self) -> float:
        return 1.0 - self.rho_cbd_apparent / self.rho_cbd_skeletal

    @property
    def skeletal_density(self) -> float:
        """g/cm³ of the dry coating's solids (every pore excluded): the gauge's density."""
        w = self.am_fraction
        return 1.0 / (w / self.rho_am + (1.0 - w) / self.rho_cbd_skeletal)

    @property
    def apparent_density(self) -> float:
        """g/cm³ of AM + CBD with the CBD's nanopores counted as solid: the DEM's density."""
        w = self.am_fraction
        return 1.0 / (w / self.rho_am + (1.0 - w) / self.rho_cbd_apparent)

    def density(self, kind: PorosityKind) -> float:
        return self.skeletal_density if kind == "total" else self.apparent_density

    def total_from_macro(self, eps_macro: float) -> float:
        return 1.0 - (1.0 - eps_macro) * self.apparent_density / self.skeletal_density

    def macro_from_total(self, eps_total: float) -> float:
        return 1.0 - (1.0 - eps_total) * self.skeletal_density / self.apparent_density

    def convert(self, eps: float, src: PorosityKind, dst: PorosityKind) -> float:
        if src == dst:
            return eps
        return self.total_from_macro(eps) if dst == "total" else self.macro_from_total(eps)

    def porosity(self, loading_mg_cm2: float, thickness_um: float, kind: PorosityKind = "total") -> float:
        """Porosity of a coating of areal loading M (mg/cm²) and thickness h (µm): ``1 − M / (ρ h)``."""
        if thickness_um <= 0:
            raise ValueError(f"thickness {thickness_um} um must be positive")
        return 1.0 - 10.0 * loading_mg_cm2 / (self.density(kind) * thickness_um)

    def thickness_um(self, loading_mg_cm2: float, porosity: float, kind: PorosityKind = "total") -> float:
        """Thickness (µm) of a coating of areal loading M (mg/cm²) at the given porosity."""
        if not porosity < 1.0:
            raise ValueError(f"porosity {porosity} must be < 1")
        return 10.0 * loading_mg_cm2 / (self.density(kind) * (1.0 - porosity))


#: the line's recipe: NMC / carbon black / PVDF 94 : 3 : 3 by mass (a typical pilot-line cathode)
LINE_RECIPE = Recipe(am_fraction=0.94, carbon_share=0.5)


def compaction_degree(dry_thickness_um: float, coating_gap_um: float) -> float:
    """Π = 1 − gap / h0 (seed 003, eq. 3); the coating gap is roll to roll minus the foil."""
    if dry_thickness_um <= 0:
        raise ValueError(f"dry thickness {dry_thickness_um} um must be positive")
    return 1.0 - coating_gap_um / dry_thickness_um


def coating_gap_um(dry_thickness_um: float, compaction: float) -> float:
    """The coating gap that imposes the compaction degree Π on a coating of thickness h0."""
    return dry_thickness_um * (1.0 - compaction)
