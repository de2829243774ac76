"""The progress bar every loop of cfcl uses: ``from cfcl.progress import tqdm``.

``tqdm.auto`` draws a widget in any Jupyter kernel. A notebook executed by papermill saves the widget only
as a reference to its state, which JupyterLab does not restore: every saved bar reads 0 %. With
``CFCL_PROGRESS=text`` (set by ``python -m cfcl.jupyter``, the Makefile's papermill) the bars are tqdm's text
bars, whose final line the executed notebook keeps; unset or ``auto``, it is ``tqdm.auto`` (a widget in a
live JupyterLab, text in a terminal).
"""
from __future__ import annotations

import os

MODE = os.environ.get("CFCL_PROGRESS", "auto").strip().lower() or "auto"
if MODE == "text":
    from tqdm.std import tqdm
elif MODE == "auto":
    from tqdm.auto import tqdm
else:
    raise ValueError(f"CFCL_PROGRESS={MODE!r}: use 'text' (plain text bars) or 'auto' (tqdm.auto), or leave it unset")

__all__ = ["tqdm"]
