"""CheXmask reader: RLE codec, orientation, left/right labels, quality filter, CSV errors."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

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
            ["a.png", 0.10, 0.10, "[]", "", "", "", h, w]]  # duplicate: first row kept
    df = cm.read_chexmask(_csv(tmp_path, rows))
    assert list(df.index) == ["a.png", "b.png", "c.png"]
    assert "Landmarks" not in df.columns and "Heart" not in df.columns
    assert list(cm.quality_filter(df, 0.8).index) == ["a.png"]
    assert list(cm.quality_filter(df, 0.79).index) == ["a.png", "b.png"]
    assert list(cm.quality_filter(df, 0.88, column="Dice RCA (Max)").index) == ["a.png", "c.png"]
    lab = cm.row_label_map(df.loc["a.png"], 8)
    expected = np.zeros((8, 8), np.uint8)
    expected[2:6, 1:3] = 1
    expected[1:7, 5:7] = 2
    np.testing.assert_array_equal(lab, expected)
    np.testing.assert_array_equal(cm.row_label_map(df.loc["a.png"], 4), expected[1::2, 1::2])


def test_row_label_map_refuses_non_square_and_names_source(tmp_path):
    rows = [["a.png", 0.9, 0.9, "[]", "", "1 3", "", 2, 5],
            ["b.png", 0.9, 0.9, "[]", "", "1 99", "", 4, 4]]
    df = cm.read_chexmask(_csv(tmp_path, rows))
    with pytest.raises(ValueError, match=r"a\.png has a 2 x 5 \(Height x Width\) mask"):
        cm.row_label_map(df.loc["a.png"], 4, source="Padchest.csv")
    with pytest.raises(ValueError, match=r"Padchest\.csv: ImageID b\.png, column 'Right Lung'.*4 x 4 = 16"):
        cm.row_label_map(df.loc["b.png"], 4, source="Padchest.csv")


def test_read_chexmask_errors_name_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.chexmask_csv"):
        cm.read_chexmask(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"ImageID": ["a"], "Left Lung": [""]}).to_csv(bad, index=False)
    with pytest.raises(ValueError, match=r"bad\.csv lacks columns"):
        cm.read_chexmask(bad)
