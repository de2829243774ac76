"""The notebooks are their own source: clean, with stable cell ids and the same parameters everywhere."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))
PARAMETERS = ("profile", "variant", "overrides")


def test_the_eight_notebooks_are_there():
    assert [p.name[:2] for p in NOTEBOOKS] == ["00", "01", "02", "03", "04", "05", "06", "07"]
    assert not list(NOTEBOOKS[0].parent.glob("_make_*.py")), "notebooks have one source: the .ipynb files"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_clean_with_stable_ids(path):
    nb = json.loads(path.read_text())
    cells = nb["cells"]
    stem = path.name[:2]
    assert [c["id"] for c in cells] == [f"{stem}-{i:02d}" for i in range(len(cells))]
    for c in cells:
        if c["cell_type"] == "code":
            assert c["outputs"] == [] and c["execution_count"] is None, f"{path.name}: stored outputs"
    params = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1, f"{path.name}: one parameters cell"
    src = "".join(params[0]["source"])
    for name in PARAMETERS:
        assert f"\n{name} = " in f"\n{src}", f"{path.name}: parameter {name!r} missing"
    assert cells[0]["cell_type"] == "markdown" and cells[0]["source"][0].startswith(f"# {stem} ·")
    body = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    assert "get_profile(profile, overrides, variant)" in body
    assert ".savefig(" not in body, "figures are saved with cfcl.outputs.save_figure"
