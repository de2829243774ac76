"""Data sources behind one interface.

``load_split(profile, split)`` returns a :class:`ChestSplit` whatever the source:

- ``phantom`` (default): the structural causal model of :mod:`cfcl.data.phantom`; it also
  provides exact counterfactuals.
- ``padchest``: real PadChest images (:mod:`cfcl.data.padchest`), CheXmask silver masks
  (:mod:`cfcl.data.chexmask`) and a folder of manual gold masks (:mod:`cfcl.data.gold`).

The data is the first stage of the run layer (:mod:`cfcl.runs`): each split is one run, under
``cache/<source>/<split>-<key>/``, whose key (:func:`data_key`) covers everything the split reads
(for the phantom the settings of that split, its size included, and the renderer version; for
PadChest the settings and the input files, one key for all four splits as they are carved out of
one pool together). ``make_data(profile)`` (``python -m cfcl.data``, notebook 00) makes the splits.

Splits: ``pretrain`` and ``val`` (images, parents, silver masks), ``annotated`` (the 70
images with gold masks used for 5-fold fine-tuning: 20 healthy, 50 effusion) and ``test``
(held out, balanced over scanner x effusion, with gold masks where the source has them).

Conventions (shared by every module):

- images: ``uint8`` array ``(N, H, W)``, 0..255 (a memmap for large splits);
- label maps: ``uint8`` ``(N, H, W)`` with 0 background, 1 right lung (image left),
  2 left lung (image right);
- parents: a DataFrame with integer columns ``sex`` (0 F, 1 M), ``scanner``
  (0 ImagingDynamics, 1 Philips), ``effusion`` (0/1), see :mod:`cfcl.config`;
- counterfactuals: ``uint8`` ``(N, 3, H, W)`` in the order of ``config.INTERVENTIONS``
  (do(scanner), do(effusion), do(scanner, effusion)), each intervention flipping the binary parent.
"""
from __future__ import annotations

from cfcl.config import Profile
from cfcl.data.split import SPLITS, ChestSplit, DataWarning  # noqa: F401  (re-exported)
from cfcl.data.store import ensure_split, read_split, source_key, split_run
from cfcl.runs import Run


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise KeyError(f"unknown split {split!r}; choose one of {SPLITS}")


def data_key(profile: Profile, split: str) -> str:
    """The key of one split: ``<source>-<hash>`` of everything the split reads (phantom: the settings
    of that split and the renderer version; PadChest: settings, options and input files)."""
    _check_split(split)

    return source_key(profile.data, split)


def data_run(profile: Profile, split: str) -> Run:
    """The data run of one split (stage = the source, label = the split, key = :func:`data_key`)."""
    return split_run(profile.data, split,
                     remake=f"python -m cfcl.data {profile.cli()}  (or: make data {profile.make_args()})")


def load_split(profile: Profile, split: str) -> ChestSplit:
    """One split of the profile's data, verified against its manifest. The data is made by
    :func:`make_data` (notebook 00, ``python -m cfcl.data``): a split not made yet is an error
    naming that command, never made behind the caller's back."""
    _check_split(split)
    if profile.data.source == "padchest":
        from cfcl.data.padchest import check_settings

        check_settings(profile.data)  # a missing path is named before anything else
    return read_split(data_run(profile, split))


def make_data(profile: Profile, splits: tuple[str, ...] = SPLITS) -> list[ChestSplit]:
    """Make (or verify) the splits of the profile's data: the data stage."""
    if profile.data.source == "padchest":
        from cfcl.data.padchest import check_settings

        check_settings(profile.data)
    return [ensure_split(profile.data, s, data_run(profile, s).remake) for s in splits]
