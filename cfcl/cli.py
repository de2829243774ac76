"""The command line of the stages' entry points (``python -m cfcl.pretrain``, ``cfcl.finetune``, ...).

:func:`profile_parser` makes the parser every stage shares: ``--profile NAME`` (default ``cpu``),
``--set KEY=VALUE ...`` (settings over the profile, repeatable) and ``--variant NAME`` (a label for a
profile changed by ``--set``); :func:`profile_of` turns its arguments into the validated profile.

:func:`entry_point` wraps a ``main``: an expected error, one the user can fix from its message, is
printed as one line ``error: <message>`` on stderr and the process exits with status 2 (as ``argparse``
does for a bad option). Expected errors: a bad setting, profile or method (:class:`cfcl.config.SettingError`
and the other ``ValueError`` and ``KeyError`` of the validation), a bad or missing input file
(``ValueError``, ``FileNotFoundError``, ``FileExistsError`` from the data readers), a run that is missing,
damaged or stale (:class:`cfcl.runs.MissingRunError`, :class:`cfcl.runs.ArtifactError`) and a full disk
(:class:`cfcl.paths.WriteError`); each message names the file or setting and how to fix it. Any other
exception keeps its traceback. With the environment variable ``CFCL_TRACEBACK=1`` expected errors keep
their traceback too (and the exit status is Python's, 1).
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
from typing import Any, Callable, TypeVar

from cfcl.config import get_profile
from cfcl.paths import WriteError
from cfcl.runs import ArtifactError, MissingRunError

#: The exceptions an entry point reports in one line (see the module docstring).
EXPECTED: tuple[type[BaseException], ...] = (ArtifactError, MissingRunError, WriteError, ValueError, KeyError,
                                             FileNotFoundError, FileExistsError)

F = TypeVar("F", bound=Callable[..., Any])


def profile_parser(prog: str, description: str | None = None,
                   set_help: str = "settings over the profile, e.g. pretrain.steps=100 seed=1",
                   threads: bool = False) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` with the shared ``--profile``, ``--set`` and ``--variant`` options, and with
    ``threads`` a ``--threads`` option (torch CPU threads, set by :func:`profile_of`)."""
    ap = argparse.ArgumentParser(prog=prog, description=description)
    if threads:
        ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--profile", default="cpu", help="the profile (default: cpu)")
    ap.add_argument("--set", dest="overrides", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                    help=set_help)
    ap.add_argument("--variant", default="", help="a label for the profile changed by --set")
    return ap


def profile_of(args: argparse.Namespace):
    """The validated profile of parsed :func:`profile_parser` arguments; sets torch's CPU threads where
    ``--threads`` was given."""
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    return get_profile(args.profile, args.overrides, args.variant)


def message(exc: BaseException) -> str:
    """The one-line message of an exception (a ``KeyError``'s without the quotes ``str`` adds)."""
    text = exc.args[0] if isinstance(exc, KeyError) and len(exc.args) == 1 else exc
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return "; ".join(lines) or type(exc).__name__


def traceback_wanted() -> bool:
    return os.environ.get("CFCL_TRACEBACK", "").strip() not in ("", "0")


def entry_point(main: F) -> F:
    """Decorate an entry point's ``main``: expected errors become ``error: <message>`` on stderr and exit
    status 2 (see the module docstring; ``CFCL_TRACEBACK=1`` keeps the traceback)."""
    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return main(*args, **kwargs)
        except EXPECTED as exc:
            if traceback_wanted():
                raise
            print(f"error: {message(exc)}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper  # type: ignore[return-value]
