"""Fixtures of the surrogate tests: the committed model and a registry copy to play with."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "surrogates" / "models"
FAMILY = "calendering"


#: the v1 model (trained on the v1 reference, data/dem; wall speed an input), kept in the registry beside the v2
#: models: the tests of the runtime and of the v1 card are pinned to it
V1_VERSION = "20261202T134314Z"


@pytest.fixture(scope="session")
def committed_dir() -> Path:
    """The v1 model (see V1_VERSION)."""
    return MODELS / FAMILY / V1_VERSION


@pytest.fixture(scope="session")
def latest_dir() -> Path:
    """The model the daemon loads: the newest of the family (the v2 reference's)."""
    from surrogates.runtime import ModelRegistry

    return ModelRegistry(MODELS).path(FAMILY)


@pytest.fixture
def registry_copy(tmp_path: Path, committed_dir: Path) -> Path:
    """A registry holding a copy of the committed model (version as committed)."""
    root = tmp_path / "models"
    shutil.copytree(committed_dir, root / FAMILY / committed_dir.name)
    return root


def add_version(root: Path, src: Path, version: str) -> Path:
    """Copy a model folder as another version (card's version field updated)."""
    dst = root / FAMILY / version
    shutil.copytree(src, dst)
    card = json.loads((dst / "card.json").read_text())
    card["version"] = version
    (dst / "card.json").write_text(json.dumps(card))
    return dst
