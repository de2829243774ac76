"""Where things live: cache (generated data), runs (checkpoints, counterfactuals), figures; and the
one way every file is written (:func:`atomic_path`).

All three folders default to folders of the repository (found from the package location, or the
current directory when the package is installed elsewhere) and can be moved with the
environment variables ``CFCL_CACHE``, ``CFCL_RUNS`` and ``CFCL_FIGURES``.
"""
from __future__ import annotations

import os
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

TMP_SUFFIX = ".tmp"


def repo_root() -> Path:
    """The repository root: env ``CFCL_ROOT``, else the folder above the package if it holds a
    ``pyproject.toml``, else the current directory."""
    if "CFCL_ROOT" in os.environ:
        return Path(os.environ["CFCL_ROOT"])
    here = Path(__file__).resolve().parents[1]
    if (here / "pyproject.toml").exists():
        return here
    return Path.cwd()


def _dir(env: str, default: str, sub: str | None) -> Path:
    base = Path(os.environ[env]) if env in os.environ else repo_root() / default
    path = base / sub if sub else base
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir(sub: str | None = None) -> Path:
    """Generated data (shared by every profile whose data settings agree)."""
    return _dir("CFCL_CACHE", "cache", sub)


def runs_dir(profile: str | None = None) -> Path:
    """Checkpoints, counterfactuals and fine-tuning folds, per profile (``runs/<profile>/``)."""
    return _dir("CFCL_RUNS", "runs", profile)


def figures_dir(label: str | None = None) -> Path:
    """Figures and tables, per profile label (``figures/<profile>[-<variant>]/``)."""
    return _dir("CFCL_FIGURES", "figures", label)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def tmp_owner() -> str:
    """``host-pid`` of this process: part of every temporary name, so a cleaner can tell a dead
    writer's leftovers (see :func:`cfcl.runs.Run.claim`)."""
    return f"{socket.gethostname().replace('.', '_')}-{os.getpid()}"


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success.

    Nothing half-written is ever visible under the final name. The temporary file is named
    ``.<name>.<host>-<pid>.<random>.tmp`` (hidden, and owned by a process a cleaner can check);
    the final file gets the permissions of a normally created file (``0666 & ~umask``), not the
    ``0600`` of a temporary one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{tmp_owner()}.", suffix=TMP_SUFFIX)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
