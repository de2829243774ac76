"""Profiles: every knob of a run, as plain frozen dataclasses, validated when built.

Three profiles share one structure and differ only in scale:

- ``smoke``: CI, minutes; exercises every code path on tiny data.
- ``cpu``: the default of ``make reproduce``; about 2.6 hours on 2 CPU cores (``figures/cpu/timings.csv``).
- ``paper``: the paper's scale (PadChest-sized data, 224 px, ResNet50), for a GPU.

A notebook or entry point asks for ``get_profile(name, overrides, variant)``. Overrides use dotted
names (``"pretrain.steps=10"``, or ``{"pretrain.steps": 10}``) so that papermill, ``--set`` and
``make ... SET="..."`` pass plain text. Every value is converted to the type of its setting or
refused, and every setting is checked against its allowed range when the profile is built
(:func:`~cfcl.config.overrides.validate`); each error names the key and what is allowed. A *variant* is a
named set of overrides: its figures go to ``figures/<profile>-<variant>/`` while its runs share every upstream
run the overrides do not touch (:mod:`cfcl.runs`).

The package, imports pointing one way (profiles -> overrides -> schema -> :mod:`cfcl.constants`):

- :mod:`cfcl.config.schema`: the settings schema (:func:`~cfcl.config.schema.setting`, one frozen dataclass per
  section, :class:`Profile`, what a run's key reads of a section: :func:`key_section`).
- :mod:`cfcl.config.overrides`: parsing, type conversion and validation of overrides (:class:`SettingError`).
- :mod:`cfcl.config.profiles`: :data:`PROFILES` and :func:`get_profile`.

This module re-exports the names the rest of the project imports from ``cfcl.config``, the domain
constants of :mod:`cfcl.constants` among them (``from cfcl.config import PARENTS`` keeps working).
"""
from __future__ import annotations

from cfcl.config.overrides import SettingError, parse_overrides
from cfcl.config.profiles import PROFILES, get_profile
from cfcl.config.schema import DataConfig, FinetuneConfig, HVAEConfig, Profile, key_section, omitted_at_default
from cfcl.constants import (
    CF_SOURCES, CLASSES, DATA_SOURCES, EFFUSION, INTERVENED_PARENTS, INTERVENTIONS, PARENTS, SCANNER, SEX,
    UNET_DECODER_CHANNELS)

__all__ = [
    "CF_SOURCES", "CLASSES", "DATA_SOURCES", "EFFUSION", "INTERVENED_PARENTS", "INTERVENTIONS", "PARENTS",
    "PROFILES", "SCANNER", "SEX", "UNET_DECODER_CHANNELS", "DataConfig", "FinetuneConfig", "HVAEConfig", "Profile",
    "SettingError", "get_profile", "key_section", "omitted_at_default", "parse_overrides",
]
