"""Where things live: cache (generated data, counterfactuals), runs (checkpoints), figures.

All three default to folders of the repository (found from the package location, or the
current directory when the package is installed elsewhere) and can be moved with the
environment variables ``CFCL_CACHE``, ``CFCL_RUNS`` and ``CFCL_FIGURES``.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def repo_root() -> Path:
    """The repository root: env ``CFCL_ROOT``, else the folder above the package if it holds a
    ``pyproject.toml``, else the current directory."""
    if "CFCL_ROOT" in os.environ:
        return Path(os.environ["CFCL_ROOT"])
    here = Path(__file__).resolve().parents[1]
    if (here / "pyproject.toml").exists():
        return here
    return Path.cwd()


def _dir(env: str, default: str, profile: str | None) -> Path:
    base = Path(os.environ[env]) if env in os.environ else repo_root() / default
    path = base / profile if profile else base
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir(profile: str | None = None) -> Path:
    return _dir("CFCL_CACHE", "cache", profile)


def runs_dir(profile: str | None = None) -> Path:
    return _dir("CFCL_RUNS", "runs", profile)


def figures_dir(profile: str | None = None) -> Path:
    return _dir("CFCL_FIGURES", "figures", profile)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success.

    Nothing half-written is ever visible under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
