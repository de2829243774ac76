"""The run layer: keys, manifests, verification of artifacts, staleness, locks, stale temporary files."""
from __future__ import annotations

import errno
import json
import multiprocessing as mp
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cfcl import runs
from cfcl.paths import WriteError, atomic_path
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
    assert meta["upstream"]["up"]["key"] == up.key
    assert meta["upstream"]["up"]["content_sha256"] == runs.content_digest(up.manifest())
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


def test_upstream_remade_with_the_same_artifacts_or_reindented_leaves_the_run_valid(tmp_path):
    up = finished(make(tmp_path, {"u": 1}, label="up"), b"v1" * 50)
    run = finished(make(tmp_path, upstream={"up": up}))
    before = up.manifest_path.read_bytes()
    time.sleep(1.1)  # another finished_at
    up.finish(["model.pt"], seconds=9.0)  # remade: the same artifacts, another time and wall time
    assert up.manifest_path.read_bytes() != before
    run.require()
    meta = json.loads(up.manifest_path.read_text())
    up.manifest_path.write_text(json.dumps(meta, indent=4, sort_keys=True))  # an editor re-indents it
    run.require()
    up.path("model.pt").write_bytes(b"v2" * 50)  # a changed artifact still makes the run stale
    up.finish(["model.pt"], seconds=1.0)
    with pytest.raises(ArtifactError, match=r"stale: its upstream stage run up-.*remade after it"):
        run.require()


def test_a_regenerated_identical_data_cache_leaves_downstream_valid(tmp_path):
    data = Run("phantom", "pretrain", {"data": {"n": 8}}, tmp_path / "cache", key="phantom-0123abcd")
    finished(data, b"images" * 64)
    run = finished(make(tmp_path / "runs", upstream={"data": data}))
    shutil.rmtree(data.folder)  # the cache deleted and made again, bit for bit
    finished(data, b"images" * 64)
    run.require()
    shutil.rmtree(data.folder)
    finished(data, b"images" * 63 + b"IMAGES")  # made again, differently
    with pytest.raises(ArtifactError, match="stale"):
        run.require()


def test_a_manifest_of_an_older_layout_is_checked_by_its_bytes(tmp_path):
    up = finished(make(tmp_path, {"u": 1}, label="up"))
    run = finished(make(tmp_path, upstream={"up": up}))
    meta = json.loads(run.manifest_path.read_text())
    rec = meta["upstream"]["up"]
    del rec["content_sha256"]
    rec["manifest_sha256"] = runs.file_digest(up.manifest_path, full=True)["sha256"]
    run.manifest_path.write_text(json.dumps(meta, indent=1))
    run.require()
    up.manifest_path.write_text(up.manifest_path.read_text() + "\n")
    with pytest.raises(ArtifactError, match="stale"):
        run.require()


def test_a_hand_edited_setting_is_an_error_naming_the_manifest(tmp_path):
    up = finished(make(tmp_path, {"u": 1}, label="up"))
    run = finished(make(tmp_path, {"steps": 3}, upstream={"up": up}))
    run.require()
    meta = json.loads(run.manifest_path.read_text())
    meta["settings"]["steps"] = 300
    run.manifest_path.write_text(json.dumps(meta, indent=1))
    with pytest.raises(ArtifactError) as err:
        run.require()
    msg = str(err.value)
    assert "\n" not in msg and str(run.manifest_path) in msg and "do not give its key" in msg
    assert "python -m cfcl.stage --x" in msg
    assert runs.verify_folder(run.folder) == [f"{run.manifest_path}: its recorded settings do not give its key "
                                              f"{run.key} (edited by hand?)"]
    meta["settings"]["steps"] = 3
    meta["upstream"]["up"]["key"] = "0" * 12  # an edited upstream key is caught too
    run.manifest_path.write_text(json.dumps(meta, indent=1))
    with pytest.raises(ArtifactError):
        run.require()


@pytest.mark.parametrize("errno_", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_names_the_file_and_keeps_nothing_partial(tmp_path, monkeypatch, errno_):
    import numpy as np
    import torch

    class Full:  # a file on a disk with 1,000 bytes free
        budget = 1000

        def __init__(self, f):
            self.f = f

        def write(self, b):
            if Full.budget < len(b):
                raise OSError(errno_, os.strerror(errno_))
            Full.budget -= len(b)
            return self.f.write(b)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    real_open = open

    def full_open(file, mode="r", *a, **k):
        f = real_open(file, mode, *a, **k)
        return Full(f) if "w" in mode and str(file).endswith(".tmp") else f

    monkeypatch.setattr("builtins.open", full_open)
    cases = [("model.pt", lambda p: runs.save_checkpoint({"w": torch.zeros(10_000)}, p)),
             ("fold0.npz", lambda p: runs.save_arrays(p, compressed=True, a=np.random.default_rng(0).random(10_000))),
             ("cf.npy", lambda p: _save_npy(p, np.zeros(10_000)))]
    for name, save in cases:
        Full.budget = 1000
        target = tmp_path / name
        with pytest.raises(OSError) as err:
            save(target)
        msg = str(err.value)
        assert isinstance(err.value, WriteError)
        assert str(target) in msg and "disk may be full" in msg and "nothing partial was kept" in msg
        assert os.strerror(errno_) in msg  # what the system said, also where torch wraps it
        assert "\n" not in msg
        assert sorted(os.listdir(tmp_path)) == [], name  # neither the file nor its temporary file


def _save_npy(path, arr):
    import numpy as np

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, arr)


def test_short_writes_of_numpy_and_torch_given_a_path_are_disk_full_errors(tmp_path):
    for exc in (OSError("4096 requested and 1024 written"),
                RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")):
        with pytest.raises(WriteError, match=r"could not write .*x\.bin: the disk may be full"):
            with atomic_path(tmp_path / "x.bin") as tmp:
                tmp.write_bytes(b"half")
                raise exc
        assert os.listdir(tmp_path) == []
    with pytest.raises(FileNotFoundError):  # an error that is not about space passes through unchanged
        with atomic_path(tmp_path / "y.bin"):
            open(tmp_path / "missing.txt")
    assert os.listdir(tmp_path) == []


def test_checkpoint_and_archive_bytes_depend_on_their_content_only(tmp_path):
    import numpy as np
    import torch

    obj = {"model": {"w": torch.arange(12.0).view(3, 4)}, "step": 3}
    a = runs.save_checkpoint(obj, tmp_path / "a" / "model.pt")
    time.sleep(1.1)
    b = runs.save_checkpoint(obj, tmp_path / "b" / "other.pt")
    assert a.read_bytes() == b.read_bytes()
    assert torch.equal(runs.load_checkpoint(b)["model"]["w"], obj["model"]["w"])
    arrays = {"origin": np.array("abc"), "pred": np.arange(20, dtype=np.uint8).reshape(4, 5)}
    x = runs.save_arrays(tmp_path / "x.npz", compressed=True, **arrays)
    time.sleep(2.1)  # zip time stamps have a resolution of two seconds
    y = runs.save_arrays(tmp_path / "y.npz", compressed=True, **arrays)
    assert x.read_bytes() == y.read_bytes()
    with np.load(y) as z:
        assert sorted(z.files) == ["origin", "pred"] and str(z["origin"]) == "abc"
        assert np.array_equal(z["pred"], arrays["pred"])
    assert runs.archive_problem(y) is None


def test_archive_problem_reads_every_member(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    path = runs.save_arrays(tmp_path / "fold0.npz", compressed=True, origin=np.array("abc"),
                            pred=rng.integers(0, 3, (4, 32, 32)).astype(np.uint8))
    good = path.read_bytes()
    with np.load(path) as z:
        assert str(z["origin"]) == "abc"  # the member a resume used to read alone
    data = bytearray(good)
    data[len(good) // 2] ^= 0xFF  # inside the compressed 'pred' member
    path.write_bytes(bytes(data))
    assert runs.archive_problem(path) is not None
    path.write_bytes(good[: len(good) // 2])  # truncated
    assert "BadZipFile" in runs.archive_problem(path)


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


def test_reserve_allocates_the_file_and_a_full_disk_is_a_write_error(tmp_path, monkeypatch):
    import numpy as np

    with atomic_path(tmp_path / "cf.npy") as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(64, 4096))  # sparse
        runs.reserve(tmp)
        assert os.stat(tmp).st_blocks * 512 >= os.stat(tmp).st_size
        out[:] = 7
        out.flush()
        del out
    assert np.load(tmp_path / "cf.npy").sum() == 7 * 64 * 4096

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(WriteError, match=r"could not write .*big\.npy: the disk may be full"):
        with atomic_path(tmp_path / "big.npy") as tmp:
            np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(64, 4096))
            runs.reserve(tmp)
    assert sorted(os.listdir(tmp_path)) == ["cf.npy"]
