"""What the notebooks write: figures and tables, under ``figures/<profile>[-<variant>]/``.

One way to save each: :func:`save_figure` (PNG, atomically) and :func:`write_table` (CSV, Markdown
and LaTeX side by side, atomically). Both take the profile, whose label names the folder, so a
variant never overwrites the default figures. Both return what a notebook cell ending with them shows:
the figure (inline, once) and the table (:class:`Table`: its caption above, no index column).
"""
from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from cfcl.config import Profile
from cfcl.paths import atomic_path, figures_dir


def figure_path(profile: Profile, name: str) -> Path:
    """``figures/<label>/<name>``."""
    return figures_dir(profile.label) / name


def save_figure(fig: Any, profile: Profile, name: str, dpi: int = 120) -> Any:
    """Save a matplotlib figure as ``figures/<label>/<name>`` (``.png`` added if missing) and return it,
    closed.

    Closed, pyplot forgets it: the inline backend does not draw it a second time at the end of the cell,
    and a loop of figures holds none of them open. A notebook cell ending with ``save_figure(...)`` shows
    the figure inline (IPython draws a closed figure all the same); in a loop or under an ``if``, wrap it in
    ``display(...)``. Outside a kernel nothing is shown (matplotlib picks the Agg backend without a display)."""
    import matplotlib.pyplot as plt

    path = figure_path(profile, name if name.endswith(".png") else f"{name}.png")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    plt.close(fig)
    return fig


@dataclass(frozen=True)
class Table:
    """A table as a notebook shows it: the caption above, no index column (a named index is a column, as in
    the files :func:`write_table` writes), floats at ``precision`` decimals (None: pandas' display)."""

    df: pd.DataFrame
    caption: str = ""
    precision: int | None = None

    def _frame(self) -> pd.DataFrame:
        return self.df.reset_index() if self.df.index.name is not None else self.df

    def _repr_html_(self) -> str:
        ff = None if self.precision is None else f"{{:.{self.precision}f}}".format
        table = self._frame().to_html(index=False, border=0, float_format=ff, na_rep="")
        if self.caption:
            head, rest = table.split(">", 1)
            table = f'{head}><caption style="caption-side: top; text-align: left">{html.escape(self.caption)}</caption>{rest}'
        return f'<div style="overflow-x: auto">{table}</div>'

    def __repr__(self) -> str:
        ff = None if self.precision is None else f"{{:.{self.precision}f}}".format
        text = self._frame().to_string(index=False, float_format=ff)
        return f"{self.caption}\n\n{text}" if self.caption else text


def show_table(df: pd.DataFrame, caption: str = "", precision: int | None = None) -> Table:
    """``df`` to end a notebook cell with: :class:`Table` (caption above, no index column)."""
    return Table(df, caption, precision)


def write_table(df: pd.DataFrame, stem: str, profile: Profile, caption: str = "",
                floatfmt: str | None = None, formats: tuple[str, ...] = ("csv", "md", "tex")) -> Table:
    """Write ``df`` as ``<stem>.csv``, ``.md`` and ``.tex`` (or the ``formats`` named) under
    ``figures/<label>/`` (:func:`figure_path`); return it as a notebook shows it (:class:`Table`).

    A named index (e.g. the method) becomes a column; ``floatfmt`` (e.g. ``".3f"``) formats the
    Markdown and LaTeX numbers (the CSV keeps full precision) and the table shown."""
    if df.index.name is not None:
        df = df.reset_index()
    fmt = {} if floatfmt is None else {"floatfmt": floatfmt}
    ff = None if floatfmt is None else ("{:" + floatfmt + "}").format
    make = {"csv": lambda: df.to_csv(index=False),
            "md": lambda: (f"{caption}\n\n" if caption else "") + df.to_markdown(index=False, **fmt) + "\n",
            "tex": lambda: df.to_latex(index=False, caption=caption or None, escape=True, float_format=ff)}
    texts = {ext: make[ext]() for ext in formats}
    for ext, text in texts.items():
        with atomic_path(figure_path(profile, f"{stem}.{ext}")) as tmp:
            tmp.write_text(text)
    precision = int(floatfmt.strip(".f")) if floatfmt and floatfmt.startswith(".") and floatfmt.endswith("f") else None
    return Table(df, caption, precision)


STAGES = {"00": "data", "01": "hvae", "02": "counterfactuals", "03": "pretrain", "04": "finetune",
          "05": "latent", "06": "results"}


def write_timings(notebooks: str | Path, label: str) -> Path | None:
    """``figures/<label>/timings.csv`` from the notebook times the Makefile records
    (``<notebooks>/.times/*.txt``: name, start, end, threads, jobs): columns ``stage``, ``notebook``,
    ``seconds``, ``threads``, ``jobs``, ``started`` (seconds after the first notebook started); a
    last row ``total`` gives the wall time from the first start to the last end."""
    rows = []
    for f in sorted(Path(notebooks, ".times").glob("*.txt")):
        name, start, end, threads, jobs = f.read_text().split()[:5]
        rows.append({"stage": STAGES.get(name[:2], "?"), "notebook": name.removesuffix(".ipynb"),
                     "start": float(start), "end": float(end), "threads": threads, "jobs": jobs})
    df = pd.DataFrame(rows)
    if df.empty:  # every notebook was up to date: nothing ran, the last table stands
        return None
    t0 = df["start"].min()
    df["seconds"] = (df["end"] - df["start"]).round(1)
    df["started"] = (df["start"] - t0).round(1)
    df = df.sort_values("started")
    total = {"stage": "total", "notebook": "", "seconds": round(df["end"].max() - t0, 1),
             "threads": df["threads"].iloc[0], "jobs": df["jobs"].iloc[0], "started": 0.0}
    df = pd.concat([df, pd.DataFrame([total])], ignore_index=True)
    path = figures_dir(label) / "timings.csv"
    with atomic_path(path) as tmp:
        df[["stage", "notebook", "seconds", "threads", "jobs", "started"]].to_csv(tmp, index=False)
    return path


def main(argv: list[str] | None = None) -> None:
    """``python -m cfcl.outputs timings NOTEBOOK_DIR LABEL``."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3 or args[0] != "timings":
        raise SystemExit("usage: python -m cfcl.outputs timings NOTEBOOK_DIR LABEL")
    path = write_timings(args[1], args[2])
    print(path or "no notebook ran: timings unchanged")


if __name__ == "__main__":
    main()
