"""Lung shape bank (cfcl.data.anatomy): splitting real masks into lungs, SDFs, the cached bank."""
from __future__ import annotations

import numpy as np
import pytest

from cfcl.data import anatomy


def two_lungs(h=100, w=120, left=(20, 80, 15, 50), right=(20, 85, 65, 105)):
    m = np.zeros((h, w), bool)
    for r0, r1, c0, c1 in (left, right):
        m[r0:r1, c0:c1] = True
    return m


def test_split_lungs_orders_by_image_side():
    m = two_lungs()
    right, left = anatomy.split_lungs(m)
    # The patient's right lung is the component on the image's left.
    np.testing.assert_array_equal(right, two_lungs(right=(0, 0, 0, 0)))
    np.testing.assert_array_equal(left, two_lungs(left=(0, 0, 0, 0)))
    assert right.sum() == 60 * 35 and left.sum() == 65 * 40


def test_split_lungs_fills_holes_and_ignores_specks():
    m = two_lungs()
    m[40:45, 30:35] = False  # a hole
    m[2:4, 2:4] = True  # a speck
    right, left = anatomy.split_lungs(m)
    assert right.sum() == 60 * 35  # hole filled, speck dropped


@pytest.mark.parametrize("case", ["empty", "one", "unequal", "border", "stacked", "inverted"])
def test_split_lungs_rejects_unusable(case):
    m = two_lungs()
    if case == "empty":
        m[:] = False
    elif case == "one":
        m[:] = False
        m[20:80, 20:100] = True
    elif case == "unequal":
        m = two_lungs(left=(20, 80, 15, 50), right=(20, 35, 65, 75))
    elif case == "border":
        m = two_lungs(left=(0, 80, 15, 50))
    elif case == "stacked":  # not side by side: no shared rows
        m = two_lungs(left=(5, 40, 15, 50), right=(50, 95, 65, 105))
    elif case == "inverted":
        m = ~two_lungs(left=(30, 40, 30, 40), right=(30, 40, 70, 80))
    assert anatomy.split_lungs(m) is None


def test_solidity_exact_values():
    assert anatomy.solidity(np.ones((5, 7), bool)) == pytest.approx(1.0)
    ell = np.ones((10, 10), bool)
    ell[:5, 5:] = False  # an L: 75 px, hull of pixel corners = 100 - 12.5
    assert anatomy.solidity(ell) == pytest.approx(75 / 87.5)
    assert anatomy.solidity(np.zeros((4, 4), bool)) == 0.0


def test_shape_sdf_disks():
    yy, xx = np.mgrid[:200, :300]
    right = (yy - 100) ** 2 + (xx - 80) ** 2 <= 50 ** 2
    left = (yy - 100) ** 2 + (xx - 220) ** 2 <= 50 ** 2
    sdf, ext, aspect = anatomy.shape_sdf(right, left, resolution=128, margin=0.1)
    assert sdf.shape == (2, 128, 128) and sdf.dtype == np.float32
    # Union box: rows 50..150 (101 px), cols 30..270 (241 px).
    assert aspect == pytest.approx(101 / 241)
    np.testing.assert_allclose(ext[0], [0, 101 / 241, 0, 1], atol=1e-6)
    np.testing.assert_allclose(ext[1], [140 / 241, 1, 0, 1], atol=1e-6)
    # Centre of the right disk (a = 50/241, b = 0.5): distance to the edge is about 50/241 box widths.
    t = (np.arange(128) + 0.5) / 128 * 1.2 - 0.1
    i, j = np.argmin(np.abs(t - 0.5)), np.argmin(np.abs(t - 50.5 / 241))
    assert sdf[0, i, j] == pytest.approx(-50 / 241, abs=0.02)
    assert sdf[1, i, j] > 0.3  # far outside the other lung
    # Inside/outside agree with the disks resampled on the grid.
    assert (sdf[0] < 0).sum() > 0 and not ((sdf[0] < 0) & (sdf[1] < 0)).any()


def test_build_bank_from_real_archive_subset():
    bank = anatomy.build_shape_bank(limit=25)
    assert 5 <= len(bank) <= 25
    assert bank.sdf.shape[1:] == (2, 128, 128)
    assert (bank.sdf[:, :, :, :].min(axis=(2, 3)) < 0).all()  # every lung has an inside
    # Right lung (image left) lies left of the left lung; extents span the union box.
    assert (bank.extent[:, 0, 0] < bank.extent[:, 1, 0]).all()
    np.testing.assert_allclose(bank.extent[:, 0, 0], 0, atol=1e-6)
    np.testing.assert_allclose(bank.extent[:, 1, 1], 1, atol=1e-6)
    assert ((bank.aspect >= 0.5) & (bank.aspect <= 1.5)).all()


def test_bank_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        anatomy.build_shape_bank(tmp_path / "nope.zip")
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a valid zip"):
        anatomy.build_shape_bank(bad)
    with pytest.raises(ValueError, match="2-D"):
        anatomy.split_lungs(np.zeros((2, 3, 4), bool))


def test_load_shape_bank_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("CFCL_CACHE", str(tmp_path))
    calls = []
    real = anatomy.build_shape_bank

    def small(path=None):
        calls.append(path)
        return real(path, limit=12)

    monkeypatch.setattr(anatomy, "build_shape_bank", small)
    a = anatomy.load_shape_bank()
    b = anatomy.load_shape_bank()
    assert calls == [None] and len(a) == len(b) > 0
    assert (tmp_path / "phantom" / f"shape_bank_v{anatomy.BANK_VERSION}.npz").exists()
    assert not list((tmp_path / "phantom").glob(".*tmp"))  # no temporary left behind
