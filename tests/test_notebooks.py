"""The notebooks are their own source: clean, with stable cell ids and the same parameters everywhere."""
from __future__ import annotations

import json
import os
import tempfile
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


@pytest.mark.skipif(os.name == "nt", reason="Unix sockets")
def test_notebooks_run_on_kernels_with_private_unix_sockets(tmp_path):
    """`python -m cfcl.jupyter` (the Makefile's papermill) starts kernels on ZMQ ipc in a folder of their own,
    so two notebooks started at once cannot race for a TCP port; the folder goes with the kernel."""
    import nbformat
    import papermill

    from cfcl.jupyter import use_private_kernels

    probe = ("from ipykernel.kernelapp import IPKernelApp\n"
             "app = IPKernelApp.instance()\n"
             "print(app.transport, app.connection_file)")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(probe)])
    nbformat.write(nb, tmp_path / "probe.ipynb")
    before = set(Path(tempfile.gettempdir()).glob("cfcl-kernel-*"))
    use_private_kernels()
    out = papermill.execute_notebook(str(tmp_path / "probe.ipynb"), str(tmp_path / "out.ipynb"),
                                     kernel_name="python3", progress_bar=False)
    transport, connection_file = out.cells[0].outputs[0]["text"].split()
    assert transport == "ipc"
    assert Path(connection_file).parent.name.startswith("cfcl-kernel-")
    assert set(Path(tempfile.gettempdir()).glob("cfcl-kernel-*")) == before, "the kernel's folder is left behind"


@pytest.mark.skipif(os.name == "nt", reason="Unix sockets")
def test_nbval_kernels_are_private_too():
    """notebooks/conftest.py hands nbval the synchronous twin; it cleans up after itself the same way."""
    from cfcl.jupyter import PrivateKernelManager

    conftest = (Path(__file__).parents[1] / "notebooks" / "conftest.py").read_text()
    assert "nbval.kernel.KernelManager = PrivateKernelManager" in conftest
    km = PrivateKernelManager(kernel_name="python3")
    km.start_kernel()
    try:
        folder = Path(km.connection_file).parent
        assert km.transport == "ipc" and folder.name.startswith("cfcl-kernel-") and folder.is_dir()
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        kc.stop_channels()
    finally:
        km.shutdown_kernel(now=True)
    assert not folder.exists()
