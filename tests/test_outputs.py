"""What the notebooks show and write (cfcl.outputs), their progress bars (cfcl.progress), the forest plots of
the claims and ablations (cfcl.plots.forest), and that an executed notebook holds inline figures and text bars."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from cfcl.config import get_profile
from cfcl.outputs import Table, save_figure, show_table, write_table

ROOT = Path(__file__).parents[1]


def test_no_module_of_cfcl_switches_the_matplotlib_backend():
    """A backend switch in the library replaces the notebooks' inline backend: no figure would show."""
    hits = [str(p.relative_to(ROOT)) for p in (ROOT / "cfcl").rglob("*.py")
            if re.search(r"matplotlib\.use\(|pyplot\.switch_backend\(|plt\.switch_backend\(", p.read_text())]
    assert hits == []


def test_save_figure_writes_the_png_and_returns_the_figure_closed(dirs):
    prof = get_profile("smoke")
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    out = save_figure(fig, prof, "sub/line")
    path = dirs / "figures" / "smoke" / "sub" / "line.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out is fig and not plt.fignum_exists(fig.number)  # closed: the inline backend does not draw it twice
    assert not list(path.parent.glob(".*.tmp"))


def test_write_table_shows_no_index_column_and_the_caption(dirs):
    prof = get_profile("smoke")
    df = pd.DataFrame({"method": ["None", "S-MVD-CL"], "DSC": [88.123456, 89.5]})
    shown = write_table(df, "t", prof, caption="Table 2 (smoke): <2 folds>", floatfmt=".2f")
    assert isinstance(shown, Table) and shown.precision == 2
    html = shown._repr_html_()
    assert "<caption" in html and "Table 2 (smoke): &lt;2 folds&gt;" in html
    header = re.search(r"<thead>(.*?)</thead>", html, re.S).group(1)
    assert re.findall(r"<th[^>]*>(.*?)</th>", header) == ["method", "DSC"]  # no index column
    assert "88.12" in html and "88.1234" not in html
    assert repr(shown).splitlines()[0] == "Table 2 (smoke): <2 folds>"
    figures = dirs / "figures" / "smoke"
    assert (figures / "t.md").read_text().startswith("Table 2 (smoke): <2 folds>\n")
    assert pd.read_csv(figures / "t.csv")["DSC"].tolist() == [88.123456, 89.5]  # the CSV keeps full precision


def test_show_table_turns_a_named_index_into_a_column():
    df = pd.DataFrame({"d": [1.5, 2.25]}, index=pd.Index(["a", "b"], name="method"))
    html = show_table(df).__repr__()
    assert html.split()[:2] == ["method", "d"]
    header = re.search(r"<thead>(.*?)</thead>", show_table(df)._repr_html_(), re.S).group(1)
    assert re.findall(r"<th[^>]*>(.*?)</th>", header) == ["method", "d"]


def test_progress_mode_comes_from_cfcl_progress_and_a_bad_value_names_the_variable():
    code = "import cfcl.progress as p, tqdm.std as s; print(p.tqdm is s.tqdm)"
    run = lambda value: subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,  # noqa: E731
                                       env={**os.environ, "CFCL_PROGRESS": value})
    assert run("text").stdout.strip() == "True"
    bad = run("widgets")
    assert bad.returncode != 0 and "CFCL_PROGRESS='widgets'" in bad.stderr.strip().splitlines()[-1]


# ---------------------------------------------------------------------------------------- forest plots

def _claims() -> pd.DataFrame:
    return pd.read_csv(ROOT / "figures" / "cpu" / "claims.csv")


def _dots(ax) -> tuple[np.ndarray, np.ndarray]:
    """The estimates' dots (seaborn's scatter, size 45; the seed ticks are markers of another size) and their colours."""
    from matplotlib.collections import PathCollection

    dots = [c for c in ax.collections if isinstance(c, PathCollection) and c.get_sizes().size and c.get_sizes()[0] == 45]
    assert len(dots) == 1
    dots = dots[0]
    return np.asarray(dots.get_offsets()), dots.get_facecolors()[:, :3]


def test_plot_claims_draws_every_contrast_at_its_estimate_in_its_verdict_colour():
    from cfcl.plots.forest import VERDICT_COLOURS
    from cfcl.plots.results import plot_claims

    claims = _claims()
    fig = plot_claims(claims, "Claims (cpu)")
    try:
        assert len(fig.axes) == claims["metric"].nunique() == 3  # one panel per metric (their scales differ)
        assert fig._suptitle.get_text().startswith("Claims (cpu): estimate and 99.8 % intervals")
        for ax, metric in zip(fig.axes, dict.fromkeys(claims["metric"])):
            part = claims[claims["metric"] == metric]
            xy, colours = _dots(ax)
            np.testing.assert_allclose(xy[:, 0], part["estimate"])
            expected = np.array([VERDICT_COLOURS[v] for v in part["verdict"]])
            np.testing.assert_allclose(colours, expected, atol=1e-6)
            labels = [t.get_text() for t in ax.get_yticklabels()]
            bold = [t.get_text() for t in ax.get_yticklabels() if t.get_fontweight() == "bold"]
            assert bold == list(dict.fromkeys(part["claim"]))  # each claim heads its contrasts
            assert [t for t in labels if t not in bold] == list(part["contrast"])
    finally:
        plt.close(fig)


def test_plot_claims_draws_the_two_level_interval_and_its_verdict_where_the_table_has_them():
    from matplotlib.collections import LineCollection

    from cfcl.plots.forest import VERDICT_COLOURS
    from cfcl.plots.results import plot_claims

    claims = _claims()
    claims = claims[claims["metric"] == "dsc_pe"].assign(run_ci_low=[-3.0, -1.0], run_ci_high=[1.0, 2.0],
                                                         run_verdict=["inconclusive", "holds"])
    for interval, lows, verdicts in (("auto", [-3.0, -1.0], ["inconclusive", "holds"]),
                                     ("images", list(claims["ci_low"]), list(claims["verdict"]))):
        fig = plot_claims(claims, interval=interval)
        try:
            (ax,) = fig.axes
            bars = [c for c in ax.collections if isinstance(c, LineCollection) and c.get_linewidths()[0] == 2.2]
            np.testing.assert_allclose([seg[0][0] for seg in bars[0].get_segments()], lows)
            np.testing.assert_allclose(_dots(ax)[1], [VERDICT_COLOURS[v] for v in verdicts], atol=1e-6)
            assert ("two-level" in fig._suptitle.get_text()) == (interval == "auto")
        finally:
            plt.close(fig)
    with pytest.raises(ValueError, match="interval='runs' needs run_ci_low"):
        plot_claims(_claims(), interval="runs")


def test_plot_claims_refuses_an_empty_table():
    from cfcl.plots.results import plot_claims

    with pytest.raises(ValueError, match="empty"):
        plot_claims(_claims().iloc[:0])


def test_plot_ablation_has_one_panel_per_metric_with_the_contrasts_in_order():
    from cfcl.plots.ablations import plot_ablation

    res = pd.read_csv(ROOT / "figures" / "cpu" / "ablations" / "confounding.csv")
    fig = plot_ablation(res, "confounding")
    try:
        metrics = list(dict.fromkeys(res["metric"]))
        assert len(fig.axes) == len(metrics)
        names = list(dict.fromkeys(res["contrast"]))
        for ax, metric in zip(fig.axes, metrics):
            xy, _ = _dots(ax)
            part = res[res["metric"] == metric].set_index("contrast").loc[names]
            np.testing.assert_allclose(xy[:, 0], part["estimate"])
            np.testing.assert_allclose(xy[:, 1], np.arange(len(names)))
        assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == names
    finally:
        plt.close(fig)


# ---------------------------------------------------------------------------------- an executed notebook

@pytest.mark.skipif(os.name == "nt", reason="Unix sockets")
def test_executed_notebook_holds_inline_figures_once_and_text_progress_bars(tmp_path):
    """`python -m cfcl.jupyter` (the Makefile's papermill): a cell ending with save_figure shows one inline PNG,
    a display(save_figure(...)) in a loop one per figure, and a progress bar is its final text line, no widget."""
    import nbformat

    cells = [
        "from cfcl.config import get_profile\nfrom cfcl.outputs import save_figure\n"
        "import matplotlib.pyplot as plt\nprof = get_profile('smoke')",
        "fig, ax = plt.subplots()\nax.plot([0, 1])\nsave_figure(fig, prof, 'one')",
        "for k in range(2):\n    fig, ax = plt.subplots()\n    display(save_figure(fig, prof, f'loop{k}'))",
        "from cfcl.progress import tqdm\nfor _ in tqdm(range(200), desc='steps', mininterval=0):\n    pass",
    ]
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells],
                                            metadata={"kernelspec": {"name": "python3", "language": "python",
                                                                     "display_name": "Python 3"}}),
                   tmp_path / "in.ipynb")
    env = {k: v for k, v in os.environ.items() if k not in ("CFCL_PROGRESS", "MPLBACKEND")}
    env["CFCL_FIGURES"] = str(tmp_path / "figures")
    subprocess.run([sys.executable, "-m", "cfcl.jupyter", "--kernel", "python3", str(tmp_path / "in.ipynb"),
                    str(tmp_path / "out.ipynb")], check=True, capture_output=True, env=env, cwd=ROOT)
    out = json.loads((tmp_path / "out.ipynb").read_text())["cells"]
    pngs = [sum("image/png" in o.get("data", {}) for o in c["outputs"]) for c in out]
    assert pngs == [0, 1, 2, 0]
    assert (tmp_path / "figures" / "smoke" / "loop1.png").exists()
    bar = out[3]["outputs"]
    assert all("application/vnd.jupyter.widget-view+json" not in o.get("data", {}) for c in out for o in c["outputs"])
    assert len(bar) == 1 and bar[0]["output_type"] == "stream"
    assert re.fullmatch(r"steps: 100%\|\S+\| 200/200 \[.*\]\n", "".join(bar[0]["text"]))  # the final line only


def test_papermill_command_waits_longer_for_a_kernel_unless_told(monkeypatch):
    """`python -m cfcl.jupyter` passes papermill --start-timeout 300 (its own default, 60 s, is short on two busy
    cores); a --start-timeout on the command line is kept as given and not doubled."""
    import papermill.cli

    from cfcl import jupyter

    seen = []
    monkeypatch.delenv("CFCL_PROGRESS", raising=False)  # main() sets it for its kernels; undone after the test
    monkeypatch.setattr(papermill.cli, "papermill", lambda args, prog_name: seen.append(args))
    monkeypatch.setattr(sys, "argv", ["cfcl.jupyter", "in.ipynb", "out.ipynb"])
    jupyter.main()
    monkeypatch.setattr(sys, "argv", ["cfcl.jupyter", "--start_timeout=7", "in.ipynb", "out.ipynb"])
    jupyter.main()
    assert seen == [["--start-timeout", str(jupyter.START_TIMEOUT), "in.ipynb", "out.ipynb"],
                    ["--start_timeout=7", "in.ipynb", "out.ipynb"]]
    assert jupyter.START_TIMEOUT == 300
