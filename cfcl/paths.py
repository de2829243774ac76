"""Where things live: cache (generated data), runs (checkpoints, counterfactuals), figures; and the
one way every file is written (:func:`atomic_path`).

All three folders default to folders of the repository (found from the package location, or the
current directory when the package is installed elsewhere) and can be moved with the
environment variables ``CFCL_CACHE``, ``CFCL_RUNS`` and ``CFCL_FIGURES``.
"""
from __future__ import annotations

import errno
import os
import re
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
    ``0600`` of a temporary one. A write that runs out of space (``ENOSPC``, a quota, a size limit) is a
    :class:`WriteError` naming ``path``, raised after the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{tmp_owner()}.", suffix=TMP_SUFFIX)
    except OSError as exc:
        if _disk_full(exc):
            raise WriteError(_write_failed(path, exc)) from exc
        raise
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        if not _disk_full(exc):
            raise
        raise WriteError(_write_failed(path, exc)) from exc
    finally:
        if tmp.exists():
            tmp.unlink()


class WriteError(OSError):
    """Writing a file failed for want of space (a full disk, a quota, a file size limit): the message
    names the file and says that nothing partial was kept."""


#: Errors of a write that ran out of space: ``errno`` values, and the messages of numpy's ``tofile``
#: (a short write, no errno) and of torch's zip writer given a path.
_DISK_FULL_ERRNO = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_DISK_FULL_TEXT = re.compile(r"\d+ requested and \d+ written|unexpected pos \d+ vs \d+|failed writing file")


def _space_error(exc: BaseException | None) -> OSError | None:
    """The out-of-space ``OSError`` in ``exc`` or what it was raised from (torch raises its own error
    while a ``write`` of the file it saves to fails)."""
    for _ in range(8):
        if exc is None:
            return None
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNO:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _disk_full(exc: BaseException) -> bool:
    if _space_error(exc) is not None:
        return True
    return isinstance(exc, (OSError, RuntimeError)) and bool(_DISK_FULL_TEXT.search(str(exc)))


def _write_failed(path: Path, exc: BaseException) -> str:
    exc = _space_error(exc) or exc
    detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
    return (f"could not write {path}: the disk may be full ({detail}); nothing partial was kept (its "
            f"temporary file was removed): free space under {path.parent} and run the command again")
