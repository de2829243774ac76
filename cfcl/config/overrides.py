"""Overrides: parsing, type conversion, validation.

Overrides use dotted names (``"pretrain.steps=10"``, or ``{"pretrain.steps": 10}``) so that papermill,
``--set`` and ``make ... SET="..."`` pass plain text (:func:`parse_overrides`). Every value is converted to
the type of its setting or refused (:func:`_convert`), and every setting is checked against its allowed range
(declared in :mod:`cfcl.config.schema`) and the settings that constrain each other when the profile is built
(:func:`validate`); each error (:class:`SettingError`) names the key and what is allowed.
:func:`cfcl.config.profiles.get_profile` applies them to a named profile.
"""
from __future__ import annotations

import dataclasses
import json
import math
import shlex
import types
import typing
from dataclasses import fields, replace
from typing import Any, Mapping, Sequence

from cfcl.config.schema import Profile
from cfcl.constants import UNET_DECODER_CHANNELS, UNET_STRIDE


# ------------------------------------------------------------------------------------------------
# Overrides: parsing, type conversion, validation
# ------------------------------------------------------------------------------------------------
class SettingError(ValueError):
    """A setting has a value of the wrong type or outside its allowed range (the message names it)."""


def parse_overrides(items: str | Sequence[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """``"a.b=1 c=x"``, ``["a.b=1", "c=x"]`` or a dict -> ``{"a.b": 1, "c": "x"}``.

    Values are read as JSON where they parse (numbers, lists, null, true/false), else kept as
    text; :func:`get_profile` then converts them to the setting's type or refuses them.
    """
    if items is None:
        return {}
    if isinstance(items, Mapping):
        return dict(items)
    if isinstance(items, str):
        items = shlex.split(items)
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise SettingError(f"an override must read key=value, got {item!r}")
        key, value = item.split("=", 1)
        key = key.strip().replace("__", ".")
        if not key:
            raise SettingError(f"an override must read key=value, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _describe(meta: Mapping[str, Any], tp: Any) -> str:
    if meta.get("choices"):
        return "one of " + ", ".join(repr(c) for c in meta["choices"])
    lo, hi = meta.get("lo"), meta.get("hi")
    kind = {int: "an integer", float: "a number", str: "a text", bool: "true or false"}.get(tp, str(tp))
    if lo is not None and hi is not None:
        return f"{kind} in [{lo:g}, {hi:g}]"
    if lo is not None:
        return f"{kind} >= {lo:g}"
    if hi is not None:
        return f"{kind} <= {hi:g}"
    return kind


def _convert(key: str, value: Any, tp: Any, meta: Mapping[str, Any]) -> Any:
    """``value`` as type ``tp`` (int, float, str, bool, ``T | None``, ``tuple[T, ...]``) or SettingError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return _convert(key, value, args[0], meta)
    if origin is tuple:
        inner = typing.get_args(tp)[0]
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split()]
        if not isinstance(value, (list, tuple)) or not value:
            raise SettingError(f"setting {key}: expected a non-empty list of {_describe(meta, inner)}, got {value!r}")
        return tuple(_convert(f"{key}[{i}]", v, inner, meta) for i, v in enumerate(value))
    want = _describe(meta, tp)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise SettingError(f"setting {key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise SettingError(f"setting {key}: expected {want}, got {value!r}")
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, str):
            try:
                value = int(value)
            except ValueError:
                raise SettingError(f"setting {key}: expected {want}, got {value!r}") from None
        if not isinstance(value, int):
            raise SettingError(f"setting {key}: expected {want}, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool):
            raise SettingError(f"setting {key}: expected {want}, got {value!r}")
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise SettingError(f"setting {key}: expected {want}, got {value!r}") from None
        if not math.isfinite(out):
            raise SettingError(f"setting {key}: expected {want}, got {value!r}")
        return out
    if tp is str:
        if not isinstance(value, str):
            value = json.dumps(value)
        return value
    raise SettingError(f"setting {key}: cannot convert {value!r} to {tp}")  # pragma: no cover


def _check_range(key: str, value: Any, tp: Any, meta: Mapping[str, Any]) -> None:
    if value is None:
        return
    if isinstance(value, tuple):
        for i, v in enumerate(value):
            _check_range(f"{key}[{i}]", v, typing.get_args(tp)[0] if typing.get_origin(tp) is tuple else tp, meta)
        return
    choices, lo, hi = meta.get("choices"), meta.get("lo"), meta.get("hi")
    base = [a for a in typing.get_args(tp) if a is not type(None)][0] if typing.get_args(tp) else tp
    if choices and value not in choices:
        raise SettingError(f"setting {key}: expected {_describe(meta, base)}, got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise SettingError(f"setting {key}: expected {_describe(meta, base)}, got {value!r}")


def _set(obj: Any, path: list[str], value: Any, prefix: str = "") -> Any:
    name = path[0]
    key = f"{prefix}{name}"
    names = {f.name: f for f in fields(obj)}
    if name not in names or name in ("name", "variant", "overrides"):
        known = ", ".join(n for n in names if n not in ("name", "variant", "overrides"))
        raise KeyError(f"unknown setting {key!r}; {type(obj).__name__} has: {known}")
    if len(path) == 1:
        hints = typing.get_type_hints(type(obj))
        if dataclasses.is_dataclass(hints[name]):
            raise SettingError(f"setting {key} is a section; set one of its keys, e.g. {key}.<name>=...")
        return replace(obj, **{name: _convert(key, value, hints[name], names[name].metadata)})
    return replace(obj, **{name: _set(getattr(obj, name), path[1:], value, f"{key}.")})


def validate(profile: Profile) -> Profile:
    """Check every setting against its range and the settings that constrain each other; return
    the profile, or raise :class:`SettingError` naming the key and the allowed values."""
    def walk(obj: Any, prefix: str) -> None:
        hints = typing.get_type_hints(type(obj))
        for f in fields(obj):
            if f.name in ("name", "variant", "overrides"):
                continue
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            else:
                _check_range(f"{prefix}{f.name}", value, hints[f.name], f.metadata)

    walk(profile, "")
    d, h, p, ft, lt = profile.data, profile.hvae, profile.pretrain, profile.finetune, profile.latent
    if d.image_size % UNET_STRIDE:
        raise SettingError(f"setting data.image_size: the U-Net needs a multiple of {UNET_STRIDE}, "
                           f"got {d.image_size}")
    if d.image_size % h.stem_stride:
        raise SettingError(f"setting hvae.stem_stride: must divide data.image_size={d.image_size}, "
                           f"got {h.stem_stride}")
    if len(p.decoder_channels) != len(UNET_DECODER_CHANNELS):
        raise SettingError(f"setting pretrain.decoder_channels: the U-Net's decoder has "
                           f"{len(UNET_DECODER_CHANNELS)} stages, got {list(p.decoder_channels)}")
    if len(h.widths) != len(h.z_dims):
        raise SettingError(f"settings hvae.widths ({len(h.widths)} levels) and hvae.z_dims "
                           f"({len(h.z_dims)} levels) must have the same length")
    if p.pixels_per_view > d.image_size ** 2:
        raise SettingError(f"setting pretrain.pixels_per_view: a view holds {d.image_size}x{d.image_size} = "
                           f"{d.image_size ** 2} pixels at data.image_size={d.image_size}; got {p.pixels_per_view}")
    for name in ("n_annotated_healthy", "n_annotated_effusion"):
        if getattr(d, name) < ft.folds:
            raise SettingError(f"setting data.{name}: each of the finetune.folds={ft.folds} folds needs an "
                               f"image of each class, got {getattr(d, name)}")
    if max(lt.n_images, lt.chromap_images) > d.n_val:
        key = "n_images" if lt.n_images > d.n_val else "chromap_images"
        raise SettingError(f"setting latent.{key}: the validation split holds data.n_val={d.n_val} "
                           f"images, got {getattr(lt, key)}")
    if lt.umap_neighbors >= lt.n_images * lt.pixels_per_image:
        raise SettingError(f"setting latent.umap_neighbors: must be below the number of sampled pixels "
                           f"({lt.n_images * lt.pixels_per_image}), got {lt.umap_neighbors}")
    if d.source == "padchest" and p.labels == "gold":
        raise SettingError("setting pretrain.labels: real data has gold masks for the annotated images only; "
                           "pre-training reads silver masks (pretrain.labels='silver')")
    if d.source == "padchest" and p.cf_source == "oracle":
        raise SettingError("setting pretrain.cf_source: real data (data.source='padchest') has no exact "
                           "counterfactuals; use 'hvae' (or 'identity')")
    return profile

