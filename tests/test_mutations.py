"""Mutation test of the real-data route: each case damages one thing in a copy of the fixture written
by `cfcl.data.fixture` (the project's own real-format data set) and asserts that the readers
(`cfcl.data.padchest`, `.chexmask`, `.gold`, `.metadata`, `.anatomy`) either stop with an error naming
the file (and the image or setting where it applies) or drop what they must with a warning that
names the file and counts the rows (docs/real_data.md, "Checks on the tables"). No training runs:
a case plans the splits (tables only) and, where the damage is in an image or a mask, decodes the
one split holding it."""
from __future__ import annotations

import re
import shutil
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

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

pytestmark = pytest.mark.slow  # writes the fixture (~10-30 s) once for the module

# The fixture's one documented drop that warns: a row of another manufacturer (fx.FILTERED). A
# mutation adding unknown values adds its rows to this warning (one warning per file).
BASELINE_WARNING = "1 rows hold values the real file does not (Manufacturer_DICOM 'GEHealthcare': 1)"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    out = tmp_path_factory.mktemp("mutations") / "fixture"
    fx.write_fixture(out, seed=0)
    return out


class Case:
    """Paths and tables of one copy of the fixture, for a mutation to edit."""

    def __init__(self, root: Path):
        self.root = root
        self.items = fx.read_items(root)
        self.metadata = root / fx.METADATA_FILE
        self.chexmask = root / fx.CHEXMASK_FILE
        self.gold = root / "gold"

    def image(self, image_id: str) -> Path:
        row = self.items.set_index("ImageID").loc[image_id]
        return self.root / "images" / str(row["ImageDir"]) / image_id

    def ids(self, role: str, **parents: int) -> list[str]:
        sel = self.items["role"] == role
        for k, v in parents.items():
            sel &= self.items[k] == v
        return self.items.loc[sel, "ImageID"].tolist()

    def first(self, role: str, **parents: int) -> str:
        return self.ids(role, **parents)[0]

    def mask(self, image_id: str) -> Path:
        return self.gold / "masks" / image_id

    # tables, read and written back in their own format
    def read_meta(self) -> pd.DataFrame:
        return pd.read_csv(self.metadata, index_col=0, dtype=str, keep_default_na=False)

    def write_meta(self, df: pd.DataFrame) -> None:
        df.to_csv(self.metadata)

    def read_chex(self) -> pd.DataFrame:
        return pd.read_csv(self.chexmask, dtype=str, keep_default_na=False)

    def write_chex(self, df: pd.DataFrame) -> None:
        df.to_csv(self.chexmask, index=False)


@dataclass
class Mutation:
    name: str
    mutate: Callable[[Case], object]  # returns what the expectation names (a path, an ImageID), or None
    expect: str  # "error" or "warn"
    match: Callable[[Case, object], str] | str  # regex the message must match (the file, the count)
    split: str | None = None  # decode this split after planning (damage in an image or a mask)
    settings: dict = field(default_factory=dict)
    error: type = ValueError


# --------------------------------------------------------------------------- the mutations


def _meta_set(c: Case, ids: list[str], column: str, value: str) -> None:
    df = c.read_meta()
    df.loc[df["ImageID"].isin(ids), column] = value
    c.write_meta(df)


def misspelt_scanner_pool(c: Case):
    """Every Philips row of the pool misspelt: pre-training and validation lose a scanner."""
    ids = c.ids("pool", scanner=1)
    _meta_set(c, ids, "Manufacturer_DICOM", "PhilipsMedicalSystem")
    return len(ids)


def misspelt_scanner_three(c: Case):
    _meta_set(c, c.ids("pool", scanner=1)[:3], "Manufacturer_DICOM", "Philips Medical Systems")


def misspelt_sex(c: Case):
    _meta_set(c, c.ids("pool")[:4], "PatientSex_DICOM", "m")


def lower_case_projection(c: Case):
    df = c.read_meta()
    df["Projection"] = df["Projection"].replace("PA", "pa")
    c.write_meta(df)


def labels_not_a_list(c: Case):
    image_id = c.first("pool", effusion=1)
    _meta_set(c, [image_id], "Labels", "['pleural effusion'")
    return image_id


def duplicated_metadata_rows(c: Case):
    df = c.read_meta()
    c.write_meta(pd.concat([df, df[df["ImageID"].isin(c.ids("pool")[:5])]], ignore_index=True))


def metadata_without_column(c: Case):
    c.write_meta(c.read_meta().drop(columns=["Manufacturer_DICOM"]))


def _cut(path: Path, fraction: float = 0.5) -> None:
    data = path.read_bytes()
    cut = int(len(data) * fraction)
    while data[cut - 1:cut] in (b"\n", b"\r"):
        cut -= 1
    path.write_bytes(data[:cut])


def truncated_metadata(c: Case):
    _cut(c.metadata)


def truncated_chexmask(c: Case):
    _cut(c.chexmask, 0.7)


def chexmask_without_column(c: Case):
    c.write_chex(c.read_chex().drop(columns=["Right Lung"]))


def duplicated_chexmask_rows(c: Case):
    df = c.read_chex()
    c.write_chex(pd.concat([df, df.iloc[:3]], ignore_index=True))


def _chex_set(c: Case, image_id: str, **values: str) -> None:
    df = c.read_chex()
    i = df.index[df["ImageID"] == image_id][0]
    for col, v in values.items():
        df.loc[i, col.replace("_", " ")] = v
    c.write_chex(df)


def _used_pool_image(c: Case, split: str = "pretrain") -> str:
    """An image the clean fixture puts in ``split`` (planned on a pristine copy)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        a = pc.assign_splits(_cfg(c.root))
    return a.loc[a["split"] == split, "ImageID"].iloc[0]


def chexmask_empty_right_lung(c: Case):
    image_id = _used_pool_image(c)
    _chex_set(c, image_id, Right_Lung="")
    return image_id


def chexmask_empty_lungs(c: Case):
    image_id = _used_pool_image(c, "val")
    _chex_set(c, image_id, Right_Lung="", Left_Lung="")
    return image_id


def chexmask_zero_length_runs(c: Case):
    image_id = _used_pool_image(c)
    _chex_set(c, image_id, Left_Lung="1 0 5000 0")
    return image_id


def chexmask_512_frame(c: Case):
    image_id = _used_pool_image(c)
    _chex_set(c, image_id, Height="512", Width="512")
    return image_id


def chexmask_height_not_a_number(c: Case):
    image_id = c.first("pool")
    _chex_set(c, image_id, Height="1024x")
    return image_id


def chexmask_lung_columns_exchanged(c: Case):
    df = c.read_chex().rename(columns={"Right Lung": "Left Lung", "Left Lung": "Right Lung"})
    c.write_chex(df[list(cm.COLUMNS)])


def _rewrite_mask(c: Case, image_id: str, edit: Callable[[np.ndarray], np.ndarray]) -> Path:
    path = c.mask(image_id)
    with Image.open(path) as im:
        labels = np.asarray(im).copy()
    Image.fromarray(edit(labels).astype(np.uint8)).save(path)
    return path


def _swap(labels: np.ndarray) -> np.ndarray:
    return np.select([labels == 1, labels == 2], [2, 1], 0)


def gold_labels_exchanged(c: Case):
    return _rewrite_mask(c, c.first("annotated", effusion=1), _swap)


def gold_test_labels_exchanged(c: Case):
    return _rewrite_mask(c, c.first("test"), _swap)


def gold_one_lung_wrong_label(c: Case):
    """Only the patient's right lung (image left) outlined, labelled 2."""
    return _rewrite_mask(c, c.first("annotated", effusion=0), lambda m: np.where(m == 1, 2, 0))


def gold_wrong_size(c: Case):
    return _rewrite_mask(c, c.first("annotated"), lambda m: m[:-3])


def gold_empty(c: Case):
    return _rewrite_mask(c, c.first("annotated"), np.zeros_like)


def gold_value_3(c: Case):
    return _rewrite_mask(c, c.first("annotated"), lambda m: np.where(m == 2, 3, m))


def gold_mask_missing(c: Case):
    path = c.mask(c.first("annotated"))
    path.unlink()
    return path


def gold_index_duplicated_row(c: Case):
    path = c.gold / gd.ANNOTATED_INDEX
    df = pd.read_csv(path, dtype=str)
    pd.concat([df, df.iloc[:1]]).to_csv(path, index=False)
    return path


def gold_index_without_column(c: Case):
    path = c.gold / gd.TEST_INDEX
    pd.read_csv(path, dtype=str).drop(columns=["effusion"]).to_csv(path, index=False)
    return path


def gold_index_effusion_2(c: Case):
    path = c.gold / gd.ANNOTATED_INDEX
    df = pd.read_csv(path, dtype=str)
    df.loc[3, "effusion"] = "2"
    df.to_csv(path, index=False)
    return path


def annotated_five_rows_fewer(c: Case):
    path = c.gold / gd.ANNOTATED_INDEX
    df = pd.read_csv(path, dtype=str)
    df.drop(index=df.index[df["effusion"] == "1"][:5]).to_csv(path, index=False)
    return path


def png_truncated(c: Case):
    path = c.image(c.first("annotated"))
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return path


def png_other_size(c: Case):
    """An image replaced by one of another size: its gold mask no longer fits."""
    image_id = c.first("annotated")
    path = c.image(image_id)
    arr = np.asarray(Image.open(path))
    Image.fromarray(np.pad(arr, ((0, 7), (0, 0)))).save(path)
    return c.mask(image_id)


def png_thumbnail(c: Case):
    path = c.image(_used_pool_image(c))
    Image.fromarray(np.full((40, 48), 30000, np.uint16)).save(path)
    return path


def png_colour(c: Case):
    path = c.image(c.first("test"))
    Image.fromarray(np.zeros((300, 280, 3), np.uint8)).save(path)
    return path


def png_of_gold_image_missing(c: Case):
    image_id = c.first("annotated")
    c.image(image_id).unlink()
    return image_id


def _esc(x: object) -> str:
    return re.escape(str(x))


MUTATIONS = [
    Mutation("misspelt scanner (the pool's Philips rows)", misspelt_scanner_pool, "error",
             lambda c, n: rf"come up short: .*pretrain has no image with scanner=1.*{_esc(c.metadata)}"
                          r".*data\.allow_short_split=true"),
    Mutation("misspelt scanner, accepted short", misspelt_scanner_pool, "warn",
             r"pretrain has no image with scanner=1 .*accepted: data\.allow_short_split=true",
             settings={"data.allow_short_split": True}),
    Mutation("misspelt scanner (3 rows)", misspelt_scanner_three, "warn",
             lambda c, _: rf"{_esc(c.metadata)}: 4 rows hold values .*'Philips Medical Systems': 3.*dropped"),
    Mutation("misspelt sex", misspelt_sex, "warn",
             lambda c, _: rf"{_esc(c.metadata)}: 5 rows hold values .*PatientSex_DICOM 'm': 4"),
    Mutation("lower-case projection", lower_case_projection, "error",
             r"come up short: pretrain holds 0 of the 64 images asked \(data\.n_pretrain\)"),
    Mutation("Labels not a list literal", labels_not_a_list, "warn",
             lambda c, image_id: rf"{_esc(c.metadata)}: 1 rows .*Labels cell that is not a list literal "
                                 rf"\(first: ImageID '{_esc(image_id)}'"),
    Mutation("duplicated metadata rows", duplicated_metadata_rows, "warn",
             lambda c, _: rf"{_esc(c.metadata)}: 5 rows repeat an ImageID"),
    Mutation("metadata without a column", metadata_without_column, "error",
             lambda c, _: rf"PadChest metadata {_esc(c.metadata)} lacks columns \['Manufacturer_DICOM'\]"),
    Mutation("metadata cut short", truncated_metadata, "error",
             lambda c, _: rf"PadChest metadata {_esc(c.metadata)} ends mid-line.*data\.padchest_metadata"),
    Mutation("CheXmask CSV cut short", truncated_chexmask, "error",
             lambda c, _: rf"CheXmask CSV {_esc(c.chexmask)} ends mid-line.*data\.chexmask_csv"),
    Mutation("CheXmask without a column", chexmask_without_column, "error",
             lambda c, _: rf"CheXmask CSV {_esc(c.chexmask)} lacks columns \['Right Lung'\]"),
    Mutation("duplicated CheXmask rows", duplicated_chexmask_rows, "warn",
             lambda c, _: rf"CheXmask CSV {_esc(c.chexmask)}: 3 rows repeat an ImageID"),
    Mutation("CheXmask row with an empty right lung", chexmask_empty_right_lung, "warn",
             lambda c, image_id: rf"{_esc(c.chexmask)}: 1 rows that pass .*empty lung \(1 right, 0 left, 0 both; "
                                 rf"first: ImageID '{_esc(image_id)}'\): dropped"),
    Mutation("CheXmask row with both lungs empty", chexmask_empty_lungs, "warn",
             lambda c, image_id: rf"1 rows .*\(0 right, 0 left, 1 both; first: ImageID '{_esc(image_id)}'"),
    Mutation("CheXmask lung of zero-length runs", chexmask_zero_length_runs, "error",
             lambda c, image_id: rf"{_esc(c.chexmask)}: ImageID {_esc(image_id)}, column 'Left Lung': .*runs of "
                                 "length 0", split="pretrain"),
    Mutation("CheXmask row in a 512 frame", chexmask_512_frame, "error",
             lambda c, image_id: rf"{_esc(c.chexmask)}: ImageID {_esc(image_id)} has a 512 x 512", split="pretrain"),
    Mutation("CheXmask Height not a number", chexmask_height_not_a_number, "error",
             lambda c, image_id: rf"{_esc(c.chexmask)}: column 'Height' of ImageID {_esc(image_id)} holds '1024x'"),
    Mutation("CheXmask lung columns exchanged", chexmask_lung_columns_exchanged, "error",
             lambda c, _: rf"gold mask .* and the CheXmask row of ImageID .* in {_esc(c.chexmask)} disagree on "
                          "the sides", split="annotated"),
    Mutation("gold lung labels exchanged", gold_labels_exchanged, "error",
             lambda c, path: rf"gold mask {_esc(path)}: label 1 lies right of label 2 .*labels are exchanged",
             split="annotated"),
    Mutation("gold test labels exchanged", gold_test_labels_exchanged, "error",
             lambda c, path: rf"gold mask {_esc(path)}: label 1 lies right of label 2", split="test"),
    Mutation("gold mask: one lung, wrong label", gold_one_lung_wrong_label, "error",
             lambda c, path: rf"gold mask {_esc(path)}: its only lung, label 2, lies on the image's left half",
             split="annotated"),
    Mutation("gold mask of another size", gold_wrong_size, "error",
             lambda c, path: rf"gold mask {_esc(path)} is \d+ x \d+ \(height x width\) but its image is",
             split="annotated"),
    Mutation("gold mask empty", gold_empty, "error", lambda c, path: rf"gold mask {_esc(path)} is empty",
             split="annotated"),
    Mutation("gold mask with value 3", gold_value_3, "error",
             lambda c, path: rf"gold mask {_esc(path)} holds values \[3\]", split="annotated"),
    Mutation("gold mask file missing", gold_mask_missing, "error",
             lambda c, path: rf"mask file {_esc(path)} of ImageID", error=FileNotFoundError),
    Mutation("gold index with a repeated row", gold_index_duplicated_row, "error",
             lambda c, path: rf"gold mask index {_esc(path)}: ImageID .* appears more than once"),
    Mutation("gold index without a column", gold_index_without_column, "error",
             lambda c, path: rf"gold mask index {_esc(path)} lacks columns \['effusion'\]"),
    Mutation("gold index effusion 2", gold_index_effusion_2, "error",
             lambda c, path: rf"gold mask index {_esc(path)}: effusion must be 0 or 1, got '2'"),
    Mutation("annotated index five effusion rows short", annotated_five_rows_fewer, "error",
             lambda c, path: rf"{_esc(path)}: only 45 of 50 effusion images \(data\.n_annotated_effusion\)"),
    Mutation("PNG cut short", png_truncated, "error",
             lambda c, path: rf"cannot read PadChest image {_esc(path)}", split="annotated"),
    Mutation("PNG of another size", png_other_size, "error",
             lambda c, path: rf"gold mask {_esc(path)} is \d+ x \d+ \(height x width\) but its image is",
             split="annotated"),
    Mutation("PNG a thumbnail", png_thumbnail, "error",
             lambda c, path: rf"{_esc(path)}: its content is 40 x 48 px", split="pretrain"),
    Mutation("PNG in colour", png_colour, "error",
             lambda c, path: rf"PadChest image {_esc(path)} has mode RGB", split="test"),
    Mutation("PNG of a gold image missing", png_of_gold_image_missing, "error",
             lambda c, image_id: rf"PadChest image '{_esc(image_id)}' \(a gold-annotated image\) not found",
             error=FileNotFoundError),
]


def _cfg(root: Path, settings: dict | None = None):
    return get_profile("smoke", **fx.fixture_settings(root), **(settings or {})).data


def _data_warnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, DataWarning)
            and BASELINE_WARNING not in str(w.message)]


def test_pristine_fixture_reads_with_its_one_documented_drop(pristine):
    """The baseline of every mutation: the fixture plans full splits, and its only warning is the
    counted drop of its one row of another manufacturer."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        a = pc.assign_splits(_cfg(pristine))
    messages = [str(w.message) for w in record if issubclass(w.category, DataWarning)]
    assert len(messages) == 1 and BASELINE_WARNING in messages[0]
    assert a["split"].value_counts().to_dict() == {"annotated": 70, "pretrain": 64, "val": 16, "test": 16}


@pytest.mark.parametrize("mutation", MUTATIONS, ids=[m.name for m in MUTATIONS])
def test_mutation_is_refused_or_dropped_and_counted(mutation: Mutation, pristine, tmp_path):
    root = tmp_path / "fixture"
    shutil.copytree(pristine, root)
    case = Case(root)
    target = mutation.mutate(case)
    pattern = mutation.match(case, target) if callable(mutation.match) else mutation.match
    cfg = _cfg(root, mutation.settings)

    def read() -> pd.DataFrame:
        a = pc.assign_splits(cfg)
        if mutation.split:
            folder = tmp_path / "split"
            folder.mkdir()
            pc.build_split(cfg, mutation.split, folder, workers=1)
        return a

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        if mutation.expect == "error":
            with pytest.raises(mutation.error) as info:
                read()
            message = str(info.value)
            assert "\n" not in message.strip(), message
            assert re.search(pattern, message), (pattern, message)
            return
        assignment = read()
    found = [m for m in _data_warnings(record) if re.search(pattern, m)]
    assert found, (pattern, _data_warnings(record))
    if isinstance(target, str):  # the damaged row is dropped, not used
        assert target not in set(assignment["ImageID"])


def test_chexmask_empty_lung_row_of_a_gold_image_keeps_no_silver(pristine, tmp_path):
    """A gold image whose passing CheXmask row has an empty lung: counted, and its silver mask is
    empty (quality NaN), as for a gold image without a row."""
    root = tmp_path / "fixture"
    shutil.copytree(pristine, root)
    case = Case(root)
    items = case.items
    image_id = items.loc[(items["role"] == "annotated") & (items["dice_rca"] >= 0.8), "ImageID"].iloc[0]
    _chex_set(case, image_id, Left_Lung="")
    cfg = _cfg(root)
    with pytest.warns(DataWarning, match=rf"1 rows .*\(0 right, 1 left, 0 both; first: ImageID '{_esc(image_id)}'"):
        a = pc.assign_splits(cfg)
    row = a[a["ImageID"] == image_id].iloc[0]
    assert row["split"] == "annotated" and np.isnan(row["quality"])


def test_shape_bank_cut_short_names_the_file(tmp_path, monkeypatch):
    """The phantom's cached shape bank, cut short: the error names the file and the fix."""
    from cfcl.data import anatomy

    monkeypatch.setenv("CFCL_CACHE", str(tmp_path))
    target = tmp_path / "phantom" / f"shape_bank_v{anatomy.BANK_VERSION}.npz"
    target.parent.mkdir(parents=True)
    np.savez(target, sdf=np.zeros((4, 2, 8, 8), np.float16), extent=np.zeros((4, 2, 4), np.float32),
             aspect=np.ones(4, np.float32), margin=np.float32(0.1), names=np.asarray(["a", "b", "c", "d"]))
    data = target.read_bytes()
    target.write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match=rf"the shape bank {_esc(target)} is damaged .*delete it and it is rebuilt"):
        anatomy.load_shape_bank()
    assert target.exists()  # named, not deleted


def test_short_split_setting_stays_out_of_the_data_key(pristine):
    cfg = _cfg(pristine)
    assert "allow_short_split" not in pc.key_settings(cfg)
    assert pc.cache_key(replace(cfg, allow_short_split=True)) != pc.cache_key(cfg)
