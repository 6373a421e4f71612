"""docs/configuration.md: the [api.tokens], [predictor], [predictor.inputs] and [feedback] examples load."""

from __future__ import annotations

import re
import tomllib

from tests.conftest import DEFAULTS, ROOT
from twin.config import TwinConfig, load_config

DOC = ROOT / "docs" / "configuration.md"


def _blocks() -> list[str]:
    return re.findall(r"```toml\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


def test_documented_sections_load_and_every_field_is_named() -> None:
    blocks = {b.split("\n", 1)[0].split()[0]: b for b in _blocks()}
    tokens = tomllib.loads(blocks["[[api.tokens]]"].replace("<64 hex digits>", "0" * 64))
    pred = tomllib.loads(blocks["[predictor]"])
    inputs = tomllib.loads(blocks["[predictor.inputs]"])
    fb = tomllib.loads(blocks["[feedback]"])
    data = {"tagmap": str(DEFAULTS / "tagmap.toml"), "api": {"tokens": tokens["api"]["tokens"]},
            "predictor": {**pred["predictor"], "inputs": inputs["predictor"]["inputs"]}, "feedback": fb["feedback"]}
    data["predictor"]["models_dir"] = str(ROOT / data["predictor"]["models_dir"])
    data["predictor"]["enabled"] = data["feedback"]["enabled"] = True
    cfg = load_config(data=data, environ={})
    assert cfg.predictor.inputs.gap == "CalenderGap/actual"
    assert cfg.feedback.targets["porosity"].target == 0.31  # 31 percent
    # every field of the three sections appears in the documented example
    for model, text in ((TwinConfig.model_fields["predictor"].annotation, blocks["[predictor]"]),
                        (TwinConfig.model_fields["feedback"].annotation, blocks["[feedback]"])):
        missing = [f for f in model.model_fields if f not in ("inputs", "targets", "measured", "manipulables")
                   and not re.search(rf"^{f} = ", text, flags=re.M)]
        assert not missing, missing
