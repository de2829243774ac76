"""CheXmask reader: RLE codec, orientation, left/right labels, quality filter, CSV errors."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cfcl.data import DataWarning
from cfcl.data import chexmask as cm


def _reference_decode(rle: str, h: int, w: int) -> np.ndarray:
    """Loop version of the CheXmask decoder (REFERENCES section 4)."""
    flat = np.zeros(h * w, np.uint8)
    vals = [int(v) for v in rle.split()]
    for start, length in zip(vals[0::2], vals[1::2]):
        flat[start - 1:start - 1 + length] = 1
    return flat.reshape(h, w)


@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (32, 32), (5, 64)])
def test_rle_round_trip_random_empty_full(shape):
    rng = np.random.default_rng(0)
    masks = [rng.random(shape) < p for p in (0.1, 0.5, 0.9)]
    masks += [np.zeros(shape, bool), np.ones(shape, bool)]
    for m in masks:
        rle = cm.rle_encode(m)
        dec = cm.rle_decode(rle, *shape)
        assert dec.dtype == np.uint8 and dec.shape == shape
        np.testing.assert_array_equal(dec, m.astype(np.uint8))
        np.testing.assert_array_equal(_reference_decode(rle, *shape), m.astype(np.uint8))
    assert cm.rle_encode(np.zeros(shape)) == ""
    assert cm.rle_encode(np.ones(shape)) == f"1 {shape[0] * shape[1]}"


def test_rle_decode_hand_made_string():
    # 3 x 4 mask, row-major, 1-based: pixels 2..3 (row 0, cols 1-2) and 7..9 (row 1 col 2 .. row 2 col 0)
    expected = np.array([[0, 1, 1, 0],
                         [0, 0, 1, 1],
                         [1, 0, 0, 0]], np.uint8)
    np.testing.assert_array_equal(cm.rle_decode("2 2 7 3", 3, 4), expected)
    assert cm.rle_encode(expected) == "2 2 7 3"
    # empty / NaN give empty masks; overlapping runs are a union
    assert cm.rle_decode("", 2, 2).sum() == 0
    assert cm.rle_decode(float("nan"), 2, 2).sum() == 0
    np.testing.assert_array_equal(cm.rle_decode("1 3 2 3", 1, 5), [[1, 1, 1, 1, 0]])


def test_rle_decode_non_square_orientation():
    # Height 2, Width 5: the run "6 5" is the whole second row, never a column.
    m = cm.rle_decode("6 5", 2, 5)
    np.testing.assert_array_equal(m, [[0, 0, 0, 0, 0], [1, 1, 1, 1, 1]])
    # Height 5, Width 2: the same run is flat pixels 5..9: (2, 1), then rows 3 and 4
    m2 = cm.rle_decode("6 5", 5, 2)
    np.testing.assert_array_equal(m2, [[0, 0], [0, 0], [0, 1], [1, 1], [1, 1]])


@pytest.mark.parametrize("rle,msg", [("1 2 3", "odd number"), ("0 2", "start below 1"),
                                      ("1 -1", "negative"), ("5 3", "past the mask size 2 x 3 = 6"),
                                      ("a b", "non-integer")])
def test_rle_decode_errors(rle, msg):
    with pytest.raises(ValueError, match=msg):
        cm.rle_decode(rle, 2, 3)


def test_label_map_sides_and_overlap():
    right = np.array([[1, 1, 0, 0]])  # patient's right lung, image left
    left = np.array([[0, 1, 1, 0]])  # patient's left lung, image right (overlaps at col 1)
    np.testing.assert_array_equal(cm.label_map(right, left), [[1, 2, 2, 0]])
    with pytest.raises(ValueError, match="differ in shape"):
        cm.label_map(np.zeros((2, 2)), np.zeros((2, 3)))


def test_resize_nearest_exact_and_orientation():
    lab = np.arange(16, dtype=np.uint8).reshape(4, 4)
    np.testing.assert_array_equal(cm.resize_nearest(lab, 2), [[5, 7], [13, 15]])
    np.testing.assert_array_equal(cm.resize_nearest(lab, 8)[::2, ::2], lab)
    tall = np.zeros((6, 2), np.uint8)
    tall[:3] = 1  # top half
    out = cm.resize_nearest(tall, 4, 4)
    np.testing.assert_array_equal(out, [[1] * 4, [1] * 4, [0] * 4, [0] * 4])


def _csv(tmp_path, rows, name="Padchest.csv"):
    df = pd.DataFrame(rows, columns=list(cm.COLUMNS))
    path = tmp_path / name
    df.to_csv(path, index=False)
    return path


def test_read_csv_row_label_map_and_quality_filter(tmp_path):
    h = w = 8
    right = np.zeros((h, w), np.uint8)
    right[2:6, 1:3] = 1  # image left
    left = np.zeros((h, w), np.uint8)
    left[1:7, 5:7] = 1  # image right
    rows = [["a.png", 0.91, 0.95, "[]", cm.rle_encode(left), cm.rle_encode(right), "", h, w],
            ["b.png", 0.79, 0.85, "[]", "", "", "", h, w],
            ["c.png", float("nan"), 0.9, "[]", "", "", "", h, w],
            ["a.png", 0.10, 0.10, "[]", "", "", "", h, w]]  # duplicate: first row kept, counted
    with pytest.warns(DataWarning, match=r"Padchest\.csv: 1 rows repeat an ImageID .*'a\.png'"):
        df = cm.read_chexmask(_csv(tmp_path, rows))
    assert list(df.index) == ["a.png", "b.png", "c.png"]
    empty = cm.empty_lungs(df)
    assert empty.loc["a.png"].tolist() == [False, False] and empty.loc["b.png"].tolist() == [True, True]
    assert "Landmarks" not in df.columns and "Heart" not in df.columns
    assert list(cm.quality_filter(df, 0.8).index) == ["a.png"]
    assert list(cm.quality_filter(df, 0.79).index) == ["a.png", "b.png"]
    assert list(cm.quality_filter(df, 0.88, column="Dice RCA (Max)").index) == ["a.png", "c.png"]
    expected = np.zeros((8, 8), np.uint8)
    expected[2:6, 1:3] = 1
    expected[1:7, 5:7] = 2
    np.testing.assert_array_equal(cm.decode_row(df.loc["a.png"]), expected)
    # an 8 x 8 row is an "OriginalResolution" row of an 8 x 8 image (whole image as content box)
    assert cm.mask_frame(df.loc["a.png"], (8, 8)) == "original"
    np.testing.assert_array_equal(cm.row_label_map(df.loc["a.png"], 8, image_shape=(8, 8)), expected)
    np.testing.assert_array_equal(cm.row_label_map(df.loc["a.png"], 4, image_shape=(8, 8)), expected[1::2, 1::2])


def test_preprocessed_frame_and_original_resolution_rows(tmp_path):
    """A 1024 x 1024 row is resized; a row at the image's (height, width) follows the image's
    crop box, square padding and resize, exactly like a gold mask."""
    f = cm.PREPROCESSED_SIZE
    assert f == 1024
    frame = np.zeros((f, f), np.uint8)
    frame[256:768, 128:448] = 1  # right lung, image left
    frame[300:700, 576:896] = 2
    h, w, box = 40, 30, (5, 37, 2, 28)  # image 40 x 30, content 32 x 26 after the border crop
    full = np.zeros((h, w), np.uint8)
    full[10:30, 4:12], full[12:28, 16:26] = 1, 2
    rows = [["pre.png", 0.9, 0.9, "[]", cm.rle_encode(frame == 2), cm.rle_encode(frame == 1), "", f, f],
            ["orig.png", 0.9, 0.9, "[]", cm.rle_encode(full == 2), cm.rle_encode(full == 1), "", h, w]]
    df = cm.read_chexmask(_csv(tmp_path, rows))
    pre = df.loc["pre.png"]
    assert cm.mask_frame(pre) == "preprocessed" and cm.mask_frame(pre, (2000, 1700)) == "preprocessed"
    np.testing.assert_array_equal(cm.row_label_map(pre, 8, image_shape=(2000, 1700), box=(0, 9, 0, 9)),
                                  cm.resize_nearest(frame, 8))
    orig = df.loc["orig.png"]
    assert cm.mask_frame(orig, (h, w)) == "original"
    out = cm.row_label_map(orig, 16, image_shape=(h, w), box=box)
    from cfcl.data import padchest as pc

    np.testing.assert_array_equal(out, pc.preprocess_mask(full, box, 16))
    # the content (32 x 26) is padded left/right by 3 columns: the lungs move accordingly
    expected = cm.resize_nearest(pc.pad_to_square(full[5:37, 2:28]), 16)
    np.testing.assert_array_equal(out, expected)
    assert out[:, :1].max() == 0 and set(np.unique(out)) == {0, 1, 2}


@pytest.mark.parametrize("rows_cols,image,hint", [((512, 512), (2000, 1700), ""),  # another square frame
                                                   ((30, 40), (40, 30), "swapped"),  # transposed
                                                   ((40, 31), (40, 30), ""),
                                                   ((1024, 1000), None, "")])
def test_row_in_another_frame_is_refused_naming_csv_image_and_sizes(tmp_path, rows_cols, image, hint):
    h, w = rows_cols
    rows = [["x.png", 0.9, 0.9, "[]", "", "1 3", "", h, w]]
    path = _csv(tmp_path, rows)
    row = cm.read_chexmask(path).loc["x.png"]
    size = "unknown size" if image is None else rf"its image is {image[0]} x {image[1]} \(height x width\)"
    msg = rf"Padchest\.csv: ImageID x\.png has a {h} x {w} \(Height x Width\) mask but .*{size}.*{hint}"
    with pytest.raises(ValueError, match=msg):
        cm.row_label_map(row, 8, source=str(path), image_shape=image)


def test_row_label_map_refuses_transposed_row_and_names_source(tmp_path):
    rows = [["a.png", 0.9, 0.9, "[]", "", "1 3", "", 2, 5],
            ["b.png", 0.9, 0.9, "[]", "", "1 99", "", 4, 4]]
    df = cm.read_chexmask(_csv(tmp_path, rows))
    with pytest.raises(ValueError, match=r"a\.png has a 2 x 5 \(Height x Width\) mask but its image is 5 x 2"):
        cm.row_label_map(df.loc["a.png"], 4, source="Padchest.csv", image_shape=(5, 2))
    with pytest.raises(ValueError, match=r"Padchest\.csv: ImageID b\.png, column 'Right Lung'.*4 x 4 = 16"):
        cm.row_label_map(df.loc["b.png"], 4, source="Padchest.csv", image_shape=(4, 4))


def test_read_chexmask_errors_name_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.chexmask_csv"):
        cm.read_chexmask(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"ImageID": ["a"], "Left Lung": [""]}).to_csv(bad, index=False)
    with pytest.raises(ValueError, match=r"bad\.csv lacks columns"):
        cm.read_chexmask(bad)
