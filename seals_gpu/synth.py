"""Synthetic stores with planted rare concepts, generated in bounded memory.

The geometry imitates real embeddings: a background of many Gaussian clusters of uneven size, and each
concept made of 2-4 sub-clusters that sit inside populated background clusters (offset from their centre
by a few noise standard deviations), so a concept's positives are near one another and near many
negatives. With some label noise (positives drawn like background, unlabelled rows drawn like the
concept) a linear model on the l2-normalised vectors is good but not perfect.

Everything is drawn in fixed chunks of :data:`CHUNK_ROWS` rows, each with its own seeded generator, and
each concept's members are chosen chunk by chunk with sequential hypergeometric draws, so the count of
positives is exact and the output does not depend on ``batch_rows``. Memory is O(batch_rows x dim) plus
O(concepts x dim) for the concept parameters.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from .config import INT64_MAX, check_fits_memory
from .errors import ConfigError, StoreError
from .store import CONCEPTS_FILE, TEST_FRACTION, Store, StoreWriter, check_store_out

__all__ = ["make_synthetic_store", "CHUNK_ROWS", "SynthParams"]

CHUNK_ROWS = 8192  # generation unit; fixed so that batch_rows never changes the data
NOISE_NORM = 0.5  # expected norm of a row's noise relative to its unit-norm cluster centre
LOW_RANK_SHARE = 0.8  # share of the noise variance in a cluster's low-rank subspace
MAX_RANK = 12  # intrinsic dimension of a cluster: real embeddings live near low-dimensional manifolds
N_BASES = 32  # distinct low-rank subspaces, shared by the background clusters
MAX_CENTRES = 4096
MIN_CENTRES = 8
ROWS_PER_CENTRE = 500
_HYPERGEOM_MAX = 10**9 - 1  # numpy's hypergeometric needs ngood + nbad below 1e9
SHIFT = (2.0, 3.0)  # concept offset from its anchor cluster, in subspace noise standard deviations
SPREAD = 1.2  # sub-cluster offsets around the concept direction, same units
MAX_ROWS = 2**48  # ids are a bijection onto [0, 2**(bits(n) + 3)), which must stay within int64
MAX_DIM = 65_536


@dataclass(frozen=True)
class SynthParams:
    """The global structure of a synthetic store (small: O((centres + concepts) x dim))."""

    centres: np.ndarray  # (m, d) unit background centres
    weights: np.ndarray  # (m,) background cluster probabilities
    cluster_basis: np.ndarray  # (m,) index into bases
    bases: np.ndarray  # (N_BASES, d, r) orthonormal columns: each cluster's noise subspace
    sigma_low: float  # noise std per direction inside the subspace
    sigma_iso: float  # isotropic noise std per dimension
    sub_centres: np.ndarray  # (concepts, 4, d); only the first n_sub[c] are used
    sub_basis: np.ndarray  # (concepts, 4) index into bases
    n_sub: np.ndarray  # (concepts,) int64 in 2..4
    concept_scale: np.ndarray  # (concepts,) concept rows' noise relative to background rows
    counts: np.ndarray  # (concepts,) int64 labelled positives, exact
    noise: np.ndarray  # (concepts,) fraction of positives drawn like background; decoy rate too


def _check_args(n: int, dim: int, concepts: int, prevalence: tuple[float, float], seed: int, batch_rows: int):
    for name, v in (
        ("n", n),
        ("dim", dim),
        ("concepts", concepts),
        ("seed", seed),
        ("batch_rows", batch_rows),
    ):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ConfigError(f"{name}={v!r}; it must be an integer")
    if n < 1:
        raise StoreError(f"n={n}; a synthetic store needs at least 1 row")
    if n > MAX_ROWS:
        raise StoreError(f"n={n}; a synthetic store holds at most {MAX_ROWS:,} rows (2**48); lower n")
    if dim < 2:
        raise StoreError(f"dim={dim}; the embedding dimension must be at least 2")
    if dim > MAX_DIM:
        raise StoreError(f"dim={dim}; the embedding dimension can be at most {MAX_DIM:,}; lower dim")
    if concepts < 0:
        raise ConfigError(f"concepts={concepts}; the number of concepts cannot be negative")
    if seed < 0 or seed > INT64_MAX:
        raise ConfigError(f"seed={seed}; the seed must be an integer from 0 to 2**63 - 1")
    if batch_rows < 1:
        raise ConfigError(f"batch_rows={batch_rows}; it must be at least 1")
    try:
        lo, hi = (float(prevalence[0]), float(prevalence[1]))
        if len(prevalence) != 2:
            raise ValueError
    except (TypeError, ValueError, IndexError):
        raise ConfigError(
            f"prevalence={prevalence!r}; pass (MIN, MAX) fractions, e.g. (0.001, 0.01)"
        ) from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or not (0 < lo < 1) or not (0 < hi < 1):
        raise ConfigError(f"prevalence={prevalence!r}; MIN and MAX must lie strictly between 0 and 1")
    if lo > hi:
        raise ConfigError(f"prevalence={prevalence!r}; MIN {lo} is above MAX {hi}")
    if concepts * hi > 1:
        raise ConfigError(
            f"concepts={concepts} with prevalence MAX={hi}: concepts x MAX = {concepts * hi:g} > 1, so the "
            "concepts could cover more rows than the store has; lower MAX or the number of concepts"
        )
    # a lower bound of the memory it takes: one write batch of float32 rows and its normalised copy, and
    # the parameters (background centres and 4 sub-centres per concept, float64), checked before anything
    rows = min(n, batch_rows)
    centres = int(np.clip(n // ROWS_PER_CENTRE, MIN_CENTRES, MAX_CENTRES))
    check_fits_memory(
        8 * rows * dim + 8 * (centres + 4 * concepts) * dim,
        what=f"a synthetic store of n={n:,} x dim={dim} with {concepts:,} concepts",
        fix="lower dim, n or the number of concepts (or batch_rows)",
        error=ConfigError,
    )
    return lo, hi


def _seq(seed: int, *key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key)))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _make_params(n: int, dim: int, concepts: int, lo: float, hi: float, seed: int) -> SynthParams:
    rng = _seq(seed, 0)
    m = int(np.clip(n // ROWS_PER_CENTRE, MIN_CENTRES, MAX_CENTRES))
    centres = _unit(rng.standard_normal((m, dim)))
    weights = rng.gamma(2.0, size=m)
    weights /= weights.sum()
    r = min(dim, MAX_RANK)
    bases = np.stack([np.linalg.qr(rng.standard_normal((dim, r)))[0] for _ in range(N_BASES)])
    cluster_basis = rng.integers(0, N_BASES, size=m)
    sigma_low = NOISE_NORM * math.sqrt(LOW_RANK_SHARE / r)
    sigma_iso = NOISE_NORM * math.sqrt((1 - LOW_RANK_SHARE) / dim)

    prev = np.exp(rng.uniform(math.log(lo), math.log(hi), size=concepts))
    counts = np.maximum(1, np.rint(prev * n)).astype(np.int64)
    n_sub = rng.integers(2, 5, size=concepts).astype(np.int64)
    noise = rng.uniform(0.02, 0.05, size=concepts)
    concept_scale = rng.uniform(0.9, 1.2, size=concepts)
    sub = np.zeros((concepts, 4, dim))
    sub_basis = np.zeros((concepts, 4), dtype=np.int64)
    nearest: dict[int, int] = {}
    for c in range(concepts):
        # a populated anchor cluster and its nearest neighbour: the concept straddles both
        a = int(rng.choice(m, p=weights))
        if a not in nearest:
            sims = centres @ centres[a]
            sims[a] = -np.inf
            nearest[a] = int(np.argmax(sims))
        u = _unit(rng.standard_normal(r))  # the concept's direction, in subspace coordinates
        shift = rng.uniform(SHIFT[0], SHIFT[1])  # in noise standard deviations
        for j in range(4):
            k = a if j == 0 or rng.random() < 0.6 else nearest[a]
            v = _unit(rng.standard_normal(r))
            sub[c, j] = centres[k] + sigma_low * (bases[cluster_basis[k]] @ (shift * u + SPREAD * v))
            sub_basis[c, j] = cluster_basis[k]
    return SynthParams(
        centres=centres,
        weights=weights,
        cluster_basis=cluster_basis,
        bases=bases.astype(np.float32),
        sigma_low=sigma_low,
        sigma_iso=sigma_iso,
        sub_centres=sub,
        sub_basis=sub_basis,
        n_sub=n_sub,
        concept_scale=concept_scale,
        counts=counts,
        noise=noise,
    )


def _ids(rows: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A bijection of row numbers onto [0, 2**k), k = bits(n) + 3: unique, scrambled ids that are mostly
    larger than n, so code that confuses ids with row positions fails loudly."""
    k = max(16, int(n - 1).bit_length() + 3)
    mask = np.uint64((1 << k) - 1)
    x = (rows.astype(np.uint64) + np.uint64(seed * 0x9E3779B1 % (1 << k))) & mask
    with np.errstate(over="ignore"):
        for mult in (0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0xD6E8FEB86659FD93):
            x ^= x >> np.uint64(k // 2 + 1)
            x = (x * np.uint64(mult)) & mask
        x ^= x >> np.uint64(k // 2 + 1)
    return x.astype(np.int64)


@dataclass
class _Chunk:
    ids: np.ndarray
    emb: np.ndarray  # float32 (rows, d), not normalised
    labels: list[list[int]]
    split: np.ndarray  # object array of 'train'/'test'


def _chunks(n: int, dim: int, p: SynthParams, seed: int) -> Iterator[_Chunk]:
    concepts = p.counts.size
    remaining_k = p.counts.copy()
    remaining_n = n
    r = p.bases.shape[2]
    for ci, start in enumerate(range(0, n, CHUNK_ROWS)):
        size = min(CHUNK_ROWS, n - start)
        rng = _seq(seed, 1, ci)
        rows = np.arange(start, start + size, dtype=np.int64)
        test = rng.random(size) < TEST_FRACTION
        cluster = rng.choice(p.centres.shape[0], size=size, p=p.weights)
        centre = p.centres[cluster]
        basis = p.cluster_basis[cluster]
        scale = np.ones(size)

        labels: list[list[int]] = [[] for _ in range(size)]
        if concepts:
            # how many of each concept's remaining members fall in this chunk (exact overall)
            if remaining_n <= _HYPERGEOM_MAX:
                take = rng.hypergeometric(remaining_k, remaining_n - remaining_k, size)
            else:
                take = rng.binomial(size, remaining_k / remaining_n)
                take = np.clip(take, np.maximum(0, remaining_k - (remaining_n - size)), remaining_k)
            remaining_k -= take
            # unlabelled look-alikes: rows drawn like the concept but not labelled with it
            decoys = rng.binomial(size, p.noise * p.counts / n)
            acc = np.zeros((size, dim))
            hits = np.zeros(size, dtype=np.int64)
            for c in np.flatnonzero(take):
                pos = np.sort(rng.choice(size, size=int(take[c]), replace=False))
                sub = rng.integers(0, p.n_sub[c], size=pos.size)
                clean = rng.random(pos.size) >= p.noise[c]  # noisy positives keep the background draw
                for i in pos:
                    labels[i].append(int(c))
                pos, sub = pos[clean], sub[clean]
                acc[pos] += p.sub_centres[c, sub]
                first = pos[hits[pos] == 0]
                basis[first] = p.sub_basis[c, sub[hits[pos] == 0]]
                scale[first] = p.concept_scale[c]
                hits[pos] += 1
            for c in np.flatnonzero(decoys):
                pos = rng.choice(size, size=int(decoys[c]), replace=False)
                sub = rng.integers(0, p.n_sub[c], size=pos.size)
                free = np.asarray([hits[i] == 0 and not labels[i] for i in pos], dtype=bool)
                pos, sub = pos[free], sub[free]
                acc[pos] = p.sub_centres[c, sub]
                basis[pos] = p.sub_basis[c, sub]
                scale[pos] = p.concept_scale[c]
                hits[pos] = 1
            drawn = hits > 0
            centre[drawn] = acc[drawn] / hits[drawn, None]
        remaining_n -= size
        g = rng.standard_normal((size, r), dtype=np.float32)
        emb = rng.standard_normal((size, dim), dtype=np.float32)
        emb *= np.float32(p.sigma_iso)
        for k in np.unique(basis):
            sel = np.flatnonzero(basis == k)
            emb[sel] += (g[sel] * np.float32(p.sigma_low)) @ p.bases[k].T
        emb *= scale[:, None].astype(np.float32)
        emb += centre.astype(np.float32)
        split = np.where(test, "test", "train").astype(object)
        yield _Chunk(_ids(rows, n, seed), emb, labels, split)


def _batches(chunks: Iterator[_Chunk], batch_rows: int) -> Iterator[_Chunk]:
    """Regroup fixed-size chunks into batches of exactly ``batch_rows`` rows (the last may be shorter)."""
    buf: list[_Chunk] = []
    have = 0
    for ch in chunks:
        buf.append(ch)
        have += ch.ids.size
        while have >= batch_rows:
            cat = _concat(buf)
            yield _slice(cat, 0, batch_rows)
            rest = _slice(cat, batch_rows, have)
            buf = [rest] if rest.ids.size else []
            have = rest.ids.size
    if have:
        yield _concat(buf)


def _concat(parts: list[_Chunk]) -> _Chunk:
    if len(parts) == 1:
        return parts[0]
    return _Chunk(
        np.concatenate([c.ids for c in parts]),
        np.concatenate([c.emb for c in parts]),
        [lab for c in parts for lab in c.labels],
        np.concatenate([c.split for c in parts]),
    )


def _slice(c: _Chunk, a: int, b: int) -> _Chunk:
    return _Chunk(c.ids[a:b], c.emb[a:b], c.labels[a:b], c.split[a:b])


def make_synthetic_store(
    out: str | os.PathLike[str],
    *,
    n: int,
    dim: int,
    concepts: int,
    prevalence: tuple[float, float],
    seed: int,
    batch_rows: int = 262_144,
    overwrite: bool = False,
    progress: bool = False,
) -> Store:
    """Write a synthetic store with planted rare concepts at ``out`` (atomically) and return it opened.

    Args:
        out: the store folder to create.
        n: rows.
        dim: embedding dimension (at least 2).
        concepts: planted concepts, ids ``0..concepts-1`` in the ``labels`` column (multi-label).
        prevalence: ``(MIN, MAX)``; each concept's prevalence is drawn log-uniformly in it and realised
            exactly as ``max(1, round(p * n))`` labelled rows.
        seed: the same arguments give byte-identical ids, embeddings, labels and split.
        batch_rows: rows per write; bounds memory (about ``batch_rows * dim * 12`` bytes), never the data.
        overwrite: replace an existing store at ``out``.
        progress: show a tqdm progress bar.

    The store has columns ``id`` (scrambled unique int64, not row positions), ``embedding``, ``labels``
    and ``split`` (about 20% ``test``), and a ``_concepts.parquet`` side table
    (``concept_id, name, n_positive, prevalence``).
    """
    lo, hi = _check_args(n, dim, concepts, prevalence, seed, batch_rows)
    n, dim, concepts, seed, batch_rows = int(n), int(dim), int(concepts), int(seed), int(batch_rows)
    out = Path(out)
    check_store_out(out, overwrite=overwrite)  # before any work: --force replaces only a store
    params = _make_params(n, dim, concepts, lo, hi, seed)
    width = max(3, len(str(max(concepts - 1, 0))))
    concepts_table = pa.table(
        {
            "concept_id": pa.array(np.arange(concepts, dtype=np.int64), type=pa.int64()),
            "name": pa.array([f"synth-{c:0{width}d}" for c in range(concepts)], type=pa.string()),
            "n_positive": pa.array(params.counts, type=pa.int64()),
            "prevalence": pa.array(params.counts / float(n), type=pa.float64()),
        }
    )
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, unit="row", unit_scale=True, desc="synthetic store")
    try:
        with StoreWriter(out, dim=dim, overwrite=overwrite) as w:
            for b in _batches(_chunks(n, dim, params, seed), batch_rows):
                w.write(b.ids, b.emb, labels=b.labels, split=b.split)
                if bar is not None:
                    bar.update(b.ids.size)
            w.add_side_table(CONCEPTS_FILE, concepts_table)
    finally:
        if bar is not None:
            bar.close()
    return Store(out)
