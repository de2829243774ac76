"""Real-data reader on a tiny fake PadChest + CheXmask + gold folder in the real formats."""
from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cfcl.config import DataConfig, get_profile
from cfcl.data import DataWarning
from cfcl.data import chexmask as cm
from cfcl.data import gold as gd
from cfcl.data import load_split as dispatch_load_split
from cfcl.data import make_data
from cfcl.data import padchest as pc
from cfcl.data.metadata import filter_metadata, read_metadata
from cfcl.runs import ArtifactError, MissingRunError

FRAME = cm.PREPROCESSED_SIZE  # side of the "Preprocessed" CheXmask frame (1024)
SIZE = 32  # project image size in these tests
ANNOTATED = ["gold0.png", "gold1.png", "gold2.png", "gold4.png", "gold2_nochex.png"]
# CheXmask rows of these images are at the image's original resolution ("OriginalResolution")
ORIGINAL = {"gold1.png", "img01_0.png", "img05_0.png", "img10_0.png"}


def _meta_row(image_id, patient, sex="F", scanner=0, labels="['normal']", projection="PA",
              pediatric="No", image_dir=0):
    maker = ("ImagingDynamicsCompanyLtd", "PhilipsMedicalSystems")[scanner] if isinstance(scanner, int) else scanner
    return {"ImageID": image_id, "ImageDir": image_dir, "PatientID": patient, "PatientSex_DICOM": sex,
            "Projection": projection, "Pediatric": pediatric, "Manufacturer_DICOM": maker, "Labels": labels}


def test_metadata_filter_on_real_column_format(tmp_path):
    rows = [_meta_row("a.png", "1", "F", 1, "['normal']"),
            _meta_row("b.png", "2", "M", 0, "['pleural effusion', 'cardiomegaly']"),
            _meta_row("c.png", "3", "M", 1, "[' pleural effusion']"),  # leading space
            _meta_row("d.png", "4", "F", 1, float("nan")),  # NaN labels: kept, no effusion
            _meta_row("e.png", "5", "F", 1, projection="L"),  # lateral
            _meta_row("f.png", "6", "F", 1, pediatric="PED"),  # paediatric
            _meta_row("g.png", "7", "O", 1),  # unknown sex
            _meta_row("h.png", "8", "F", "SiemensHealthineers"),  # other scanner
            _meta_row("i.png", "9", "F", 1, "['exclude']"),
            _meta_row("j.png", "10", "M", 0, "[' suboptimal study', 'normal']"),
            _meta_row("k.png", "11", "M", 0, projection="AP")]
    path = tmp_path / "meta.csv"
    df = pd.DataFrame(rows)
    df.insert(0, "Unnamed: 0", range(len(df)))
    df["Report"] = "texto"
    df.to_csv(path, index=False)
    raw = read_metadata(path)
    # the other scanner is a value the real file does not hold: dropped with a counted warning
    with pytest.warns(DataWarning, match=r"meta\.csv: 1 rows hold values .*Manufacturer_DICOM 'SiemensHealthineers': 1"):
        out = filter_metadata(raw)
    assert list(out["ImageID"]) == ["a.png", "b.png", "c.png", "d.png"]
    assert list(out["sex"]) == [0, 1, 1, 0] and list(out["scanner"]) == [1, 0, 1, 1]
    assert list(out["effusion"]) == [0, 1, 0, 0]
    with pytest.warns(DataWarning):
        assert list(filter_metadata(raw, strip_labels=True)["effusion"]) == [0, 1, 1, 0]
    # sex "O", an empty sex cell, the known projections and "PED" are dropped without a warning
    known = raw[raw["Manufacturer_DICOM"] != "SiemensHealthineers"].copy()
    known.loc[known.index[0], "PatientSex_DICOM"] = float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert list(filter_metadata(known)["ImageID"]) == ["b.png", "c.png", "d.png"]


# --------------------------------------------------------------------------- preprocessing


def _png16(path, arr):
    Image.fromarray(arr.astype(np.uint16)).save(path)


def test_png_preprocessing_border_padding_window(tmp_path):
    img = np.zeros((10, 14), np.uint16)
    content = (np.arange(7 * 11).reshape(7, 11) * 100 + 1000).astype(np.uint16)
    img[2:9, 3:14] = content  # border: rows 0-1 and 9, columns 0-2 (the last column is content)
    img[0, 0] = 511  # high byte 1: still border (CheXmask keeps 8-bit values > 1)
    _png16(tmp_path / "x.png", img)
    arr = pc.read_png(tmp_path / "x.png")
    assert arr.dtype == np.uint16 and arr.shape == (10, 14)
    assert pc.content_box(arr) == (2, 9, 3, 14)
    arr2 = arr.copy()
    arr2[0, 0] = 512  # high byte 2: content
    assert pc.content_box(arr2) == (0, 9, 0, 14)
    opts = pc.PadChestOptions(low_percentile=0.0, high_percentile=100.0)
    out, box = pc.preprocess_image(arr, 11, opts)  # square side 11: no resize, exact values
    assert box == (2, 9, 3, 14) and out.dtype == np.uint8 and out.shape == (11, 11)
    expected = np.zeros((11, 11))
    expected[2:9, :] = (content - 1000) / (content.max() - 1000.0)  # top pad (11 - 7) // 2 = 2
    np.testing.assert_array_equal(out, np.rint(expected * 255).astype(np.uint8))
    # odd difference: extra row at the bottom
    np.testing.assert_array_equal(pc.pad_to_square(np.ones((2, 5), np.uint8))[:, 0], [0, 1, 1, 0, 0])
    # 4x downscale of a 40 x 30 image (5 zero columns each side): constant regions stay
    # constant, dark stays left, the right padding shows; antialiasing blends the edges
    half = np.zeros((40, 30), np.uint16)
    half[:, :15], half[:, 15:] = 1000, 50000
    small, _ = pc.preprocess_image(half, 10, opts)
    assert (small == small[0]).all()
    assert (small[0, :4] == 0).all() and (small[0, 6:8] == 255).all() and small[0, 9] < 32
    # mask follows the image's crop box, padding and size
    mask = np.zeros((10, 14), np.uint8)
    mask[2:9, 3:8], mask[2:9, 8:14] = 1, 2
    mlab = pc.preprocess_mask(mask, box, 11)
    assert (mlab[2:9, :5] == 1).all() and (mlab[2:9, 5:] == 2).all() and (mlab[[0, 1, 9, 10]] == 0).all()


def test_window_percentiles_exact():
    img = np.arange(1000, dtype=np.uint16).reshape(10, 100)
    w = pc.window(img, 1.0, 99.0)  # nearest rank: values 9 and 989
    assert w[0, 9] == 0.0 and w[9, 89] == 1.0 and w[0, 0] == 0.0 and w[9, 99] == 1.0
    assert w[4, 99] == pytest.approx((499 - 9) / 980)
    assert (pc.window(np.full((3, 3), 7, np.uint16)) == 0).all()


def test_read_png_errors_name_the_file(tmp_path):
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ValueError, match=r"cannot read PadChest image .*corrupt\.png \(corrupt or not a PNG") as err:
        pc.read_png(bad)
    assert "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError, match=r"absent\.png"):
        pc.read_png(tmp_path / "absent.png")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match=r"rgb\.png has mode RGB"):
        pc.read_png(tmp_path / "rgb.png")
    Image.fromarray(np.zeros((4, 4), np.uint16)).save(tmp_path / "black.png")
    with pytest.raises(ValueError, match=r"black\.png: image has no pixel above the border level"):
        pc._process({"path": str(tmp_path / "black.png"), "ImageID": "black.png"}, 8,
                    pc.PadChestOptions(), pd.DataFrame(index=pd.Index([], name="ImageID")), "x.csv")


# --------------------------------------------------------------------------- fake dataset


def _case(rng):
    """A 16-bit image with black borders, dark lungs on a bright body, and its label map."""
    h, w = (int(v) for v in rng.integers(72, 96, 2))
    t, b, l, r = (int(v) for v in rng.integers(0, 5, 4))
    ch, cw = h - t - b, w - l - r
    content = 40000 + rng.integers(0, 2000, (ch, cw))
    lab = np.zeros((ch, cw), np.uint8)
    lab[int(.2 * ch):int(.85 * ch), int(.1 * cw):int(.4 * cw)] = 1  # patient's right lung = image left
    lab[int(.3 * ch):int(.7 * ch), int(.55 * cw):int(.9 * cw)] = 2  # patient's left lung, a different shape
    content[lab > 0] = 3000 + rng.integers(0, 500, int((lab > 0).sum()))
    img = np.zeros((h, w), np.uint16)
    img[t:t + ch, l:l + cw] = content
    full = np.zeros((h, w), np.uint8)
    full[t:t + ch, l:l + cw] = lab
    frame = cm.resize_nearest(pc.pad_to_square(lab), FRAME)  # CheXmask's "Preprocessed" frame
    return img, full, frame


@pytest.fixture()
def fake(tmp_path, monkeypatch):
    """24 ordinary patients (4 cells x 6), 4 gold patients, plus rows that must be left out."""
    monkeypatch.setenv("CFCL_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(7)
    root, gold_dir = tmp_path / "padchest", tmp_path / "gold"
    (gold_dir / "masks").mkdir(parents=True)
    root.mkdir()
    meta, chex, gold_rows, truth = [], [], [], {}

    def add(image_id, patient, sex, scanner, effusion, quality=0.9, png=True, in_chexmask=True, gold=None):
        img, full, frame = _case(rng)
        image_dir = len(meta) % 3
        labels = "['pleural effusion', 'cardiomegaly']" if effusion else "['normal']"
        meta.append(_meta_row(image_id, patient, ("F", "M")[sex], scanner, labels, image_dir=image_dir))
        if png:
            folder = root / str(image_dir) if image_dir else root  # both layouts
            folder.mkdir(exist_ok=True)
            _png16(folder / image_id, img)
        if in_chexmask:
            rle = full if image_id in ORIGINAL else frame
            chex.append([image_id, quality, min(1.0, quality + 0.05), "[]", cm.rle_encode(rle == 2),
                         cm.rle_encode(rle == 1), "", *rle.shape])
        if gold is not None:
            gd.write_gold_mask(gold_dir / "masks" / image_id, full)
            gold_rows.append({"ImageID": image_id, "effusion": gold, "mask": f"masks/{image_id}"})
        truth[image_id] = (img, full, frame)

    for p in range(24):
        scanner, effusion, sex = p % 2, (p // 2) % 2, (p // 4) % 2
        for k in range(1 + (p % 3 == 0)):
            add(f"img{p:02d}_{k}.png", f"9{p:035d}", sex, scanner, effusion)
    add("lowq.png", "9" * 36, 0, 0, 0, quality=0.5)  # fails the Dice RCA filter
    add("nopng.png", "8" * 36, 0, 1, 0, png=False)  # image not downloaded
    add("nochex.png", "7" * 36, 1, 1, 1, in_chexmask=False)  # no CheXmask row
    meta.append(_meta_row("lateral.png", "6" * 36, "F", 1, projection="L"))
    for g, eff in enumerate((0, 1, 0, 0, 1)):  # 3 healthy + 2 effusion gold images
        add(f"gold{g}.png", f"5{g:035d}", g % 2, g % 2, 1 - eff, gold=eff)  # metadata label disagrees
    add("gold0_other.png", f"5{0:035d}", 0, 0, 0)  # another image of a gold patient
    add("gold2_nochex.png", f"4{2:035d}", 0, 0, 0, gold=1)
    chex = [c for c in chex if c[0] != "gold2_nochex.png"]  # a gold image without a CheXmask row

    pd.DataFrame(meta).to_csv(tmp_path / "meta.csv", index=False)
    pd.DataFrame(chex, columns=list(cm.COLUMNS)).to_csv(tmp_path / "Padchest.csv", index=False)
    pd.DataFrame(gold_rows).to_csv(gold_dir / gd.ANNOTATED_INDEX, index=False)
    # n_pretrain=100 takes every eligible image and only 3 effusion rows are annotated: accepted short
    cfg = DataConfig(source="padchest", image_size=SIZE, n_pretrain=100, n_val=6, n_test=8,
                     n_annotated_healthy=2, n_annotated_effusion=4, seed=0, allow_short_split=True,
                     padchest_metadata=str(tmp_path / "meta.csv"), padchest_images=str(root),
                     chexmask_csv=str(tmp_path / "Padchest.csv"), gold_masks=str(gold_dir))
    return cfg, truth, tmp_path


def test_assignment_patient_level_balanced_deterministic(fake):
    cfg, truth, _ = fake
    with pytest.warns(UserWarning, match="only 3 of 4 effusion"):
        a = pc.assign_splits(cfg)
    with pytest.warns(UserWarning):
        assert a.equals(pc.assign_splits(cfg))
    by = {s: a[a["split"] == s] for s in pc.SPLITS}
    patients = {s: set(d["PatientID"]) for s, d in by.items()}
    for i, s in enumerate(pc.SPLITS):
        for t in pc.SPLITS[i + 1:]:
            assert not patients[s] & patients[t], (s, t)
    # annotated: first 2 healthy + the 3 effusion rows, file order, effusion from the gold CSV
    assert list(by["annotated"]["ImageID"]) == ANNOTATED
    assert list(by["annotated"]["effusion"]) == [0, 1, 0, 1, 1]
    # test: 2 per scanner x effusion cell, never two images of a patient in one cell
    assert len(by["test"]) == 8
    assert by["test"].groupby(["scanner", "effusion"]).size().tolist() == [2, 2, 2, 2]
    # val exactly n_val; pretrain = every other eligible image (n_pretrain caps nothing here)
    assert len(by["val"]) == 6
    eligible = {i for i in truth if i.startswith("img")}
    used = set(by["test"]["ImageID"]) | set(by["val"]["ImageID"]) | set(by["pretrain"]["ImageID"])
    assert used <= eligible
    # unused eligible images: only surplus images of patients already in val or test
    for unused in eligible - used:
        assert f"9{int(unused[3:5]):035d}" in patients["val"] | patients["test"], unused
    for excluded in ("lowq.png", "nopng.png", "nochex.png", "lateral.png", "gold0_other.png"):
        assert excluded not in set(a["ImageID"])
    assert a["path"].map(lambda p: p.endswith(".png")).all()


def test_load_split_end_to_end_and_cache(fake, monkeypatch):
    cfg, truth, tmp_path = fake
    prof = get_profile("smoke", **{f"data.{k}": v for k, v in vars(cfg).items()}, **{"finetune.folds": 2})
    with pytest.raises(MissingRunError, match="python -m cfcl.data"):
        dispatch_load_split(prof, "annotated")  # the data stage makes the data, reading never does
    with pytest.warns(UserWarning):
        ann, = make_data(prof, ("annotated",))
    assert ann.images.dtype == np.uint8 and ann.images.shape == (5, SIZE, SIZE)
    assert ann.counterfactuals is None and ann.gold is not None
    assert ann.ids == ANNOTATED
    assert list(ann.parents.columns[:3]) == ["sex", "scanner", "effusion"]
    assert list(ann.parents["effusion"]) == [0, 1, 0, 1, 1]
    for i, image_id in enumerate(ann.ids[:4]):
        img, full, frame = truth[image_id]
        box = pc.content_box(img)
        np.testing.assert_array_equal(ann.gold[i], pc.preprocess_mask(full, box, SIZE))
        silver = pc.preprocess_mask(full, box, SIZE) if image_id in ORIGINAL else cm.resize_nearest(frame, SIZE)
        np.testing.assert_array_equal(ann.silver[i], silver)
        np.testing.assert_array_equal(ann.images[i], pc.preprocess_image(img, SIZE)[0])
        # the silver mask lies on the image's dark lungs: both lungs present, on the right sides
        lungs, body = ann.images[i][ann.silver[i] > 0], ann.images[i][(ann.silver[i] == 0) & (ann.images[i] > 0)]
        assert np.median(lungs) < 60 < 200 < np.median(body)
        cols = np.nonzero(ann.silver[i])[1]
        assert cols[ann.silver[i][ann.silver[i] > 0] == 1].max() < cols[ann.silver[i][ann.silver[i] > 0] == 2].min()
    # a gold image without a CheXmask row: silver zeros, quality NaN; gold still there
    assert (ann.silver[4] == 0).all() and np.isnan(ann.quality[4]) and ann.gold[4].max() == 2
    assert np.isfinite(ann.quality[:4]).all()

    with pytest.warns(UserWarning):
        test = pc.load_split(cfg, "test")
        val = pc.load_split(cfg, "val")
    assert test.gold is None and len(test) == 8 and len(val) == 6
    assert (val.quality >= 0.8).all()
    # every silver mask lines up, whichever CheXmask frame its row is in (both kinds are here)
    for split in (test, val):
        for i, image_id in enumerate(split.ids):
            img, full, frame = truth[image_id]
            box = pc.content_box(img)
            expected = (pc.preprocess_mask(full, box, SIZE) if image_id in ORIGINAL
                        else cm.resize_nearest(frame, SIZE))
            np.testing.assert_array_equal(split.silver[i], expected)
            np.testing.assert_array_equal(split.images[i], pc.preprocess_image(img, SIZE)[0])
    assert ORIGINAL & (set(test.ids) | set(val.ids)), "no original-resolution CheXmask row was exercised"
    assert not set(test.parents["PatientID"]) & set(val.parents["PatientID"])

    # second call: from the cache (no table is read), memmapped, no temp files left
    monkeypatch.setattr(pc, "_plan", lambda *a, **k: (_ for _ in ()).throw(AssertionError("re-planned")))
    again = pc.load_split(cfg, "val")
    assert isinstance(again.images, np.memmap)
    np.testing.assert_array_equal(again.images, val.images)
    assert again.ids == val.ids
    val_dir = tmp_path / "cache" / "padchest" / f"val-padchest-{pc.cache_key(cfg)}"
    assert not list(val_dir.parent.rglob("*.tmp"))
    manifest = json.loads((val_dir / "manifest.json").read_text())
    assert manifest["n"] == 6 and manifest["counts"]["without_passing_chexmask"] == 3  # lowq, nochex, gold2_nochex
    # damaged arrays are refused, naming the file
    with open(val_dir / "images.npy", "r+b") as f:
        f.seek(200)
        f.write(b"\xff" * 8)
    with pytest.raises(ArtifactError, match="images.npy"):
        pc.load_split(cfg, "val")
    # a cache without its manifest (a build cut short) is not trusted: rebuilt
    (val_dir / "manifest.json").unlink()
    with pytest.raises(AssertionError, match="re-planned"):
        pc.load_split(cfg, "val")


@pytest.mark.filterwarnings("ignore:.*only 3 of 4 effusion")
def test_gold_test_csv(fake):
    cfg, truth, tmp_path = fake
    gold_dir = tmp_path / "gold"
    idx = pd.read_csv(gold_dir / gd.ANNOTATED_INDEX)
    idx[idx["ImageID"] != "gold3.png"].to_csv(gold_dir / gd.ANNOTATED_INDEX, index=False)
    idx[idx["ImageID"] == "gold3.png"].to_csv(gold_dir / gd.TEST_INDEX, index=False)
    with pytest.warns(UserWarning, match=r"test\.csv: only"):
        test = pc.load_split(cfg, "test")
    assert test.ids == ["gold3.png"] and test.gold is not None
    assert list(test.parents[["scanner", "effusion"]].iloc[0]) == [1, 0]
    img, full, _ = truth["gold3.png"]
    np.testing.assert_array_equal(test.gold[0], pc.preprocess_mask(full, pc.content_box(img), SIZE))
    # a patient in both gold files is refused
    idx[idx["ImageID"].isin(["gold3.png", "gold0.png"])].to_csv(gold_dir / gd.TEST_INDEX, index=False)
    with pytest.raises(ValueError, match="share patient"):
        pc.assign_splits(cfg)


def test_errors_missing_settings_corrupt_png_wrong_size_mask(fake, monkeypatch):
    cfg, truth, tmp_path = fake
    with pytest.raises(ValueError, match="data.padchest_images, data.chexmask_csv, data.gold_masks"):
        dispatch_load_split(get_profile("smoke", **{"data.source": "padchest"}), "pretrain")
    with pytest.raises(ValueError, match=r"data\.gold_masks \("):
        pc.load_split(DataConfig(**{**vars(cfg), "gold_masks": None}), "pretrain")
    with pytest.raises(FileNotFoundError, match="setting data.chexmask_csv"):
        pc.load_split(DataConfig(**{**vars(cfg), "chexmask_csv": str(tmp_path / "none.csv")}), "pretrain")
    # wrong-size gold mask: names the file and both sizes
    h, w = truth["gold1.png"][0].shape
    gd.write_gold_mask(tmp_path / "gold" / "masks" / "gold1.png", np.zeros((h + 1, w), np.uint8))
    msg = rf"gold1\.png is {h + 1} x {w} \(height x width\) but its image is {h} x {w}"
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=msg):
        pc.load_split(cfg, "annotated")
    # corrupt PNG of a selected pre-training image: names the file
    with pytest.warns(UserWarning):
        victim = pc.assign_splits(cfg).query("split == 'pretrain'")["path"].iloc[3]
    with open(victim, "r+b") as fh:
        fh.seek(40)
        fh.write(b"\x00" * 64)
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=victim.replace(".", r"\.")):
        pc.load_split(cfg, "pretrain")
    assert not (tmp_path / "cache" / "padchest" / pc.cache_key(cfg) / "pretrain" / "manifest.json").exists()
    # a gold image absent from the image folder
    (tmp_path / "padchest" / "gold0.png").unlink(missing_ok=True)
    for sub in (tmp_path / "padchest").iterdir():
        if sub.is_dir():
            (sub / "gold0.png").unlink(missing_ok=True)
    with pytest.raises(FileNotFoundError, match="'gold0.png'.*data.padchest_images"):
        pc.assign_splits(cfg)


def _rewrite_chexmask(tmp_path, image_id, height, width, labels=None):
    path = tmp_path / "Padchest.csv"
    df = pd.read_csv(path, dtype={"ImageID": str}, keep_default_na=False)
    i = df.index[df["ImageID"] == image_id][0]
    df.loc[i, ["Height", "Width"]] = height, width
    if labels is not None:
        df.loc[i, "Left Lung"], df.loc[i, "Right Lung"] = cm.rle_encode(labels == 2), cm.rle_encode(labels == 1)
    df.to_csv(path, index=False)
    return path


@pytest.mark.filterwarnings("ignore:.*only 3 of 4 effusion")
def test_chexmask_row_in_another_frame_is_refused(fake):
    """Only the 1024 x 1024 "Preprocessed" frame or the image's own (height, width) are valid;
    a square 512 frame or a transposed original-resolution row fails, naming CSV, image and sizes."""
    cfg, truth, tmp_path = fake
    img, full, frame = truth["gold0.png"]
    h, w = img.shape
    small = cm.resize_nearest(frame, 512)
    path = _rewrite_chexmask(tmp_path, "gold0.png", 512, 512, small)  # used to be silently resized
    msg = (rf"{str(path)}: ImageID gold0\.png has a 512 x 512 \(Height x Width\) mask but its image is "
           rf"{h} x {w} \(height x width\)")
    with pytest.raises(ValueError, match=msg):
        pc.load_split(cfg, "annotated")
    if h != w:  # the height/width trap of an original-resolution row
        _rewrite_chexmask(tmp_path, "gold0.png", w, h, full.T.copy())
        with pytest.raises(ValueError, match=rf"gold0\.png has a {w} x {h} .*swapped"):
            pc.load_split(cfg, "annotated")
    _rewrite_chexmask(tmp_path, "gold0.png", h, w, full)  # the image's own size: accepted
    ann = pc.load_split(cfg, "annotated")
    np.testing.assert_array_equal(ann.silver[0], pc.preprocess_mask(full, pc.content_box(img), SIZE))


@pytest.mark.filterwarnings("ignore:.*only 3 of 4 effusion")
def test_small_image_and_empty_gold_mask_are_refused(fake):
    cfg, truth, tmp_path = fake
    # an image whose content is under 64 px on one side after the border crop: names the file
    with pytest.warns(UserWarning):
        row = pc.assign_splits(cfg).query("split == 'val'").iloc[0]
    small = np.zeros((120, 90), np.uint16)
    small[10:110, 20:83] = 40000  # 100 x 63 content
    _png16(row["path"], small)
    with pytest.raises(ValueError, match=rf"{row['path']}: its content is 100 x 63 px .*at least 64 px"):
        pc.load_split(cfg, "val")
    # an empty gold mask of an annotated image: names the mask file
    h, w = truth["gold1.png"][0].shape
    gd.write_gold_mask(tmp_path / "gold" / "masks" / "gold1.png", np.zeros((h, w), np.uint8))
    with pytest.raises(ValueError, match=r"gold mask .*gold1\.png is empty"):
        pc.load_split(cfg, "annotated")


def test_cache_key_covers_pngs_and_gold_masks(fake):
    cfg, truth, tmp_path = fake
    key = pc.cache_key(cfg)
    assert pc.cache_key(cfg) == key  # stable while nothing changes
    png = next((tmp_path / "padchest").rglob("img03_0.png"))
    st = png.stat()
    os.utime(png, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched
    touched = pc.cache_key(cfg)
    assert touched != key
    img = pc.read_png(png)
    _png16(png, np.flipud(img))  # replaced
    replaced = pc.cache_key(cfg)
    assert replaced not in (key, touched)
    _png16(tmp_path / "padchest" / "new.png", img)  # a newly downloaded image joins the pool
    assert pc.cache_key(cfg) not in (key, touched, replaced)
    (tmp_path / "padchest" / "new.png").unlink()
    assert pc.cache_key(cfg) == replaced
    (tmp_path / "padchest" / "notes.txt").write_text("not an image")  # not an input
    assert pc.cache_key(cfg) == replaced
    mask = tmp_path / "gold" / "masks" / "gold2.png"
    st = mask.stat()
    os.utime(mask, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert pc.cache_key(cfg) != replaced
