"""``twin surrogates generate``: run the DEM design (typer sub-app ``app``).

Also runnable stand-alone: ``python -m surrogates.reference.cli generate --n-runs 160``.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import typer

from .dataset import DEFAULT_DIR, N_REPLICATE_POINTS, full_design, sobol_design
from .dataset import generate as _generate

app = typer.Typer(help="Physics reference: DEM calendering data set for the surrogates.", no_args_is_help=True)


@app.callback()
def _main() -> None:
    """Physics reference commands."""


@app.command()
def generate(
    n_runs: int = typer.Option(160, "--n-runs", min=1, help="Sobol design points (replicate runs are added)."),
    out: Path = typer.Option(DEFAULT_DIR, "--out", help="Output directory (Parquet table, frames, provenance)."),
    workers: int = typer.Option(max(1, (os.cpu_count() or 1)), "--workers", min=1, help="Parallel DEM processes."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Skip runs already finished in OUT/runs."),
    frames_subset: int = typer.Option(3, "--frames-subset", min=0, help="Runs that keep frame-by-frame voxels."),
    replicates: bool = typer.Option(True, "--replicates/--no-replicates", help="Add the seed-replicate runs."),
    replicate_points: int = typer.Option(N_REPLICATE_POINTS, "--replicate-points", min=1,
                                         help="Design points repeated with other packing seeds (the centre point "
                                              "and the first Sobol points)."),
    model: str = typer.Option("v1", "--model", help="Reference model: v1 (Hertz/JKR, the committed data set) or "
                                                    "v2 (elastic-plastic mdr, quasi-static; docs/physics.md §7)."),
) -> None:
    """Generate (or complete) the DEM data set."""
    rows = full_design(n_runs, replicate_points, model=model) if replicates else sobol_design(n_runs, model=model)
    argv = sys.argv[sys.argv.index("generate") + 1:] if "generate" in sys.argv else sys.argv[1:]
    command = "twin surrogates generate " + " ".join(shlex.quote(a) for a in argv)
    table = _generate(n_runs=n_runs, out=out, workers=workers, resume=resume, frames_subset=frames_subset,
                      command=command, rows=rows, replicate_points=replicate_points if replicates else 0,
                      model=model)
    typer.echo(f"wrote {table}")


if __name__ == "__main__":  # pragma: no cover
    app()
