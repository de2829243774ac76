"""The real-data route end to end on the fixture (`cfcl.data.fixture`): PadChest metadata, 16-bit
PNGs with borders, CheXmask "Preprocessed" RLE and a gold-mask folder in the exact real formats,
made from phantom renders, read back through `cfcl.data.padchest.load_split` at the smoke sizes."""
from __future__ import annotations

import hashlib
import json
import shlex
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cfcl.config import get_profile
from cfcl.data import DataWarning
from cfcl.data import chexmask as cm
from cfcl.data import fixture as fx
from cfcl.data import gold as gd
from cfcl.data import padchest as pc
from cfcl.data.metadata import filter_metadata, read_metadata

pytestmark = pytest.mark.slow  # writes the fixture (~10-30 s) once for the module

SPLITS = ("pretrain", "val", "annotated", "test")


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """The fixture, written once for the module (the shape bank comes from the session's cache)."""
    out = tmp_path_factory.mktemp("fixture") / "padchest-fixture"
    settings = fx.write_fixture(out, seed=0)
    return out, settings


@pytest.fixture(scope="module")
def loaded(written, tmp_path_factory):
    """All four splits through the real-data reader, with the smoke profile's sizes."""
    out, settings = written
    profile = get_profile("smoke", **settings)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CFCL_CACHE", str(tmp_path_factory.mktemp("padchest-cache")))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no split may come up short, no row is dropped unannounced ...
            warnings.filterwarnings("ignore", message=r".*1 rows hold values .*'GEHealthcare': 1\)",
                                    category=DataWarning)  # ... but the fixture's row of another manufacturer
            splits = {s: pc.load_split(profile.data, s) for s in SPLITS}
            assignment = pc.assign_splits(profile.data)
    return profile, splits, assignment, fx.read_items(out)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


def test_layout_formats_and_settings(written):
    out, settings = written
    assert settings == fx.fixture_settings(out)
    assert settings["data.source"] == "padchest"
    parsed = dict(item.split("=", 1) for item in shlex.split(fx.settings_line(settings)))
    assert parsed == settings
    manifest = fx.read_manifest(out)
    assert manifest["version"] == fx.FIXTURE_VERSION and manifest["seed"] == 0
    assert not list(out.parent.glob(f".{out.name}.partial-*"))
    # PadChest metadata: the real file's column set, with its unnamed index column first
    header = (out / fx.METADATA_FILE).read_text().splitlines()[0].split(",")
    assert header[0] == "" and tuple(header[1:]) == fx.METADATA_COLUMNS
    from cfcl.data.metadata import REQUIRED_COLUMNS

    assert set(REQUIRED_COLUMNS) <= set(header)
    raw = read_metadata(settings["data.padchest_metadata"])
    assert set(raw["Manufacturer_DICOM"]) == {"ImagingDynamicsCompanyLtd", "PhilipsMedicalSystems",
                                              fx.OTHER_MANUFACTURER}
    # images: 16-bit grayscale PNGs under <ImageDir>/<ImageID>, non-square content in dark borders
    items = fx.read_items(out)
    row = items[items["role"] == "annotated"].iloc[0]
    path = out / "images" / str(row["ImageDir"]) / row["ImageID"]
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode.startswith("I")
    img = pc.read_png(path)
    assert img.dtype == np.uint16 and img.shape == (row["height"], row["width"])
    top, bottom, left, right = pc.content_box(img)
    assert (top, left) == (row["border_top"], row["border_left"])
    assert (bottom - top, right - left) == (row["crop_bottom"] - row["crop_top"], row["crop_right"] - row["crop_left"])
    assert bottom - top != right - left
    # CheXmask "Preprocessed": the real columns, 1024 x 1024 frames, 120 landmarks
    chex_text = (out / fx.CHEXMASK_FILE).read_text().splitlines()[0]
    assert chex_text.split(",") == list(cm.COLUMNS)
    chex = cm.read_chexmask(settings["data.chexmask_csv"], columns=cm.COLUMNS)
    assert (chex["Height"] == 1024).all() and (chex["Width"] == 1024).all()
    assert chex["Landmarks"].map(lambda s: len(s.split(","))).eq(2 * sum(fx.N_LANDMARKS)).all()
    assert (chex["Heart"].str.len() > 0).all()
    # gold folder: 70 annotated (20 + 50), 16 test (4 per scanner x effusion cell), masks at PNG size
    ann = gd.read_gold_index(settings["data.gold_masks"])
    test = gd.read_gold_index(settings["data.gold_masks"], gd.TEST_INDEX)
    assert len(ann) == 70 and ann["effusion"].sum() == 50 and len(test) == 16
    mask = gd.read_gold_mask(ann["mask_path"][0], shape=pc.read_png(
        out / "images" / str(items.set_index("ImageID").loc[ann["ImageID"][0], "ImageDir"]) / ann["ImageID"][0]).shape)
    assert set(np.unique(mask)) == {0, 1, 2}


def test_rle_upscaled_is_the_encoding_of_the_upscaled_mask():
    rng = np.random.default_rng(1)
    for n in (1, 3, 8, 16):
        for p in (0.0, 0.3, 0.8, 1.0):
            m = rng.random((n, n)) < p
            m[:, -1] |= p > 0.5  # runs that wrap onto the next row
            for f in (1, 4):
                assert fx.rle_upscaled(m, f) == cm.rle_encode(cm.resize_nearest(m.astype(np.uint8), n * f))


def test_split_sizes_patients_and_drops(loaded):
    profile, splits, assignment, items = loaded
    d = profile.data
    assert (d.n_pretrain, d.n_val, d.n_test, d.n_annotated_healthy, d.n_annotated_effusion) == (64, 16, 16, 20, 50)
    assert {s: len(x) for s, x in splits.items()} == {"pretrain": 64, "val": 16, "annotated": 70, "test": 16}
    ann, test = splits["annotated"], splits["test"]
    assert ann.parents["effusion"].tolist().count(1) == 50 and ann.gold is not None and test.gold is not None
    assert test.parents.groupby(["scanner", "effusion"]).size().tolist() == [4, 4, 4, 4]
    assert splits["pretrain"].gold is None and splits["val"].gold is None
    for name in ("pretrain", "val"):  # both classes and both scanners reach the stages that need them
        assert set(splits[name].parents["effusion"]) == {0, 1}, name
        assert set(splits[name].parents["scanner"]) == {0, 1}, name
        assert (splits[name].quality >= d.chexmask_min_dice_rca).all()
    # patient level: no patient in two splits; some patients have two images in one split
    patients = {s: set(x.parents["PatientID"]) for s, x in splits.items()}
    for i, s in enumerate(SPLITS):
        for t in SPLITS[i + 1:]:
            assert not patients[s] & patients[t], (s, t)
    pool = pd.concat([splits["pretrain"].parents, splits["val"].parents])
    assert pool["PatientID"].duplicated().sum() >= 5
    # parents agree with the plan (sex, scanner, effusion, patient) for every loaded image
    truth = items.set_index("ImageID")
    for split in splits.values():
        expected = truth.loc[split.ids]
        for col in ("sex", "scanner", "effusion"):
            np.testing.assert_array_equal(split.parents[col].to_numpy(), expected[col].to_numpy())
        assert split.parents["PatientID"].tolist() == expected["PatientID"].tolist()
    # gold images are the fixture's annotated / test rows
    assert set(ann.ids) == set(items.loc[items["role"] == "annotated", "ImageID"])
    assert set(test.ids) == set(items.loc[items["role"] == "test", "ImageID"])
    # every row that must be dropped is dropped, and for its own reason
    drops = items[items["role"] == "drop"]
    assert len(drops) == 13
    used = set().union(*(set(x.ids) for x in splits.values()))
    assert not used & set(drops["ImageID"]) and not set(assignment["ImageID"]) & set(drops["ImageID"])
    kept = set(filter_metadata(read_metadata(profile.data.padchest_metadata))["ImageID"])
    by_reason = drops.set_index("reason")["ImageID"]
    for reason, _ in fx.FILTERED:  # the metadata filter drops these ...
        assert by_reason[reason] not in kept, reason
    for reason in ("no_png", "no_chexmask", "annotated_patient", "test_patient"):  # ... not these
        assert by_reason[reason] in kept, reason
    assert set(by_reason["low_quality"]) <= kept
    chex = cm.read_chexmask(profile.data.chexmask_csv)
    assert (chex.loc[list(by_reason["low_quality"]), "Dice RCA (Mean)"] < 0.8).all()
    assert by_reason["no_chexmask"] not in chex.index and by_reason["lateral"] not in chex.index
    assert not list(Path(profile.data.padchest_images).rglob(by_reason["no_png"]))


def test_images_and_masks_are_the_phantom_renders(loaded):
    """After the project's preprocessing every image is the phantom's render (cropped margin
    black) up to resampling, and the gold and silver masks are the phantom's, pixel for pixel."""
    profile, splits, _, items = loaded
    size = profile.data.image_size
    truth = items.set_index("ImageID")
    chosen = [(name, i) for name in SPLITS for i in (0, 1, len(splits[name]) - 1)]
    rows = truth.loc[[splits[n].ids[i] for n, i in chosen]].reset_index()
    renders = fx.render_items(rows, seed=0)
    factor = fx.CONTENT // size
    for k, ((name, i), row) in enumerate(zip(chosen, rows.itertuples(index=False))):
        split = splits[name]
        frame = np.zeros((fx.CONTENT, fx.CONTENT), bool)
        frame[row.crop_top:row.crop_bottom, row.crop_left:row.crop_right] = True
        # masks: the render's label maps, margin emptied, nearest-resized (the gold mask from its
        # PNG at the original resolution, the silver one from CheXmask's 1024 x 1024 RLE)
        for labels, got in ((renders["silver"][k], split.silver[i]),
                            (renders["gold"][k], split.gold[i] if split.gold is not None else None)):
            if got is not None:
                np.testing.assert_array_equal(got, cm.resize_nearest(np.where(frame, labels, 0), size))
        # image: the render's content windowed like the 16-bit PNG was (the window is affine
        # invariant), black margin, resized: equal up to rounding
        render = renders["image"][k]
        content = render[row.crop_top:row.crop_bottom, row.crop_left:row.crop_right]
        expected = pc.resize_image(pc.pad_to_square(pc.window(content)), size)
        assert np.abs(split.images[i].astype(float) - np.rint(expected * 255)).max() <= 1, (name, i)
        # and, independently of the project's resampling: block means of the render agree
        blocks = np.where(frame, render, 0).reshape(size, factor, size, factor).mean(axis=(1, 3))
        inside = frame.reshape(size, factor, size, factor).all(axis=(1, 3))
        assert np.corrcoef(blocks[inside], split.images[i][inside])[0, 1] > 0.98, (name, i)


def _shift(labels: np.ndarray, dy: int, dx: int) -> np.ndarray:
    out = np.zeros_like(labels)
    h, w = labels.shape
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = labels[max(-dy, 0):h - max(dy, 0),
                                                                      max(-dx, 0):w - max(dx, 0)]
    return out


def test_silver_lines_up_with_gold_on_healthy_images(loaded):
    """Silver (CheXmask RLE, 1024 frame) and gold (mask PNG, original resolution) come through
    different files and frames; after preprocessing they overlap (Dice > 0.9 on healthy images,
    where the phantom's silver differs from gold only by its boundary jitter) and no shift of the
    silver masks would make them overlap better."""
    _, splits, _, _ = loaded
    pairs = []
    for name in ("annotated", "test"):
        split = splits[name]
        for i in np.flatnonzero(split.parents["effusion"].to_numpy() == 0):
            pairs.append((split.gold[i], split.silver[i]))
            # sides: label 1 (patient's right lung) on the image's left, in both masks
            for m in pairs[-1]:
                cols = np.nonzero(m)[1]
                assert cols[m[m > 0] == 1].mean() < cols[m[m > 0] == 2].mean()
    assert len(pairs) == 28

    def mean_dice(dy: int = 0, dx: int = 0) -> float:
        return float(np.mean([np.mean([_dice(g == c, _shift(s, dy, dx) == c) for c in (1, 2)]) for g, s in pairs]))

    aligned = mean_dice()
    assert aligned > 0.9, aligned
    shifted = {(dy, dx): mean_dice(dy, dx) for dy in (-2, -1, 0, 1, 2) for dx in (-2, -1, 0, 1, 2) if dy or dx}
    assert aligned > max(shifted.values()), (aligned, shifted)
    # effusion hides lung in the silver mask only: silver is smaller than gold there
    ann = splits["annotated"]
    eff = ann.parents["effusion"].to_numpy() == 1
    assert (ann.silver[eff] > 0).sum() < (ann.gold[eff] > 0).sum()


def test_cli_prints_settings_reuses_and_refuses_foreign_folders(written, tmp_path, capsys):
    out, settings = written
    stamp = (out / fx.MANIFEST).stat().st_mtime_ns
    assert fx.main(["--out", str(out)]) == 0  # a complete fixture of this seed is reused
    line = capsys.readouterr().out.strip().splitlines()
    assert len(line) == 1 and line[0].startswith("data.source=padchest data.padchest_images=")
    assert dict(i.split("=", 1) for i in shlex.split(line[0])) == settings
    assert (out / fx.MANIFEST).stat().st_mtime_ns == stamp
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="refusing to replace"):
        fx.write_fixture(foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_make_realdata_smoke_leaves_a_foreign_folder_as_it_is(tmp_path):
    """``make realdata-smoke REAL_DIR=<a folder the project did not write>`` refuses with one line
    and deletes nothing: neither the folder and its files nor a file named ``<folder>.settings``.
    (``MAKE=true`` turns the pipeline the recipe would start next into a no-op; the recipe's
    fixture step runs as written.)"""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    foreign = tmp_path / "my data"
    (foreign / "sub").mkdir(parents=True)
    (foreign / "notes.txt").write_text("keep me")
    (foreign / "sub" / "scan.png").write_bytes(b"not ours")
    beside = tmp_path / "my data.settings"
    beside.write_text("the user's own file")
    stamp = tmp_path / "installed"
    stamp.touch()  # the recipe's order-only prerequisite, up to date: no install runs
    proc = subprocess.run(["make", "-s", "-C", str(repo), "realdata-smoke", f"REAL_DIR={foreign}",
                           "MAKE=true", f"INSTALLED={stamp}", f"PY={sys.executable}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    message = [line for line in proc.stderr.splitlines() if "cfcl.data.fixture" in line]
    assert len(message) == 1 and "refusing to replace it" in message[0] and str(foreign) in message[0]
    assert "Traceback" not in proc.stderr
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert (foreign / "sub" / "scan.png").read_bytes() == b"not ours"
    assert sorted(p.name for p in foreign.rglob("*")) == ["notes.txt", "scan.png", "sub"]
    assert beside.read_text() == "the user's own file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["installed", "my data", "my data.settings"]


class Interrupted(Exception):
    pass


def test_interrupted_write_is_not_a_fixture(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = fx.chexmask_row

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 5:
            raise Interrupted  # cut short mid-write
        return real(*args, **kwargs)

    monkeypatch.setattr(fx, "render_items", lambda items, seed=0: _fake_renders(len(items)))
    monkeypatch.setattr(fx, "chexmask_row", flaky)
    out = tmp_path / "fx"
    with pytest.raises(Interrupted):
        fx.write_fixture(out)
    assert not out.exists() and fx.read_manifest(out) is None
    assert not list(tmp_path.glob(".fx.partial-*"))


def _fake_renders(n: int) -> dict[str, np.ndarray]:
    lab = np.zeros((fx.CONTENT, fx.CONTENT), np.uint8)
    lab[60:200, 40:110], lab[60:200, 146:216] = 1, 2
    return {"image": np.full((n, fx.CONTENT, fx.CONTENT), 100, np.uint8), "gold": np.repeat(lab[None], n, 0),
            "silver": np.repeat(lab[None], n, 0), "quality": np.full(n, 0.95, np.float32),
            "eff_side": np.zeros(n, np.int64)}


def test_plan_is_deterministic_and_balanced():
    a, b, c = fx.plan(0), fx.plan(0), fx.plan(1)
    pd.testing.assert_frame_equal(a, b)
    assert not a["ImageID"].equals(c["ImageID"])
    assert (a["role"].value_counts().to_dict() == {"pool": 96, "annotated": 70, "test": 16, "drop": 13})
    content = np.minimum(a["crop_bottom"] - a["crop_top"], a["crop_right"] - a["crop_left"])
    assert content.min() >= pc.MIN_CONTENT_SIZE
    assert ((a[["border_top", "border_bottom", "border_left", "border_right"]].sum(axis=1)) > 0).all()


def test_same_seed_same_files(tmp_path, monkeypatch):
    """Deterministic for a seed: two writes have the same bytes in every file (the renders are
    replaced by fixed arrays here: the phantom's own determinism is tested with the phantom)."""
    monkeypatch.setattr(fx, "render_items", lambda items, seed=0: _fake_renders(len(items)))
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        fx.write_fixture(out, seed=0)

    def digests(root):
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    assert digests(a) == digests(b)
    assert json.loads((a / fx.MANIFEST).read_text())["seed"] == 0
