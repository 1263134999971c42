"""CUDA kernels for SEALS scoring (importable as ``seals_gpu.kernels``), compiled at run time with CuPy.

Two sources live next to this file:

- ``score_select.cu``: fused segmented score-and-select. Phase 1 (``score_rows_*``) gathers each candidate
  row of a CSR batch from the device-resident embedding matrix, computes ``w_u . x + b_u`` and the strategy
  score; phase 2 (``topb_select``) keeps the top-b per unit by (score desc, id asc).
- ``pq_score.cu``: logits of IVF-PQ encoded candidates through per-unit lookup tables.

Each source is compiled once per device with :class:`cupy.RawModule` (NVRTC; CuPy also caches the binary
on disk) and kept in a dict keyed by the device index. This module imports cleanly without CuPy or CUDA:
:func:`available` says whether the kernels can run, and why not. Launchers take torch CUDA tensors, hand
them to CuPy zero-copy (``cupy.asarray`` via ``__cuda_array_interface__``) and launch on torch's current
stream, so they are ordered with the surrounding torch work and the outputs are ordinary torch tensors.

Every launcher also accepts ``launch=``: any callable with the :class:`Launcher` interface. The default is
the CuPy launcher for the tensors' device; tests pass a CPU emulator to exercise the same host logic.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ..errors import ConfigError

__all__ = [
    "available",
    "source",
    "score_candidates_cuda",
    "topb_segments_cuda",
    "score_select_cuda",
    "pq_logits_cuda",
    "plan_topb_level",
    "Launcher",
    "MAX_B",
    "KERNELS",
]

KERNEL_DIR = Path(__file__).resolve().parent
#: source name -> file, and the entry points each file defines
SOURCES: dict[str, str] = {"score_select": "score_select.cu", "pq_score": "pq_score.cu"}
KERNELS: dict[str, tuple[str, ...]] = {
    "score_select": (
        "score_rows_f32_v4",
        "score_rows_f32_v1",
        "score_rows_f16_v8",
        "score_rows_f16_v1",
        "topb_select",
    ),
    "pq_score": ("pq_logits_u32", "pq_logits_u8"),
}
#: launch constants; they must match the #defines in the .cu files
MAX_B = 1024
SCORE_THREADS = 256
SCORE_ROWS = 4
SEL_THREADS = 512
PQ_THREADS = 256
DEFAULT_SMEM = 48 * 1024
#: blocks per SM the grid-stride kernels are launched with at most
BLOCKS_PER_SM = 32


def source(name: str) -> str:
    """The CUDA source text of kernel file ``name`` (``"score_select"`` or ``"pq_score"``).

    Args:
        name: a key of :data:`SOURCES`.

    Returns:
        The file's text.
    """
    if name not in SOURCES:
        raise ValueError(f"unknown kernel source {name!r}; expected one of {sorted(SOURCES)}")
    return (KERNEL_DIR / SOURCES[name]).read_text()


def _kernel_file(kernel: str) -> str:
    for src, names in KERNELS.items():
        if kernel in names:
            return src
    raise ValueError(f"unknown kernel {kernel!r}")


class Launcher(Protocol):
    """What the launchers need from a backend: device limits and a way to run one kernel."""

    num_sms: int
    max_smem: int

    def __call__(
        self,
        name: str,
        grid: tuple[int, int, int],
        block: tuple[int, int, int],
        args: Sequence[Any],
        shared_mem: int,
    ) -> None:
        """Run kernel ``name``; ``args`` are torch tensors (passed as device pointers) and numpy scalars."""


# --------------------------------------------------------------------------------------------- CuPy backend
_lock = threading.Lock()
_modules: dict[int, dict[str, Any]] = {}  # device index -> source name -> cupy.RawModule
_launchers: dict[int, _CupyLauncher] = {}
_avail: dict[tuple[int, bool], tuple[bool, str]] = {}


def _device_index(device: int | str | torch.device | None) -> int:
    if device is None:
        return torch.cuda.current_device() if torch.cuda.is_available() else 0
    if isinstance(device, int):
        return device
    dev = torch.device(device)
    if dev.type != "cuda":
        raise ConfigError(f"the CUDA kernels need a cuda device, got {dev}")
    return dev.index if dev.index is not None else torch.cuda.current_device()


def _module(device_index: int, name: str) -> Any:
    """The compiled RawModule of source ``name`` on ``device_index`` (compiled on first use, then cached)."""
    import cupy

    with _lock:
        per_dev = _modules.setdefault(device_index, {})
        mod = per_dev.get(name)
        if mod is None:
            with cupy.cuda.Device(device_index):
                mod = cupy.RawModule(code=source(name), options=("--std=c++14",))
                for fn in KERNELS[name]:  # forces compilation now, so errors surface here
                    mod.get_function(fn)
            per_dev[name] = mod
    return mod


class _CupyLauncher:
    """Launches the RawModule kernels of one device on torch's current stream."""

    def __init__(self, device_index: int) -> None:
        import cupy

        self.device_index = device_index
        with cupy.cuda.Device(device_index) as dev:
            attrs = dev.attributes
        self.num_sms = int(attrs["MultiProcessorCount"])
        self.max_smem = int(attrs.get("MaxSharedMemoryPerBlockOptin", DEFAULT_SMEM))
        self._smem_set: dict[str, int] = {}

    def __call__(
        self,
        name: str,
        grid: tuple[int, int, int],
        block: tuple[int, int, int],
        args: Sequence[Any],
        shared_mem: int,
    ) -> None:
        import cupy

        fn = _module(self.device_index, _kernel_file(name)).get_function(name)
        if shared_mem > DEFAULT_SMEM and self._smem_set.get(name, DEFAULT_SMEM) < shared_mem:
            fn.max_dynamic_shared_size_bytes = shared_mem
            self._smem_set[name] = shared_mem
        cargs = tuple(cupy.asarray(a.detach()) if isinstance(a, torch.Tensor) else a for a in args)
        stream = torch.cuda.current_stream(self.device_index)
        with (
            cupy.cuda.Device(self.device_index),
            cupy.cuda.ExternalStream(stream.cuda_stream, self.device_index),
        ):
            fn(grid, block, cargs, shared_mem=shared_mem)


def _default_launcher(device: torch.device) -> Launcher:
    if device.type != "cuda":
        raise ConfigError(
            f"the CUDA kernels need tensors on a cuda device, got {device}; use backend='torch'"
        )
    idx = _device_index(device)
    ok, reason = available(idx, compile=True)
    if not ok:
        raise ConfigError(f"the CUDA kernels cannot run on cuda:{idx}: {reason}")
    with _lock:
        lau = _launchers.get(idx)
    if lau is None:
        lau = _CupyLauncher(idx)
        with _lock:
            _launchers[idx] = lau
    return lau


def available(device: int | str | torch.device | None = None, *, compile: bool = False) -> tuple[bool, str]:
    """Whether the CUDA kernels can run on ``device``, and why (not).

    Args:
        device: a cuda device (index, ``"cuda:1"``, ``torch.device``); None = torch's current device.
        compile: also compile both sources on that device (cached; the first call takes a few seconds).

    Returns:
        ``(ok, reason)``; ``reason`` names the missing piece and how to fix it, or describes the device.
    """
    try:
        import cupy
    except Exception as e:  # ImportError, or a broken install raising anything else
        return False, (
            f"CuPy is not importable ({type(e).__name__}: {e}); install the wheel matching your CUDA driver: "
            "pip install cupy-cuda12x (CUDA 12) or cupy-cuda13x (CUDA 13)"
        )
    if not torch.cuda.is_available():
        return False, "torch.cuda.is_available() is False (no GPU, or a CPU build of torch)"
    try:
        idx = _device_index(device)
    except ConfigError as e:
        return False, str(e)
    key = (idx, compile)
    if key in _avail:
        return _avail[key]
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        res = (False, f"CuPy cannot use the CUDA driver ({type(e).__name__}: {e})")
    else:
        if idx >= n:
            res = (False, f"cuda:{idx} does not exist; CuPy sees {n} device(s)")
        else:
            res = (True, "")
            if compile:
                try:
                    for name in SOURCES:
                        _module(idx, name)
                except Exception as e:
                    res = (False, f"kernel compilation failed on cuda:{idx} ({type(e).__name__}: {e})")
            if res[0]:
                cc = torch.cuda.get_device_capability(idx)
                res = (
                    True,
                    f"CuPy {cupy.__version__}, {torch.cuda.get_device_name(idx)} (sm_{cc[0]}{cc[1]})",
                )
    _avail[key] = res
    return res


# ------------------------------------------------------------------------------------------------ helpers
def _offsets_host(offsets: torch.Tensor, offsets_host: np.ndarray | None) -> np.ndarray:
    if offsets_host is not None:
        return np.asarray(offsets_host, dtype=np.int64)
    return offsets.detach().to("cpu", torch.int64).numpy()


def _i32(x: int) -> np.int32:
    if not -(2**31) <= x < 2**31:
        raise ValueError(f"{x} does not fit the kernels' int32 argument")
    return np.int32(x)


def _grid_x(max_len: int, per_block: int, launch: Launcher) -> int:
    return int(max(1, min(math.ceil(max_len / per_block), BLOCKS_PER_SM * launch.num_sms)))


def _on(t: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return t.detach().to(device=device, dtype=dtype).contiguous()


# ---------------------------------------------------------------------------------------------- launchers
def score_candidates_cuda(
    emb: torch.Tensor,
    rows: torch.Tensor,
    offsets: torch.Tensor,
    W: torch.Tensor,
    bias: torch.Tensor,
    kind: torch.Tensor,
    ref: torch.Tensor | None = None,
    beta: float = 1.0,
    *,
    offsets_host: np.ndarray | None = None,
    launch: Launcher | None = None,
) -> torch.Tensor:
    """Phase 1: the strategy score of every candidate of a CSR batch (``score_rows_*`` kernels).

    Args:
        emb: (N, d) float32 or float16, contiguous, on the GPU; never copied.
        rows: (M,) int64 row positions into ``emb`` (validated by the caller).
        offsets: (U+1,) int64 CSR bounds of the units' segments.
        W: (U, d) weights; bias: (U,); kind: (U,) int8 strategy kinds (0 maxent, 1 mlp, 2 id).
        ref: (U, d) reference vectors, needed when any kind is 2.
        beta: exponent of the similarity term of kind 2.
        offsets_host: ``offsets`` as a numpy array, if the caller already has it (saves a sync).
        launch: kernel launcher (default: CuPy on ``emb``'s device).

    Returns:
        (M,) float32 scores on ``emb``'s device.
    """
    dev = emb.device
    launch = launch or _default_launcher(dev)
    if emb.dim() != 2:
        raise ValueError(f"emb must be 2-D (N, d), got shape {tuple(emb.shape)}")
    if not emb.is_contiguous():
        raise ValueError("emb must be contiguous (the kernel gathers rows in place; it is never copied)")
    if emb.dtype == torch.float32:
        vw, tname = 4, "f32"
    elif emb.dtype == torch.float16:
        vw, tname = 8, "f16"
    else:
        raise ValueError(f"emb dtype {emb.dtype} is not supported by the kernel; use float32 or float16")
    d = int(emb.shape[1])
    U = int(W.shape[0])
    M = int(rows.numel())
    scores = torch.empty(M, dtype=torch.float32, device=dev)
    if M == 0 or U == 0:
        return scores
    off_h = _offsets_host(offsets, offsets_host)
    vec = d % vw == 0 and emb.data_ptr() % 16 == 0
    name = f"score_rows_{tname}_v{vw if vec else 1}"
    W_ = _on(W, dev, torch.float32)
    kind_ = _on(kind, dev, torch.int8)
    if ref is None and bool((kind_ == 2).any()):
        raise ValueError("units of kind 2 (id) need ref, a (U, d) tensor of reference vectors")
    ref_ = W_ if ref is None else _on(ref, dev, torch.float32)
    smem = (1 if ref is None else 2) * d * 4
    if smem > launch.max_smem:
        raise ConfigError(
            f"d={d} needs {smem} bytes of shared memory to stage the weights, more than the device's "
            f"{launch.max_smem}; use backend='torch'"
        )
    max_len = int(np.diff(off_h).max(initial=0))
    gx = _grid_x(max_len, (SCORE_THREADS // 32) * SCORE_ROWS, launch)
    gy = min(U, 65535)
    args = (
        emb,
        _i32(d),
        _on(rows, dev, torch.int64),
        _on(offsets, dev, torch.int64),
        W_,
        _on(bias, dev, torch.float32),
        kind_,
        ref_,
        np.float32(beta),
        _i32(U),
        scores,
    )
    launch(name, (gx, gy, 1), (SCORE_THREADS, 1, 1), args, smem)
    return scores


def plan_topb_level(
    offsets: np.ndarray, b: int, chunk: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """One reduction level of the multi-block top-b: split every segment longer than ``chunk`` into chunks.

    Args:
        offsets: (U+1,) int64 host CSR offsets of the current (scores, ids) arrays.
        b: how many items each chunk keeps.
        chunk: the longest range one block selects from.

    Returns:
        None when every segment already fits one block; else ``(task_lo, task_hi, task_out, new_offsets)``:
        one task per chunk (ordered by unit, then position) and the CSR offsets of the survivors.
    """
    off = np.asarray(offsets, dtype=np.int64)
    lens = np.diff(off)
    if lens.size == 0 or int(lens.max()) <= chunk:
        return None
    U = lens.size
    nch = -(-lens // chunk)  # 0 for an empty segment
    unit = np.repeat(np.arange(U), nch)
    j = np.arange(int(nch.sum())) - np.repeat(np.cumsum(nch) - nch, nch)
    lo = off[unit] + j * chunk
    hi = np.minimum(lo + chunk, off[unit + 1])
    out_len = np.minimum(hi - lo, b)
    out = np.cumsum(out_len) - out_len
    new_lens = np.bincount(unit, weights=out_len, minlength=U).astype(np.int64)
    new_off = np.concatenate([[0], np.cumsum(new_lens)]).astype(np.int64)
    return lo.astype(np.int64), hi.astype(np.int64), out.astype(np.int64), new_off


def default_chunk(b: int) -> int:
    """Longest range one ``topb_select`` block handles (each level shrinks long segments by chunk / b)."""
    return max(8192, 16 * b)


def topb_segments_cuda(
    scores: torch.Tensor,
    ids: torch.Tensor,
    offsets: torch.Tensor,
    b: int,
    *,
    offsets_host: np.ndarray | None = None,
    chunk: int | None = None,
    launch: Launcher | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Phase 2: per-segment top-b by (score desc, id asc) with the ``topb_select`` kernel.

    Args:
        scores: (M,) float32 candidate scores; ids: (M,) int64 global ids.
        offsets: (U+1,) int64 CSR bounds.
        b: items kept per unit, 1..MAX_B.
        offsets_host: ``offsets`` as numpy, if known.
        chunk: longest range per block (default :func:`default_chunk`); longer segments are reduced in levels.
        launch: kernel launcher (default: CuPy on ``scores``' device).

    Returns:
        ``(ids (U, b) int64 padded -1, scores (U, b) float32 padded -inf, counts (U,) int64)``.
    """
    if not 1 <= b <= MAX_B:
        raise ConfigError(f"b={b}; the CUDA top-b kernel supports 1 <= b <= {MAX_B} (use backend='torch')")
    dev = scores.device
    launch = launch or _default_launcher(dev)
    off = _offsets_host(offsets, offsets_host)
    U = off.size - 1
    chunk = default_chunk(b) if chunk is None else int(chunk)
    if chunk <= b:
        raise ValueError(f"chunk={chunk} must be larger than b={b}")
    out_ids = torch.empty((U, b), dtype=torch.int64, device=dev)
    out_sc = torch.empty((U, b), dtype=torch.float32, device=dev)
    counts = torch.empty(U, dtype=torch.int64, device=dev)
    if U == 0:
        return out_ids, out_sc, counts
    if int(off[-1]) == 0:
        out_ids.fill_(-1)
        out_sc.fill_(float("-inf"))
        counts.zero_()
        return out_ids, out_sc, counts
    cur_s = _on(scores, dev, torch.float32)
    cur_i = _on(ids, dev, torch.int64)
    while True:
        plan = plan_topb_level(off, b, chunk)
        if plan is None:
            break
        lo, hi, out, new_off = plan
        n_tasks = lo.size
        nxt_s = torch.empty(int(new_off[-1]), dtype=torch.float32, device=dev)
        nxt_i = torch.empty(int(new_off[-1]), dtype=torch.int64, device=dev)
        args = (
            cur_s,
            cur_i,
            torch.from_numpy(lo).to(dev),
            torch.from_numpy(hi).to(dev),
            torch.from_numpy(out).to(dev),
            _i32(n_tasks),
            _i32(b),
            np.int32(0),
            nxt_s,
            nxt_i,
            counts,  # unused by intermediate levels
        )
        launch("topb_select", (n_tasks, 1, 1), (SEL_THREADS, 1, 1), args, 0)
        cur_s, cur_i, off = nxt_s, nxt_i, new_off
    args = (
        cur_s,
        cur_i,
        torch.from_numpy(np.ascontiguousarray(off[:-1])).to(dev),
        torch.from_numpy(np.ascontiguousarray(off[1:])).to(dev),
        torch.arange(U, dtype=torch.int64, device=dev) * b,
        _i32(U),
        _i32(b),
        np.int32(1),
        out_sc,
        out_ids,
        counts,
    )
    launch("topb_select", (U, 1, 1), (SEL_THREADS, 1, 1), args, 0)
    return out_ids, out_sc, counts


def score_select_cuda(
    emb: torch.Tensor,
    rows: torch.Tensor,
    ids: torch.Tensor,
    offsets: torch.Tensor,
    W: torch.Tensor,
    bias: torch.Tensor,
    kind: torch.Tensor,
    ref: torch.Tensor | None,
    beta: float,
    b: int,
    *,
    offsets_host: np.ndarray | None = None,
    launch: Launcher | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused score-and-select: :func:`score_candidates_cuda` then :func:`topb_segments_cuda`.

    The inputs are validated by :func:`seals_gpu.scoring.score_select`; this is the thin launcher.

    Returns:
        ``(ids (U, b), scores (U, b), counts (U,))`` on ``emb``'s device.
    """
    off_h = _offsets_host(offsets, offsets_host)
    scores = score_candidates_cuda(
        emb, rows, offsets, W, bias, kind, ref, beta, offsets_host=off_h, launch=launch
    )
    return topb_segments_cuda(scores, ids, offsets, b, offsets_host=off_h, launch=launch)


def pq_logits_cuda(
    codes: torch.Tensor,
    list_ids: torch.Tensor | None,
    offsets: torch.Tensor,
    lut: torch.Tensor,
    coarse: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    offsets_host: np.ndarray | None = None,
    launch: Launcher | None = None,
) -> torch.Tensor:
    """Logits ``w_u . x^ + b_u`` of PQ-encoded CSR candidates through per-unit lookup tables.

    Args:
        codes: (M, m_sub) uint8 PQ codes (8 bits per sub-quantizer).
        list_ids: (M,) int32/int64 inverted-list number of each candidate (needed when ``coarse`` is 2-D).
        offsets: (U+1,) int64 CSR bounds.
        lut: (U, m_sub, 256) float32, ``lut[u, m, j] = w_u[m-th sub-vector] . pq_centroid[m, j]``.
        coarse: (U, nlist) float32 table ``w_u . c_l``, or (M,) the coarse term already per candidate.
        bias: (U,) float32 or None (zero).
        offsets_host: ``offsets`` as numpy, if known.
        launch: kernel launcher (default: CuPy on ``codes``' device).

    Returns:
        (M,) float32 logits.
    """
    dev = codes.device
    launch = launch or _default_launcher(dev)
    if codes.dim() != 2 or codes.dtype != torch.uint8:
        raise ValueError(f"codes must be (M, m_sub) uint8, got {tuple(codes.shape)} {codes.dtype}")
    M, m_sub = (int(s) for s in codes.shape)
    U = int(lut.shape[0])
    if lut.shape != (U, m_sub, 256):
        raise ValueError(f"lut must have shape (U, {m_sub}, 256), got {tuple(lut.shape)}")
    out = torch.empty(M, dtype=torch.float32, device=dev)
    if M == 0 or U == 0:
        return out
    off_h = _offsets_host(offsets, offsets_host)
    codes = codes.contiguous()
    if coarse.dim() == 2:
        mode, nlist = 0, int(coarse.shape[1])
        if coarse.shape[0] != U:
            raise ValueError(f"coarse table must have shape ({U}, nlist), got {tuple(coarse.shape)}")
        if list_ids is None or list_ids.shape != (M,):
            raise ValueError(f"a (U, nlist) coarse table needs list_ids of shape ({M},)")
        lists = _on(list_ids, dev, torch.int32)
        lo, hi = int(lists.min()), int(lists.max())
        if lo < 0 or hi >= nlist:
            raise ValueError(
                f"list_ids must lie in [0, {nlist}) (the coarse table's width), got {lo if lo < 0 else hi}"
            )
    else:
        mode, nlist = 1, 0
        if coarse.shape != (M,):
            raise ValueError(f"a per-candidate coarse term must have shape ({M},), got {tuple(coarse.shape)}")
        lists = _on(offsets, dev, torch.int64)  # never read in mode 1
    bias_ = torch.zeros(U, dtype=torch.float32, device=dev) if bias is None else _on(bias, dev, torch.float32)
    smem = m_sub * 256 * 4
    if smem > launch.max_smem:
        raise ConfigError(f"m_sub={m_sub} needs a {smem}-byte lookup table per block, over {launch.max_smem}")
    u32 = m_sub % 4 == 0 and codes.data_ptr() % 4 == 0
    max_len = int(np.diff(off_h).max(initial=0))
    gx = _grid_x(max_len, PQ_THREADS, launch)
    args = (
        codes,
        _i32(m_sub),
        lists,
        _on(offsets, dev, torch.int64),
        _on(lut, dev, torch.float32),
        _on(coarse, dev, torch.float32),
        np.int32(mode),
        _i32(nlist),
        bias_,
        _i32(U),
        out,
    )
    launch("pq_logits_u32" if u32 else "pq_logits_u8", (gx, min(U, 65535), 1), (PQ_THREADS, 1, 1), args, smem)
    return out
