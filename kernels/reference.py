"""Torch references for the PQ scoring kernel, and helpers to take IVF-PQ tables out of a FAISS index.

With residual encoding (FAISS ``IndexIVFPQ``, ``by_residual``) an item is reconstructed as
``x^ = c_list + [q_0[code_0], ..., q_{m-1}[code_{m-1}]]``, so a linear model scores it as
``w . x^ = w . c_list + sum_m LUT[m][code_m]`` with ``LUT[m][j] = w[m-th sub-vector] . q_m[j]``.

- :func:`pq_tables`: the per-unit coarse table (U, nlist) and LUT (U, m, 256) from W and the codebooks;
- :func:`pq_logits_torch`: what the kernel computes, in torch (the CPU path);
- :func:`pq_logits_reference`: the oracle, reconstructing ``x^`` and computing ``w . x^`` in float64;
- :func:`ivfpq_parts` / :func:`ivfpq_list_codes`: codebooks and stored codes of a FAISS IndexIVFPQ.

The score-and-select reference lives in :mod:`seals_gpu.scoring` (``backend="torch"``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = [
    "pq_tables",
    "pq_logits_torch",
    "pq_logits_reference",
    "pq_decode_reference",
    "ivfpq_parts",
    "ivfpq_list_codes",
]


def _units_of(offsets: torch.Tensor, M: int, device: torch.device) -> torch.Tensor:
    off = torch.as_tensor(offsets).to(device=device, dtype=torch.int64)
    if off.dim() != 1 or off.numel() < 1 or int(off[0]) != 0 or int(off[-1]) != M:
        raise ValueError(f"offsets must be (U+1,) int64 from 0 to M={M}, got {off.tolist()[:8]}...")
    lens = off[1:] - off[:-1]
    if bool((lens < 0).any()):
        raise ValueError("offsets must be non-decreasing")
    return torch.repeat_interleave(torch.arange(lens.numel(), device=device), lens)


def pq_tables(
    W: torch.Tensor, coarse_centroids: torch.Tensor, pq_centroids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-unit lookup tables for PQ scoring.

    Args:
        W: (U, d) unit weights.
        coarse_centroids: (nlist, d) IVF centroids.
        pq_centroids: (m_sub, 256, d / m_sub) PQ sub-codebooks (FAISS ``pq.centroids`` layout).

    Returns:
        ``(coarse (U, nlist) float32, lut (U, m_sub, 256) float32)``.
    """
    W = torch.as_tensor(W)
    C = torch.as_tensor(coarse_centroids).to(W.device)
    Q = torch.as_tensor(pq_centroids).to(W.device)
    U, d = W.shape
    m_sub, ksub, dsub = Q.shape
    if m_sub * dsub != d or C.shape[1] != d:
        raise ValueError(f"shapes disagree: W {tuple(W.shape)}, coarse {tuple(C.shape)}, pq {tuple(Q.shape)}")
    Wd = W.to(torch.float64)
    coarse = Wd @ C.to(torch.float64).t()
    lut = torch.einsum("umk,mjk->umj", Wd.reshape(U, m_sub, dsub), Q.to(torch.float64))
    return coarse.to(torch.float32), lut.to(torch.float32)


def pq_logits_torch(
    codes: torch.Tensor,
    list_ids: torch.Tensor | None,
    offsets: torch.Tensor,
    lut: torch.Tensor,
    coarse: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    chunk: int = 1 << 16,
) -> torch.Tensor:
    """The PQ kernel's computation in torch (float32): ``bias[u] + coarse term + sum_m lut[u, m, code_m]``.

    Args:
        codes: (M, m_sub) uint8; list_ids: (M,) int (needed for a 2-D ``coarse``).
        offsets: (U+1,) int64 CSR bounds.
        lut: (U, m_sub, 256) float32; coarse: (U, nlist) table or (M,) per-candidate term.
        bias: (U,) or None.
        chunk: candidates per chunk (bounds memory).

    Returns:
        (M,) float32 logits on ``codes``' device.
    """
    dev = codes.device
    M, m_sub = codes.shape
    U = lut.shape[0]
    unit = _units_of(offsets, M, dev)
    lut_f = lut.to(device=dev, dtype=torch.float32).reshape(U, m_sub * 256)
    coarse = coarse.to(device=dev, dtype=torch.float32)
    bias_ = torch.zeros(U, device=dev) if bias is None else bias.to(device=dev, dtype=torch.float32)
    out = torch.empty(M, dtype=torch.float32, device=dev)
    mj = torch.arange(m_sub, device=dev) * 256
    for s in range(0, M, chunk):
        e = min(M, s + chunk)
        u = unit[s:e]
        idx = codes[s:e].to(torch.int64) + mj[None, :]
        acc = lut_f[u[:, None], idx].sum(dim=1)
        if coarse.dim() == 2:
            ct = coarse[u, list_ids[s:e].to(device=dev, dtype=torch.int64)]
        else:
            ct = coarse[s:e]
        out[s:e] = bias_[u] + ct + acc
    return out


def pq_decode_reference(
    codes: torch.Tensor, list_ids: torch.Tensor, coarse_centroids: torch.Tensor, pq_centroids: torch.Tensor
) -> torch.Tensor:
    """Reconstruct ``x^ = c_list + concat_m q_m[code_m]`` in float64.

    Args:
        codes: (M, m_sub) uint8; list_ids: (M,) int.
        coarse_centroids: (nlist, d); pq_centroids: (m_sub, 256, dsub).

    Returns:
        (M, d) float64.
    """
    C = torch.as_tensor(coarse_centroids).to(torch.float64)
    Q = torch.as_tensor(pq_centroids).to(torch.float64)
    m_sub, _, dsub = Q.shape
    codes = torch.as_tensor(codes).to(torch.int64).cpu()
    parts = Q[torch.arange(m_sub)[None, :], codes]  # (M, m_sub, dsub)
    return C[torch.as_tensor(list_ids).to(torch.int64).cpu()] + parts.reshape(codes.shape[0], m_sub * dsub)


def pq_logits_reference(
    codes: torch.Tensor,
    list_ids: torch.Tensor,
    offsets: torch.Tensor,
    W: torch.Tensor,
    bias: torch.Tensor | None,
    coarse_centroids: torch.Tensor,
    pq_centroids: torch.Tensor,
) -> torch.Tensor:
    """Oracle: reconstruct every candidate and compute ``w_u . x^ + b_u`` in float64 (on the CPU).

    Args:
        codes: (M, m_sub) uint8; list_ids: (M,) int; offsets: (U+1,) int64 CSR bounds.
        W: (U, d); bias: (U,) or None.
        coarse_centroids: (nlist, d); pq_centroids: (m_sub, 256, dsub).

    Returns:
        (M,) float64 logits.
    """
    xh = pq_decode_reference(codes, list_ids, coarse_centroids, pq_centroids)
    unit = _units_of(torch.as_tensor(offsets).cpu(), xh.shape[0], torch.device("cpu"))
    Wd = torch.as_tensor(W).cpu().to(torch.float64)
    out = (xh * Wd[unit]).sum(dim=1)
    if bias is not None:
        out = out + torch.as_tensor(bias).cpu().to(torch.float64)[unit]
    return out


def ivfpq_parts(index: Any) -> tuple[np.ndarray, np.ndarray]:
    """Codebooks of a FAISS IVF-PQ index (residual encoding, 8-bit codes).

    Args:
        index: a trained ``faiss.IndexIVFPQ`` (or an index wrapping one, e.g. with a pre-transform).

    Returns:
        ``(coarse_centroids (nlist, d) float32, pq_centroids (m_sub, 256, dsub) float32)``.
    """
    import faiss

    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    if not hasattr(ivf, "pq"):
        raise ValueError(f"{type(ivf).__name__} is not an IVF-PQ index")
    pq = ivf.pq
    if pq.nbits != 8:
        raise ValueError(f"the PQ kernel reads 8-bit codes; this index has nbits={pq.nbits}")
    if not ivf.by_residual:
        raise ValueError("the PQ kernel expects residual encoding (by_residual=True)")
    coarse = ivf.quantizer.reconstruct_n(0, ivf.nlist)
    cents = faiss.vector_to_array(pq.centroids).reshape(pq.M, pq.ksub, pq.dsub)
    return np.ascontiguousarray(coarse, dtype=np.float32), np.ascontiguousarray(cents, dtype=np.float32)


def ivfpq_list_codes(index: Any, list_no: int) -> tuple[np.ndarray, np.ndarray]:
    """The stored ``(ids (n,) int64, codes (n, m_sub) uint8)`` of inverted list ``list_no``."""
    import faiss

    ivf = faiss.extract_index_ivf(index)
    inv = ivf.invlists
    n = inv.list_size(list_no)
    if n == 0:
        return np.empty(0, np.int64), np.empty((0, ivf.code_size), np.uint8)
    ids = faiss.rev_swig_ptr(inv.get_ids(list_no), n).copy().astype(np.int64)
    codes = faiss.rev_swig_ptr(inv.get_codes(list_no), n * ivf.code_size).copy()
    return ids, codes.reshape(n, ivf.code_size).astype(np.uint8)
