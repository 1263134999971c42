"""Seed sets and concept samples: the random draws a run starts from, keyed by (seed, concept) so a concept
gets the same seed set whatever else runs beside it."""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

from .errors import ConfigError
from .pool import isin_sorted
from .store import Store


def concept_seed(seed: int, concept: Any) -> np.random.Generator:
    key = zlib.crc32(repr(concept).encode())
    return np.random.default_rng([seed, key])


def check_seed_set(concept: Any, n_train: int, n_pos_train: int, n_pos: int, n_neg: int) -> None:
    """Refuse a seed set the train split cannot supply for ``concept`` (``n_pos_train`` of its ``n_train``
    rows are positives), before anything is written. ``concept`` None: not known here."""
    name = "the concept" if concept is None else f"concept {concept!r}"
    if n_pos_train < n_pos:
        raise ConfigError(
            f"{name} has {n_pos_train} train positives, fewer than --seed-positives {n_pos}; "
            "lower --seed-positives or choose another concept"
        )
    n_negatives = n_train - n_pos_train
    if n_neg > n_negatives:
        raise ConfigError(
            f"--seed-negatives {n_neg}: {name} has only {n_negatives} negatives in the train split; "
            f"lower --seed-negatives to at most {n_negatives}"
        )


def draw_seed_set(
    rng: np.random.Generator, train_ids: np.ndarray, positives_train: np.ndarray, n_pos: int, n_neg: int
) -> tuple[np.ndarray, np.ndarray]:
    """``n_pos`` random positives and ``n_neg`` random negatives from the train split."""
    check_seed_set(None, int(train_ids.size), int(positives_train.size), n_pos, n_neg)
    pos = rng.choice(positives_train, size=n_pos, replace=False)
    neg: list[int] = []
    chosen: set[int] = set()
    while len(neg) < n_neg:
        cand = train_ids[rng.integers(0, train_ids.size, size=2 * (n_neg - len(neg)) + 8)]
        for c in cand[~isin_sorted(cand, positives_train)].tolist():
            if c not in chosen:
                chosen.add(c)
                neg.append(c)
                if len(neg) == n_neg:
                    break
    ids = np.concatenate([pos.astype(np.int64), np.asarray(neg, dtype=np.int64)])
    labels = np.concatenate([np.ones(n_pos, bool), np.zeros(n_neg, bool)])
    return ids, labels


def eligible_concepts(
    store: Store,
    prevalence: tuple[float, float],
    min_train_positives: int,
    train_ids: np.ndarray,
    *,
    min_test_positives: int = 0,
) -> list[Any]:
    """Concepts with prevalence in [MIN, MAX], at least ``min_train_positives`` positives in the train split
    and (optionally) ``min_test_positives`` in the test split (a concept without a test positive has no AP),
    in a fixed order (by repr)."""
    counts = store.concept_counts()
    lo, hi = prevalence
    eligible = sorted((c for c, k in counts.items() if lo <= k / store.num_rows <= hi), key=repr)
    if eligible:
        pos = store.concept_positives(eligible)
        keep = []
        for c in eligible:
            n_train = int(isin_sorted(pos[c], train_ids).sum())
            if n_train >= min_train_positives and pos[c].size - n_train >= min_test_positives:
                keep.append(c)
        eligible = keep
    return eligible


def sample_concepts(
    store: Store,
    n: int,
    prevalence: tuple[float, float],
    seed: int,
    min_train_positives: int,
    train_ids: np.ndarray,
    *,
    min_test_positives: int = 0,
) -> list[Any]:
    """``n`` concepts with prevalence in [MIN, MAX] and enough train (and test) positives, chosen with
    ``seed`` among :func:`eligible_concepts`."""
    lo, hi = prevalence
    eligible = eligible_concepts(
        store, prevalence, min_train_positives, train_ids, min_test_positives=min_test_positives
    )
    if len(eligible) < n:
        test = f" and >= {min_test_positives} test positives" if min_test_positives else ""
        raise ConfigError(
            f"only {len(eligible)} concepts have prevalence in [{lo}, {hi}] with >= {min_train_positives} "
            f"train positives{test}, but --concepts-sample asks for {n}; widen --prevalence or sample fewer"
        )
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(eligible), size=n, replace=False)
    return [eligible[i] for i in sorted(picked)]
