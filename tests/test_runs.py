"""The run layer: keys, manifests, verification of artifacts, staleness, locks, stale temporary files."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cfcl import runs
from cfcl.paths import atomic_path
from cfcl.runs import ArtifactError, MissingRunError, Run


def make(root: Path, settings: dict | None = None, upstream: dict | None = None, label: str = "x") -> Run:
    return Run("stage", label, settings or {"a": 1}, root, upstream or {}, remake="python -m cfcl.stage --x")


def finished(run: Run, content: bytes = b"weights" * 100) -> Run:
    run.folder.mkdir(parents=True, exist_ok=True)
    run.path("model.pt").write_bytes(content)
    run.finish(["model.pt"], seconds=1.5)
    return run


def test_key_covers_settings_and_upstream_not_the_label(tmp_path):
    a, b = make(tmp_path), make(tmp_path, label="y")
    assert a.key == b.key and a.folder != b.folder
    assert make(tmp_path, {"a": 2}).key != a.key
    up1, up2 = make(tmp_path, {"u": 1}), make(tmp_path, {"u": 2})
    assert make(tmp_path, upstream={"u": up1}).key != make(tmp_path, upstream={"u": up2}).key
    assert a.folder == tmp_path / "stage" / f"x-{a.key}"


def test_manifest_records_settings_artifacts_and_upstream(tmp_path):
    up = finished(make(tmp_path, {"u": 1}, label="up"))
    run = finished(make(tmp_path, upstream={"up": up}))
    meta = json.loads(run.manifest_path.read_text())
    assert meta["key"] == run.key and meta["settings"] == {"a": 1} and meta["wall_seconds"] == 1.5
    assert meta["artifacts"]["model.pt"]["size"] == 700 and meta["artifacts"]["model.pt"]["coverage"] == "full"
    assert meta["upstream"]["up"]["key"] == up.key and len(meta["upstream"]["up"]["manifest_sha256"]) == 64
    assert meta["cfcl_version"] and "remake" in meta
    import torch  # the machine it was made on: trained weights are repeatable on one CPU capability only

    assert meta["machine"] == {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    assert run.artifact("model.pt") == run.path("model.pt")


def test_missing_run_names_the_command(tmp_path):
    with pytest.raises(MissingRunError, match=r"python -m cfcl\.stage --x"):
        make(tmp_path).require()


@pytest.mark.parametrize("damage", ["flip", "append", "truncate", "delete"])
def test_damaged_artifact_is_an_error_naming_file_and_command(tmp_path, damage):
    run = finished(make(tmp_path))
    runs._VERIFIED.clear()
    path = run.path("model.pt")
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[123] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "append":
        path.write_bytes(bytes(data) + b"\0" * 4096)
    elif damage == "truncate":
        path.write_bytes(bytes(data[:-1]))
    else:
        path.unlink()
    with pytest.raises(ArtifactError, match=r"model\.pt.*python -m cfcl\.stage --x"):
        run.artifact("model.pt")


def test_a_flipped_byte_after_verification_is_caught_next_time(tmp_path):
    run = finished(make(tmp_path))
    run.artifact("model.pt")  # verified and remembered
    path = run.path("model.pt")
    data = bytearray(path.read_bytes())
    data[0] ^= 1
    time.sleep(0.01)
    path.write_bytes(bytes(data))  # new mtime: the memo no longer vouches for it
    with pytest.raises(ArtifactError):
        run.artifact("model.pt")


def test_damaged_or_foreign_manifest_is_an_error(tmp_path):
    run = finished(make(tmp_path))
    run.manifest_path.write_text("{not json")
    with pytest.raises(ArtifactError, match="manifest.json is damaged"):
        run.verify()
    other = finished(make(tmp_path, {"a": 2}))
    run.manifest_path.write_text(other.manifest_path.read_text())
    with pytest.raises(ArtifactError, match="belongs to stage run"):
        run.verify()


def test_remade_upstream_makes_the_run_stale(tmp_path):
    up = finished(make(tmp_path, {"u": 1}, label="up"), b"v1" * 50)
    run = finished(make(tmp_path, upstream={"up": up}))
    run.require()
    up.path("model.pt").write_bytes(b"v2" * 50)
    up.finish(["model.pt"], seconds=1.0)  # the upstream run was remade with the same settings
    with pytest.raises(ArtifactError, match="stale"):
        run.require()


def test_sampled_digest_for_large_files(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "FULL_HASH_LIMIT", 1000)
    monkeypatch.setattr(runs, "SAMPLE_BLOCK", 64)
    monkeypatch.setattr(runs, "SAMPLE_BLOCKS", 4)
    run = finished(make(tmp_path), bytes(range(256)) * 40)  # 10,240 bytes > limit: sampled
    meta = run.manifest()
    assert meta["artifacts"]["model.pt"]["coverage"].startswith("size + 4 blocks")
    runs._VERIFIED.clear()
    data = bytearray(run.path("model.pt").read_bytes())
    data[5] ^= 1  # inside the first block: always covered
    run.path("model.pt").write_bytes(bytes(data))
    with pytest.raises(ArtifactError):
        run.artifact("model.pt")
    assert runs.verify_folder(run.folder) == [f"{run.path('model.pt')}: does not match its manifest"]


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_claim_removes_the_tmp_files_of_dead_writers_only(tmp_path):
    from cfcl.paths import tmp_owner

    run = make(tmp_path)
    run.folder.mkdir(parents=True)
    host = tmp_owner().rsplit("-", 1)[0]
    dead = run.path(f".model.pt.{host}-{_dead_pid()}.abcd1234.tmp")
    alive = run.path(f".model.pt.{tmp_owner()}.efgh5678.tmp")
    (run.folder / "sub").mkdir()
    dead_sub = run.path(f"sub/.x.npy.{host}-{_dead_pid()}.zzzz0000.tmp")
    for p in (dead, alive, dead_sub):
        p.write_bytes(b"half")
    with run.claim():
        pass
    assert not dead.exists() and not dead_sub.exists() and alive.exists()


def _hold(folder: str, seconds: float, log: str) -> None:
    run = Run("stage", "x", {"a": 1}, Path(folder))
    with run.claim():
        with open(log, "a") as f:
            f.write(f"start {os.getpid()}\n")
        time.sleep(seconds)
        if not run.is_finished():
            finished(run)
        with open(log, "a") as f:
            f.write(f"end {os.getpid()}\n")


def test_two_processes_claiming_one_run_take_turns(tmp_path):
    log = tmp_path / "log.txt"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_hold, args=(str(tmp_path), 0.5, str(log))) for _ in range(2)]
    for p in procs:
        p.start()
        time.sleep(0.1)
    for p in procs:
        p.join(30)
    lines = log.read_text().split()
    assert [lines[0], lines[2], lines[4], lines[6]] == ["start", "end", "start", "end"]
    assert lines[1] == lines[3] and lines[5] == lines[7]  # never interleaved
    assert make(tmp_path).require()


def test_atomic_files_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "a.txt") as tmp:
            tmp.write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644


def test_load_checkpoint_names_a_damaged_file(tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"garbage" * 100)
    with pytest.raises(ArtifactError, match=r"cannot read checkpoint .*model\.pt.*delete it"):
        runs.load_checkpoint(bad, fix="delete it")


def test_verify_cli(tmp_path):
    run = finished(make(tmp_path))
    out = subprocess.run([sys.executable, "-m", "cfcl.runs", "verify", str(run.folder)], capture_output=True,
                         text=True)
    assert out.returncode == 0 and "all verified" in out.stdout
    run.path("model.pt").write_bytes(b"other")
    out = subprocess.run([sys.executable, "-m", "cfcl.runs", "verify", str(run.folder)], capture_output=True,
                         text=True)
    assert out.returncode == 1 and "model.pt" in out.stdout
