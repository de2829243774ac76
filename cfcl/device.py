"""Where the stages compute: the GPU when one is visible, else the CPU.

The device is not part of a run's key (as the thread count is not): a profile gives the same tables
on CPU bit for bit, and on a GPU the same up to floating-point round-off and cuDNN's algorithms.
Every random draw stays on a CPU generator in every stage and is moved to the device after drawing,
so a run's random stream does not depend on the device.
"""
from __future__ import annotations

import torch


def default_device() -> str:
    """``"cuda"`` when a GPU is visible, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"
