"""Which device a process computes on: ``auto`` picks the GPU when one is visible.

One rule for training and evaluation. A process that is one of several on a node (``LOCAL_RANK``) takes GPU
``LOCAL_RANK % visible GPUs``: on a site that binds one GPU per task every process sees a single ``cuda:0``,
on one that shows a node's GPUs to all its tasks each takes its own.
"""

from __future__ import annotations

import os

import torch

from esvit.errors import DeviceError

__all__ = ["DeviceError", "resolve_device", "describe_device"]


def resolve_device(want: str = "auto") -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` -> a ``torch.device``.

    Raises:
        DeviceError: ``cuda`` asked for and no CUDA device is visible, or ``cuda:N`` past the visible ones.
    """
    want = str(want).strip().lower()
    if want == "cpu" or (want == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if want not in ("auto", "cuda") and not want.startswith("cuda:"):
        raise DeviceError(f"device {want!r}: use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise DeviceError(
            f"device {want!r} asked for, but no CUDA device is visible (torch.cuda.is_available() is "
            "False); use auto or cpu"
        )
    count = torch.cuda.device_count()
    if want.startswith("cuda:"):
        if not want[5:].isdigit():
            raise DeviceError(f"device {want!r}: use auto, cpu, cuda or cuda:N")
        index = int(want[5:])
        if index >= count:
            raise DeviceError(f"device {want!r}: only {count} CUDA device(s) visible")
        return torch.device("cuda", index)
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % count)


def describe_device(device: torch.device) -> str:
    """``cuda:0 (NVIDIA H100 80GB HBM3)`` or ``cpu (8 threads)``, for logs and metrics records."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"
