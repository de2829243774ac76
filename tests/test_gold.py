"""Gold mask folder: index CSV, mask PNGs, and errors that name the file."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cfcl.data import gold as gd


def _folder(tmp_path, rows, name=gd.ANNOTATED_INDEX):
    folder = tmp_path / "gold"
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(folder / name, index=False)
    return folder


def test_round_trip_and_index(tmp_path):
    lab = np.zeros((5, 7), np.uint8)
    lab[1:4, 1:3] = 1
    lab[1:4, 4:6] = 2
    folder = _folder(tmp_path, {"ImageID": ["x.png", "y.png"], "effusion": [1, 0],
                                "mask": ["masks/x.png", "masks/y.png"], "annotator": ["A", "B"]})
    gd.write_gold_mask(folder / "masks" / "x.png", lab)
    gd.write_gold_mask(folder / "masks" / "y.png", np.zeros((5, 7), np.uint8))
    assert not list(folder.glob("masks/.*.tmp"))
    idx = gd.read_gold_index(folder)
    assert list(idx["ImageID"]) == ["x.png", "y.png"]
    assert list(idx["effusion"]) == [1, 0] and list(idx["annotator"]) == ["A", "B"]
    assert idx["mask_path"][0] == str((folder / "masks" / "x.png").resolve())
    out = gd.read_gold_mask(idx["mask_path"][0], shape=(5, 7))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, lab)
    assert gd.read_gold_index(folder, gd.TEST_INDEX, required=False) is None


def test_wrong_size_names_file_and_both_sizes(tmp_path):
    path = tmp_path / "m.png"
    gd.write_gold_mask(path, np.zeros((5, 7), np.uint8))
    with pytest.raises(ValueError, match=r"m\.png is 5 x 7 \(height x width\) but its image is 7 x 5"):
        gd.read_gold_mask(path, shape=(7, 5))


def test_bad_values_colour_and_corrupt_name_file(tmp_path):
    p1 = tmp_path / "vals.png"
    Image.fromarray(np.full((3, 3), 255, np.uint8)).save(p1)
    with pytest.raises(ValueError, match=r"vals\.png holds values \[255\]"):
        gd.read_gold_mask(p1)
    p2 = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(p2)
    with pytest.raises(ValueError, match=r"rgb\.png has mode RGB and shape \(3, 3, 3\)"):
        gd.read_gold_mask(p2)
    p3 = tmp_path / "broken.png"
    p3.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ValueError, match=r"cannot read gold mask .*broken\.png"):
        gd.read_gold_mask(p3)
    with pytest.raises(ValueError, match="values 0/1/2"):
        gd.write_gold_mask(tmp_path / "w.png", np.full((2, 2), 3))


def test_index_errors_name_the_csv(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.gold_masks"):
        gd.read_gold_index(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"annotated\.csv"):
        gd.read_gold_index(empty)
    folder = _folder(tmp_path, {"ImageID": ["x.png"], "mask": ["masks/x.png"]})
    with pytest.raises(ValueError, match=r"annotated\.csv lacks columns \['effusion'\]"):
        gd.read_gold_index(folder)
    folder = _folder(tmp_path, {"ImageID": ["x.png"], "effusion": [2], "mask": ["masks/x.png"]})
    with pytest.raises(ValueError, match=r"annotated\.csv: effusion must be 0 or 1, got .2. for ImageID x\.png"):
        gd.read_gold_index(folder)
    folder = _folder(tmp_path, {"ImageID": ["x.png", "x.png"], "effusion": [0, 0], "mask": ["a.png", "b.png"]})
    with pytest.raises(ValueError, match="'x.png' appears more than once"):
        gd.read_gold_index(folder)
    folder = _folder(tmp_path, {"ImageID": ["x.png"], "effusion": [0], "mask": ["masks/none.png"]})
    with pytest.raises(FileNotFoundError, match=r"annotated\.csv: mask file .*none\.png of ImageID x\.png"):
        gd.read_gold_index(folder)


def test_empty_mask_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "masks" / "blank.png"
    gd.write_gold_mask(path, np.zeros((6, 9), np.uint8))
    with pytest.raises(ValueError, match=r"gold mask .*blank\.png is empty \(all background\)"):
        gd.read_gold_mask(path, shape=(6, 9))
    assert gd.read_gold_mask(path, allow_empty=True).max() == 0
    one_lung = np.zeros((6, 9), np.uint8)
    one_lung[1:5, 1:3] = 1
    gd.write_gold_mask(path, one_lung)
    np.testing.assert_array_equal(gd.read_gold_mask(path), one_lung)


def test_exchanged_lung_labels_are_refused_naming_the_file(tmp_path):
    """Label 1 (the patient's right lung) is on the image's left (radiological view); a mask made
    in the anatomical convention has 1 and 2 exchanged and is refused, naming the file."""
    lab = np.zeros((10, 20), np.uint8)
    lab[2:8, 2:8], lab[2:8, 12:18] = 1, 2
    path = tmp_path / "m.png"
    gd.write_gold_mask(path, lab)
    np.testing.assert_array_equal(gd.read_gold_mask(path), lab)
    gd.write_gold_mask(path, np.select([lab == 1, lab == 2], [2, 1], 0))
    with pytest.raises(ValueError, match=r"gold mask .*m\.png: label 1 lies right of label 2 .*exchanged"):
        gd.read_gold_mask(path)
    assert gd.read_gold_mask(path, sides=False).max() == 2  # read anyway for inspection
    # one lung only: it must lie on its own half
    gd.write_gold_mask(path, np.where(lab == 2, 2, 0))
    assert gd.read_gold_mask(path).max() == 2
    gd.write_gold_mask(path, np.where(lab == 1, 2, 0))
    with pytest.raises(ValueError, match=r"m\.png: its only lung, label 2, lies on the image's left half"):
        gd.read_gold_mask(path)
    # agreement with another label map of the same image: same sides, or exchanged
    assert gd.side_agreement(lab, lab) == (1.0, 0.0)
    assert gd.side_agreement(lab, np.select([lab == 1, lab == 2], [2, 1], 0)) == (0.0, 1.0)
