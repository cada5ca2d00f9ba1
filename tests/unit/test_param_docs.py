"""docs/parameters.md is rendered from the nodes' parameter dataclasses and kept current."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_parameter_docs_match_the_dataclasses():
    script = REPO / "scripts" / "gen_param_docs.py"
    spec = importlib.util.spec_from_file_location("gen_param_docs", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rendered = module.render()
    assert (REPO / "docs" / "parameters.md").read_text() == rendered, (
        "docs/parameters.md is stale: run .venv/bin/python scripts/gen_param_docs.py"
    )
    for field in ("max_observation_age", "control_rate", "change_threshold", "topics"):
        assert f"`{field}`" in rendered
