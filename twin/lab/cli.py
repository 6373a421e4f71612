"""``twin lab import``: lab CSV files (or folders of them) into the twin, locally or through a running twin's API."""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import typer

lab_app = typer.Typer(help="Lab results: import CSV files (docs/lab.md).", no_args_is_help=True)


def _files(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        out.extend(sorted(x for x in p.iterdir() if x.suffix.lower() == ".csv") if p.is_dir() else [p])
    return out


async def _local(config: Path, files: list[Path]) -> list[dict[str, Any]]:
    from twin.config import load_config  # lazy: CLI, each command loads only its own code
    from twin.lab.service import LabService  # lazy: CLI, each command loads only its own code
    from twin.lab.store import LabStore  # lazy: CLI, each command loads only its own code
    from twin.store.base import open_store  # lazy: CLI, each command loads only its own code

    cfg = load_config(config)
    store = open_store(cfg.store)
    lab_store = LabStore(cfg.lab.path)
    try:
        svc = LabService(cfg.lab, line_id=cfg.line_id, store=lab_store, rolls=store, sink=store, audit=store)
        return [await svc.ingest_csv(f.read_bytes(), origin=f"file:{f.name}", connector="lab-cli") for f in files]
    finally:
        lab_store.close()
        store.close()


def _remote(url: str, token: str | None, files: list[Path]) -> list[dict[str, Any]]:
    out = []
    for f in files:
        q = urllib.parse.urlencode({"name": f.name})
        req = urllib.request.Request(f"{url.rstrip('/')}/api/v1/lab/results/csv?{q}", data=f.read_bytes(),
                                     method="POST", headers={"Content-Type": "text/csv"})
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=60) as r:  # the operator's own twin URL
                out.append(json.loads(r.read()))
        except urllib.error.HTTPError as err:
            out.append({"origin": f.name, "error": f"HTTP {err.code}: {err.read()[:500].decode('utf-8', 'replace')}"})
    return out


@lab_app.command("import")
def import_cmd(
    paths: list[Path] = typer.Argument(..., help="CSV files or folders of them (comma or semicolon separated)"),
    config: Path | None = typer.Option(None, "--config", help="the twin's configuration: import into its stores"),
    url: str | None = typer.Option(None, "--url", help="a running twin's API (http://host:port) instead"),
    token: str | None = typer.Option(None, "--token", envvar="TWIN_API_TOKEN", help="write-scope API token"),
) -> None:
    """Import lab results; prints one report per file (stored, duplicates, dead letters with reasons).
    Exit 0: every row stored or a duplicate; 1: some rows became dead letters; 2: usage or a file failed."""
    if (config is None) == (url is None):
        typer.echo("give --config FILE (local stores) or --url URL (a running twin)", err=True)
        raise typer.Exit(2)
    files = _files(paths)
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        typer.echo(f"not a file: {', '.join(missing)}", err=True)
        raise typer.Exit(2)
    reports = asyncio.run(_local(config, files)) if config is not None else _remote(str(url), token, files)
    json.dump(reports, sys.stdout, indent=1)
    sys.stdout.write("\n")
    if any("error" in r for r in reports):
        raise typer.Exit(2)
    if any(r.get("dead_letters") for r in reports):
        raise typer.Exit(1)
