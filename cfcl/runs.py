"""One run layer: how every stage names its work, writes it, verifies it and finds it again.

The chain of stages::

    data -> hvae -> counterfactuals -> pretrain -> finetune -> (results)
    data -> classifiers (parent predictors) -> cf_quality (with the counterfactuals: their quality table)

**Identity.** A run is ``(stage, label, key)``. The key is the first 12 hex digits of the SHA-256
of exactly the settings the stage reads plus the keys of the runs it consumes (its upstream), so
two profiles that agree on those share the run: a variant reuses every upstream run its
overrides do not touch, and a changed setting can never reuse a stale run. The label (a split, a
method) only makes the folder readable. Results are recomputed from the fine-tuning runs at
every call and are not cached.

**Folder.** ``<root>/<stage>/<label>-<key>/``: the root is ``runs/<profile>/`` for the trained
stages and ``cache/`` for the data. ``manifest.json`` is written last and atomically: the
settings, the upstream keys with the digest of their content (:func:`content_digest`), the size and
digest of every artifact, the package version (and git commit when available), the machine (torch's version and CPU
kernel capability: trained weights are bitwise repeatable on one machine, not across capabilities; see
:func:`machine`) and the stage's wall time. A
folder without a manifest is an unfinished run: its stage resumes it; nothing else reads it.

**Verification.** Reading an artifact goes through :meth:`Run.artifact`, which checks the file
against the manifest: its size, and its SHA-256, over the whole file up to
``FULL_HASH_LIMIT`` (256 MiB, every artifact of the ``smoke`` and ``cpu`` profiles) and, above
it, over the size plus 64 blocks of 1 MiB spread evenly through the file including the first and
the last (so the header and any change of length are always covered; ``CFCL_VERIFY=full`` hashes
whole files whatever their size). A verified file is remembered per process by (path, size,
mtime, inode). An upstream run whose content changed since the run was made makes the run stale:
its content is its key and the digests of its artifacts, not its manifest's bytes, so an upstream
remade with identical artifacts (a data cache regenerated, a run remade on the same machine), or a
manifest re-indented, leaves the run valid (manifests of older runs recorded the SHA-256 of the
upstream manifest's bytes, and are still checked that way). The settings a manifest records must give
its key (:meth:`Run.manifest`): a hand-edited setting is an error, never a silently relabelled run.
Every mismatch is :class:`ArtifactError`, naming the file and the command that remakes it.

**Writing.** Every file is written through :func:`cfcl.paths.atomic_path` (a temporary file, renamed
on success; a full disk is a :class:`cfcl.paths.WriteError` naming the file, with nothing partial
kept; a file written through a memory map is first allocated, :func:`reserve`). Checkpoints go
through :func:`save_checkpoint` and ``.npz`` archives through :func:`save_arrays`, whose bytes are a
function of their content only (no file name, no time stamp), so a run remade with the same settings
on the same machine has the same digests. A partial artifact is reused on resume only when every
member reads back (:func:`archive_problem`).

**Claiming.** A stage that makes a run holds ``<folder>/.lock`` (``fcntl.flock``) while it
works: a second process (or torchrun rank) asking for the same run waits, then finds it
finished. Under the lock, ``.*.tmp`` files left by a dead writer are removed. ``flock`` works on
local file systems; on NFS use one process per run.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from cfcl.paths import TMP_SUFFIX, atomic_path

MANIFEST = "manifest.json"
LOCK = ".lock"
FULL_HASH_LIMIT = 256 * 2 ** 20
SAMPLE_BLOCKS, SAMPLE_BLOCK = 64, 2 ** 20

_VERIFIED: dict[tuple[str, int, int, int], str] = {}


class ArtifactError(RuntimeError):
    """A run's file is missing, damaged or stale: the message names it and the command that remakes it."""


class MissingRunError(RuntimeError):
    """An upstream run a stage needs does not exist (yet): the message names the command that makes it."""


def key_of(payload: Mapping[str, Any]) -> str:
    """First 12 hex digits of the SHA-256 of a JSON payload (sorted keys)."""
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def content_digest(meta: Mapping[str, Any]) -> str:
    """SHA-256 of what a run's consumers depend on, from its manifest ``meta``: its key and the digest
    of each artifact (not the manifest's bytes: its times, machine and layout)."""
    arts = {name: a["sha256"] for name, a in sorted(meta.get("artifacts", {}).items())}
    text = json.dumps({"key": meta.get("key"), "artifacts": arts}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def save_checkpoint(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (:func:`cfcl.paths.atomic_path`), flushed to disk before
    the rename. Saved through an open file, so the archive's record folder has torch's fixed name
    (``archive``), not the temporary file's: the bytes are a function of ``obj`` alone."""
    import torch

    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    return path


def save_arrays(path: str | os.PathLike, compressed: bool = False, **arrays: Any) -> Path:
    """``np.savez`` (``compressed``: ``np.savez_compressed``) of ``arrays`` to ``path`` atomically, readable
    by ``np.load``; every member has a fixed time stamp (``np.savez`` stamps the current time), so the
    bytes are a function of the arrays alone."""
    import zipfile

    import numpy as np

    path = Path(path)
    method = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        with zipfile.ZipFile(f, "w", compression=method, allowZip64=True) as zf:
            for name, value in arrays.items():
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = method
                info.external_attr = 0o644 << 16
                with zf.open(info, "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    return path


def reserve(path: str | os.PathLike) -> None:
    """Allocate the blocks of the file ``path`` up to its size (``posix_fallocate``), so that a full disk is an
    ``OSError`` here (a :class:`cfcl.paths.WriteError` inside :func:`cfcl.paths.atomic_path`), not a ``SIGBUS``
    that kills the process later while a memory map writes into a sparse file. A file system that cannot
    allocate ahead is left as it is."""
    import errno

    with open(path, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, max(1, os.fstat(f.fileno()).st_size))
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS):
                raise


def archive_problem(path: str | os.PathLike) -> str | None:
    """Why the ``.npz`` file ``path`` cannot be read in full (None when every member reads back, its
    CRC-32 checked and its array parsed): the check before a partial artifact is reused on resume."""
    import zipfile

    import numpy as np

    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
        if bad is not None:
            return f"member {bad!r} fails its CRC-32 check"
        with np.load(path, allow_pickle=False) as z:
            for name in z.files:
                z[name]
    except Exception as exc:  # zipfile, zlib and numpy raise many types for a damaged file
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        return f"{type(exc).__name__}: {first}"
    return None


def file_digest(path: str | os.PathLike, full: bool | None = None) -> dict[str, Any]:
    """``{"size", "sha256", "coverage"}`` of a file (see the module docstring for the coverage)."""
    path = Path(path)
    size = path.stat().st_size
    full = os.environ.get("CFCL_VERIFY", "") == "full" if full is None else full
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if full or size <= FULL_HASH_LIMIT:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
            coverage = "full"
        else:
            h.update(str(size).encode())
            last = size - SAMPLE_BLOCK
            for i in range(SAMPLE_BLOCKS):
                f.seek(round(i * last / (SAMPLE_BLOCKS - 1)))
                h.update(f.read(SAMPLE_BLOCK))
            coverage = f"size + {SAMPLE_BLOCKS} blocks of {SAMPLE_BLOCK // 2 ** 20} MiB"
    return {"size": size, "sha256": h.hexdigest(), "coverage": coverage}


def _git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parents[1]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def machine() -> dict[str, str]:
    """Where a run was made, for its manifest: torch's version and the CPU kernels it dispatched to
    (``torch.backends.cpu.get_cpu_capability()``: ``AVX2``, ``AVX512``, ...). Training on CPU is
    bitwise repeatable on one machine, but kernels of another capability sum in another order, and a
    trained model then differs (``benchmarks/results/hvae.md``, "A rebuild on another machine"), so
    two runs of one key made on machines of different capability are replicates, not copies."""
    import torch

    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def _pid_alive(owner: str) -> bool:
    """Whether the ``host-pid`` owner of a temporary file may still be writing it."""
    import socket

    host, _, pid = owner.rpartition("-")
    if host != socket.gethostname().replace(".", "_") or not pid.isdigit():
        return True  # another machine: cannot tell, keep it
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Run:
    """One run of one stage (see the module docstring).

    ``settings``: exactly what the stage reads (plain JSON values); ``upstream``: the runs it
    consumes, by role (their keys enter this run's key); ``remake``: the command that (re)makes
    this run, quoted in every error.
    """

    stage: str
    label: str
    settings: dict[str, Any]
    root: Path
    upstream: dict[str, "Run"] = field(default_factory=dict)
    remake: str = ""
    key: str = ""

    def __post_init__(self) -> None:
        self._derived_key = not self.key  # False: a key given by the stage (the data's), not of the settings
        if not self.key:
            self.key = _derived_key(self.stage, self.settings, {k: r.key for k, r in self.upstream.items()})

    # ------------------------------------------------------------------ where
    @property
    def folder(self) -> Path:
        return Path(self.root) / self.stage / f"{self.label}-{self.key}"

    def path(self, name: str) -> Path:
        """Where the artifact ``name`` lives (no check: for writing)."""
        return self.folder / name

    @property
    def manifest_path(self) -> Path:
        return self.folder / MANIFEST

    def __str__(self) -> str:
        return f"{self.stage} run {self.label}-{self.key}"

    # ------------------------------------------------------------------ state
    def is_finished(self) -> bool:
        return self.manifest_path.exists()

    def manifest(self) -> dict[str, Any]:
        """The manifest, checked to belong to this run (:class:`ArtifactError` otherwise)."""
        path = self.manifest_path
        if not path.exists():
            raise MissingRunError(self._missing())
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"{path} is damaged ({exc}); {self._fix()}") from None
        if meta.get("key") != self.key or meta.get("stage") != self.stage:
            raise ArtifactError(f"{path} belongs to {meta.get('stage')} run {meta.get('key')}, not to {self}; "
                                f"{self._fix()}")
        if self._derived_key and recorded_key(meta) != self.key:
            raise ArtifactError(f"{path}: its recorded settings (or upstream keys) do not give its key {self.key} "
                                f"(edited by hand?); settings are changed with --set, never in a manifest: "
                                f"restore the manifest's settings, or {self._fix()}")
        return meta

    def _fix(self) -> str:
        return f"delete {self.folder} and remake it with: {self.remake}" if self.remake else f"delete {self.folder}"

    def _missing(self) -> str:
        return (f"no finished {self.stage} run {self.label!r} with these settings ({self.folder}); "
                f"make it first with: {self.remake}")

    def require(self) -> "Run":
        """This run, verified (artifacts and upstream); :class:`MissingRunError` if it is not made yet."""
        self.verify()
        return self

    def verify(self, names: Sequence[str] | None = None) -> dict[str, Any]:
        """Check the manifest, the named artifacts (default: all) and the upstream manifests."""
        meta = self.manifest()
        arts = meta.get("artifacts", {})
        for name in (list(arts) if names is None else names):
            self._check(name, arts)
        for role, up in self.upstream.items():
            recorded = meta.get("upstream", {}).get(role, {})
            if recorded.get("key") != up.key:
                raise ArtifactError(f"{self.manifest_path} was made from {role} run {recorded.get('key')}, "
                                    f"expected {up.key}; {self._fix()}")
            if not up.manifest_path.exists():
                continue
            if "content_sha256" in recorded:
                stale = recorded["content_sha256"] != content_digest(up.manifest())
            else:  # older manifests: the SHA-256 of the upstream manifest's bytes
                stale = recorded.get("manifest_sha256") not in (None, file_digest(up.manifest_path, full=True)["sha256"])
            if stale:
                raise ArtifactError(f"{self} is stale: its upstream {up} ({up.manifest_path}) was remade "
                                    f"after it with other artifacts; {self._fix()}")
        return meta

    def _check(self, name: str, arts: Mapping[str, Any]) -> Path:
        path = self.folder / name
        if name not in arts:
            raise ArtifactError(f"{path} is not an artifact of {self} (manifest {self.manifest_path}); "
                                f"{self._fix()}")
        want = arts[name]
        if not path.exists():
            raise ArtifactError(f"{path} is missing; {self._fix()}")
        st = path.stat()
        memo = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
        if _VERIFIED.get(memo) == want["sha256"]:
            return path
        if st.st_size != want["size"]:
            raise ArtifactError(f"{path} has {st.st_size} bytes, its manifest says {want['size']} "
                                f"(damaged or replaced); {self._fix()}")
        got = file_digest(path, full=want.get("coverage") == "full")
        if got["sha256"] != want["sha256"]:
            raise ArtifactError(f"{path} does not match its manifest (sha256 {got['sha256'][:16]}... vs "
                                f"{want['sha256'][:16]}...): it was changed or damaged; {self._fix()}")
        _VERIFIED[memo] = want["sha256"]
        return path

    def artifact(self, name: str) -> Path:
        """The verified path of artifact ``name`` (the one way to read a run's file)."""
        meta = self.manifest()
        self.verify(names=[])  # upstream staleness
        return self._check(name, meta.get("artifacts", {}))

    # ------------------------------------------------------------------ making
    def finish(self, artifacts: Sequence[str], seconds: float, extra: Mapping[str, Any] | None = None) -> dict:
        """Record the run as finished: hash ``artifacts`` (names in the folder) and write the
        manifest, last and atomically. ``seconds``: the stage's wall time (over resumes)."""
        from cfcl import __version__

        arts = {}
        for name in artifacts:
            d = file_digest(self.folder / name)
            arts[name] = d
            st = (self.folder / name).stat()
            _VERIFIED[(str(self.folder / name), st.st_size, st.st_mtime_ns, st.st_ino)] = d["sha256"]
        upstream = {}
        for role, up in self.upstream.items():
            upstream[role] = {"stage": up.stage, "label": up.label, "key": up.key,
                              "content_sha256": content_digest(up.manifest()) if up.manifest_path.exists() else None}
        meta = {"stage": self.stage, "label": self.label, "key": self.key, "settings": self.settings,
                "upstream": upstream, "artifacts": arts, "cfcl_version": __version__,
                "git_commit": _git_commit(), "machine": machine(), "wall_seconds": round(float(seconds), 2),
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "remake": self.remake,
                **(dict(extra) if extra else {})}
        with atomic_path(self.manifest_path) as tmp:
            tmp.write_text(json.dumps(meta, indent=1, default=str))
        return meta

    @contextmanager
    def claim(self, wait_message: bool = True) -> Iterator["Run"]:
        """Hold the run's lock while making it (see the module docstring); removes the ``.tmp``
        files of dead writers. Re-check :meth:`is_finished` inside: another process may have
        finished the run while this one waited."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if wait_message:
                    holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
                    print(f"{self}: waiting for process {holder or '?'} that is making it", file=sys.stderr)
                fcntl.flock(fd, fcntl.LOCK_EX)
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            self.remove_stale_tmp()
            yield self
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def remove_stale_tmp(self) -> list[Path]:
        """Delete ``.*.tmp`` files under the folder whose writer process is gone; return them."""
        removed = []
        for tmp in self.folder.rglob(f".*{TMP_SUFFIX}"):
            owner = tmp.name[:-len(TMP_SUFFIX)].rsplit(".", 2)
            alive = len(owner) == 3 and _pid_alive(owner[1])
            if not alive:
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
        return removed


def _derived_key(stage: str, settings: Mapping[str, Any], upstream_keys: Mapping[str, str]) -> str:
    return key_of({"stage": stage, "settings": settings, "upstream": dict(sorted(upstream_keys.items()))})


def recorded_key(meta: Mapping[str, Any]) -> str:
    """The key that a manifest's recorded stage, settings and upstream keys give (equal to its ``key``
    unless it was edited; the data's runs, whose key is not derived from their settings, excepted)."""
    ups = {role: (rec or {}).get("key") for role, rec in (meta.get("upstream") or {}).items()}
    return _derived_key(meta.get("stage"), meta.get("settings"), ups)


def load_checkpoint(path: str | os.PathLike, fix: str = "") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` on the CPU; a file torch cannot read is an
    :class:`ArtifactError` naming it (and ``fix``, what to do), never a traceback from the unpickler."""
    import torch

    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path} is missing" + (f"; {fix}" if fix else ""))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise ArtifactError(f"cannot read checkpoint {path} (damaged? {type(exc).__name__}: {first})"
                            + (f"; {fix}" if fix else "")) from None


def resume(run: "Run", **stateful: Any) -> dict[str, Any] | None:
    """Load the run's interrupted state (``last.pt``) into ``stateful`` (objects with ``load_state_dict``,
    named as the checkpoint stores them, e.g. ``model=net, optimizer=opt``) and return the checkpoint for
    its counters; None when there is no interrupted state (the run starts afresh). A damaged ``last.pt`` is
    an :class:`ArtifactError` saying to delete it (the run then restarts)."""
    last = run.path("last.pt")
    if not last.exists():
        return None
    ck = load_checkpoint(last, fix=f"delete it to restart the run ({run.remake})")
    for key, obj in stateful.items():
        obj.load_state_dict(ck[key])
    return ck


def runs_under(root: Path, stage: str) -> list[dict[str, Any]]:
    """Manifests of every finished run of ``stage`` under ``root`` (for listings)."""
    out = []
    for m in sorted((Path(root) / stage).glob(f"*/{MANIFEST}")):
        try:
            out.append(json.loads(m.read_text()))
        except (OSError, ValueError):
            continue
    return out


def verify_folder(folder: str | os.PathLike) -> list[str]:
    """Verify every artifact of a run folder against its manifest (ignoring the per-process memo); return
    the problems found (empty when all is well). ``python -m cfcl.runs verify FOLDER...``."""
    folder = Path(folder)
    problems = []
    try:
        meta = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        return [f"{folder / MANIFEST}: {exc}"]
    if re.fullmatch(r"[0-9a-f]{12}", str(meta.get("key"))) and recorded_key(meta) != meta["key"]:
        problems.append(f"{folder / MANIFEST}: its recorded settings do not give its key {meta['key']} (edited by hand?)")
    for name, want in meta.get("artifacts", {}).items():
        path = folder / name
        if not path.exists():
            problems.append(f"{path}: missing")
            continue
        got = file_digest(path, full=want.get("coverage") == "full")
        if got["sha256"] != want["sha256"] or got["size"] != want["size"]:
            problems.append(f"{path}: does not match its manifest")
    return problems


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m cfcl.runs", description="Verify run folders against their manifests.")
    ap.add_argument("command", choices=["verify"])
    ap.add_argument("folders", nargs="+")
    args = ap.parse_args(argv)
    bad = [p for f in args.folders for p in verify_folder(f)]
    for p in bad:
        print(p)
    print("all verified" if not bad else f"{len(bad)} problem(s)")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
