"""Choosing the compute device: ``auto`` takes CUDA when torch sees a GPU, and says why either way."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import torch

from .errors import ConfigError

__all__ = ["DeviceChoice", "resolve_device", "VALID_DEVICES"]

#: accepted spellings (``cuda:N`` picks GPU N)
VALID_DEVICES = ("auto", "cpu", "cuda", "cuda:N")


@dataclass(frozen=True)
class DeviceChoice:
    """The device a run computes on.

    Attributes:
        torch_device: where tensors go.
        kind: ``"cpu"`` or ``"cuda"``.
        reason: one line saying what was picked and why (for logs and reports).
        has_cupy: the CuPy kernels of :mod:`seals_gpu.kernels` can run on this device (import and driver
            checked; the kernels compile on first use).
        faiss_gpu: FAISS has GPU support and sees a GPU.
    """

    torch_device: torch.device
    kind: Literal["cpu", "cuda"]
    reason: str
    has_cupy: bool
    faiss_gpu: bool


def _faiss_gpu() -> bool:
    try:
        import faiss
    except Exception:
        return False
    try:
        return hasattr(faiss, "StandardGpuResources") and int(faiss.get_num_gpus()) > 0
    except Exception:
        return False


def _cuda_choice(index: int, how: str) -> DeviceChoice:
    from . import kernels

    props = torch.cuda.get_device_properties(index)
    gib = props.total_memory / 2**30
    ok, why = kernels.available(index)
    reason = (
        f"cuda: {props.name} (cuda:{index}, sm_{props.major}{props.minor}, {gib:.1f} GiB){how}; "
        f"kernels: {'CuPy ok' if ok else why}"
    )
    return DeviceChoice(torch.device("cuda", index), "cuda", reason, ok, _faiss_gpu())


def resolve_device(name: str = "auto") -> DeviceChoice:
    """Resolve a device name.

    Args:
        name: ``"auto"`` (CUDA when ``torch.cuda.is_available()``, else CPU), ``"cpu"``, ``"cuda"`` (the
            current GPU) or ``"cuda:N"``.

    Returns:
        A :class:`DeviceChoice` whose ``reason`` says why this device was picked.

    Raises:
        ConfigError: an unknown name, or CUDA requested where there is none (with the fix).
    """
    key = str(name).strip().lower()
    if key == "auto":
        if torch.cuda.is_available():
            return _cuda_choice(torch.cuda.current_device(), " picked by auto")
        return DeviceChoice(
            torch.device("cpu"), "cpu", "cpu: torch.cuda.is_available() is False", False, False
        )
    if key == "cpu":
        return DeviceChoice(torch.device("cpu"), "cpu", "cpu: requested", False, False)
    m = re.fullmatch(r"cuda(?::(\d+))?", key)
    if m is None:
        raise ConfigError(f"unknown device {name!r}; valid names: {', '.join(VALID_DEVICES)}")
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise ConfigError(
            f"device {name!r} requested but torch.cuda.is_available() is False (torch {torch.__version__}, "
            f"{build}); check nvidia-smi and install a CUDA build of torch, or pass --device cpu / auto"
        )
    n = torch.cuda.device_count()
    index = int(m.group(1)) if m.group(1) is not None else torch.cuda.current_device()
    if index >= n:
        raise ConfigError(f"device {name!r} requested but only {n} GPU(s) are visible (cuda:0..cuda:{n - 1})")
    return _cuda_choice(index, " requested")
