"""Jupyter kernels that cannot race for ports: what papermill (``make reproduce``) and nbval (``make test``) run on.

jupyter_client's default kernel talks over TCP on five ports that the *launching* process picks (bind to port
0, read the number, close) and the kernel binds a moment later. Two notebooks started at once (``make -j2``,
``pytest -n 2``) can be handed the same port in that gap; the loser's kernel dies with "Address already in
use" and papermill reports "Kernel died before replying to kernel_info". CI hit this once in the smoke
ablations. :class:`PrivateKernelManager` (and its async twin) puts each kernel on Unix-domain sockets (ZMQ
``ipc``) in a fresh temporary directory of its own, so no two kernels share a name to race for; the
directory goes with the kernel.
On Windows, which has no ``ipc`` transport, it is jupyter_client's TCP kernel unchanged.

``python -m cfcl.jupyter ARGS`` is the papermill command line (same arguments) on these kernels;
``notebooks/conftest.py`` gives nbval the same kernels. Its notebooks draw text progress bars
(``CFCL_PROGRESS=text``, :mod:`cfcl.progress`: a saved widget bar reads 0 % in JupyterLab), and each cell's
stream outputs are merged with carriage returns applied (nbclient's ``coalesce_streams``), so a saved bar is
its final line.
"""
from __future__ import annotations

import ast
import json
import os
import shutil
import sys
import tempfile

from jupyter_client.connect import ConnectionFileMixin
from jupyter_client.manager import AsyncKernelManager, KernelManager
from traitlets import default

IPC = os.name != "nt"
START_TIMEOUT = 300  # seconds papermill waits for a kernel to start, unless --start-timeout is given
PREFIX = "cfcl-kernel-"


class _PrivateSockets(ConnectionFileMixin):
    """Unix sockets in a temporary directory of the kernel's own (TCP on Windows); the directory goes with it."""

    @default("transport")
    def _transport_default(self) -> str:
        return "ipc" if IPC else "tcp"

    @default("connection_file")
    def _connection_file_default(self) -> str:
        if not IPC:
            return ""
        # A Unix socket's path holds at most ~107 bytes: a long $TMPDIR (macOS's) falls back to /tmp.
        base = tempfile.gettempdir()
        base = "/tmp" if len(base) > 60 and os.path.isdir("/tmp") else base
        return os.path.join(tempfile.mkdtemp(prefix=PREFIX, dir=base), "kernel.json")

    def cleanup_ipc_files(self) -> None:
        # Called at every shutdown; on a restart the connection file stays, and so does its directory.
        super().cleanup_ipc_files()
        folder = os.path.dirname(self.connection_file)
        if IPC and os.path.basename(folder).startswith(PREFIX) and not os.path.exists(self.connection_file):
            shutil.rmtree(folder, ignore_errors=True)


class PrivateKernelManager(_PrivateSockets, KernelManager):
    """jupyter_client's KernelManager on private Unix sockets (what nbval starts)."""


class AsyncPrivateKernelManager(_PrivateSockets, AsyncKernelManager):
    """jupyter_client's AsyncKernelManager on private Unix sockets (what papermill's nbclient starts)."""


def use_private_kernels() -> None:
    """Make papermill's default engine (nbclient) start :class:`AsyncPrivateKernelManager` kernels."""
    from papermill.engines import NBClientEngine, papermill_engines

    class PrivateKernelEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, **kwargs):
            kwargs.setdefault("kernel_manager_class", AsyncPrivateKernelManager)
            kwargs.setdefault("coalesce_streams", True)
            return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)

    papermill_engines.register(None, PrivateKernelEngine)
    papermill_engines.register("nbclient", PrivateKernelEngine)


def main() -> None:
    from papermill.cli import papermill

    os.environ.setdefault("CFCL_PROGRESS", "text")  # the kernels inherit it (cfcl.progress)
    use_private_kernels()
    args = sys.argv[1:]
    if not any(a.split("=")[0] in ("--start-timeout", "--start_timeout") for a in args):
        # papermill waits 60 s for a kernel; on two busy cores a start has been measured at 51 s.
        args = ["--start-timeout", str(START_TIMEOUT), *args]
    papermill(args=args, prog_name="papermill")


if __name__ == "__main__":
    main()


def notebook_imports(path: str | os.PathLike) -> str:
    """The import statements of a notebook's code cells, in order, as one program."""
    out = []
    for cell in json.loads(open(path).read())["cells"]:
        if cell["cell_type"] != "code":
            continue
        try:
            tree = ast.parse("".join(cell["source"]))
        except SyntaxError:  # a cell with IPython syntax holds no import we need
            continue
        out += [ast.unparse(node) for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    return "\n".join(out)
