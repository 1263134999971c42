"""Seed sets and concept samples: the random draws a run starts from, keyed by (seed, concept) so a concept
gets the same seed set whatever else runs beside it."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, SealsError
from .pool import isin_sorted
from .split import TEST, TRAIN, Side, Split, split_codes, train_only_split
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
    rng: np.random.Generator,
    train_ids: np.ndarray | Side,
    positives_train: np.ndarray,
    n_pos: int,
    n_neg: int,
) -> tuple[np.ndarray, np.ndarray]:
    """``n_pos`` random positives and ``n_neg`` random negatives from the train split (its sorted ids, or
    the :class:`~seals_gpu.split.Side` that answers for them: the same draws)."""
    check_seed_set(None, int(train_ids.size), int(positives_train.size), n_pos, n_neg)
    pos = rng.choice(positives_train, size=n_pos, replace=False)
    neg = draw_excluding(rng, train_ids, positives_train, n_neg)
    ids = np.concatenate([pos.astype(np.int64), neg])
    labels = np.concatenate([np.ones(n_pos, bool), np.zeros(n_neg, bool)])
    return ids, labels


def draw_excluding(
    rng: np.random.Generator, train_ids: np.ndarray | Side, excluded: np.ndarray, n: int
) -> np.ndarray:
    """``n`` distinct random train ids not in ``excluded`` (sorted), in the order drawn; the caller makes
    sure that many exist. ``train_ids``: sorted ids, or a :class:`~seals_gpu.split.Side` (ids by rank,
    asked of the shards: the same draws without the list)."""
    out: list[int] = []
    chosen: set[int] = set()
    while len(out) < n:
        cand = train_ids.take(rng.integers(0, train_ids.size, size=2 * (n - len(out)) + 8))
        for c in cand[~isin_sorted(cand, excluded)].tolist():
            if c not in chosen:
                chosen.add(c)
                out.append(c)
                if len(out) == n:
                    break
    return np.asarray(out, dtype=np.int64)


def text_seed_ids(store: Store, backend: Any, texts: dict[str, str], k: int) -> dict[str, np.ndarray]:
    """``--seed-text``: per concept key, the ``k`` train ids nearest to its text embedded with the store's
    recorded model (the run's own search; nearest first, ties by lower id)."""
    from .embed import embed_query

    keys = list(texts)
    q = np.ascontiguousarray(embed_query(store, [texts[key] for key in keys]), dtype=np.float32)
    D, I = backend.search(q, k)
    return {key: np.asarray(I[j][np.isfinite(D[j])], np.int64) for j, key in enumerate(keys)}


def read_seed_ids(
    path: Path, concepts: Sequence[Any], split: Split
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``--seed-ids FILE`` (CSV or Parquet: ``concept, id[, label]``; label 1, the default, a known positive,
    0 a known negative): per concept key (its text) the known positives and negatives, in file order. Every
    id must be a train id of the store, every run concept needs a positive, and nothing else may be listed;
    refused in one line naming the file and the row otherwise."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from .queue import _id_of, _label_of

    try:
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            first = 1
            at_word = "row"
        else:
            table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(strings_can_be_null=False))
            first = 2
            at_word = "line"
    except (OSError, pa.ArrowException) as e:
        raise ConfigError(
            f"--seed-ids {path} is unreadable ({' '.join(str(e).split())}); give a CSV or Parquet file"
        ) from None
    missing = [c for c in ("concept", "id") if c not in table.column_names]
    if missing:
        raise ConfigError(
            f"--seed-ids {path}: missing column(s) {', '.join(missing)} (found {table.column_names}); it needs "
            "concept, id and optionally label (1 positive, 0 negative)"
        )
    cols = table.to_pydict()
    keys = {str(c): c for c in concepts}
    out: dict[str, tuple[list[int], list[int]]] = {k: ([], []) for k in keys}
    seen: dict[tuple[str, int], bool] = {}
    rows: list[tuple[str, str, int, bool]] = []
    for r in range(table.num_rows):
        at = f"{at_word} {r + first}"
        c = str(cols["concept"][r]).strip()
        try:
            i = _id_of(cols["id"][r], path, at)
            y = _label_of(cols["label"][r], path, at) if "label" in cols else True
        except SealsError as e:
            raise ConfigError(f"--seed-ids {e}") from None
        if c not in keys:
            raise ConfigError(
                f"--seed-ids {path} {at}: concept {c!r} is not one of --concepts; list it or drop the row"
            )
        rows.append((at, c, i, y))
    codes = split.codes(np.array([i for _, _, i, _ in rows], dtype=np.int64))  # one question for every id
    for (at, c, i, y), code in zip(rows, codes.tolist(), strict=True):
        if code != TRAIN:
            where = "in the test split" if code == TEST else "not in the store"
            raise ConfigError(
                f"--seed-ids {path} {at}: id {i} is {where}; seed ids must be train ids of the store"
            )
        if (c, i) in seen:
            if seen[(c, i)] != y:
                raise ConfigError(
                    f"--seed-ids {path} {at}: concept {c} id {i} is listed as both positive and negative"
                )
            continue
        seen[(c, i)] = y
        out[c][0 if y else 1].append(i)
    for k, (pos, _) in out.items():
        if not pos:
            raise ConfigError(
                f"--seed-ids {path} lists no positive for concept {k}; give at least one known positive"
            )
    return {k: (np.asarray(p, np.int64), np.asarray(n, np.int64)) for k, (p, n) in out.items()}


def eligible_concepts(
    store: Store,
    prevalence: tuple[float, float],
    min_train_positives: int,
    train_ids: np.ndarray | Split,
    *,
    min_test_positives: int = 0,
) -> list[Any]:
    """Concepts with prevalence in [MIN, MAX], at least ``min_train_positives`` positives in the train split
    and (optionally) ``min_test_positives`` in the test split (a concept without a test positive has no AP),
    in a fixed order (by repr). ``train_ids``: the sorted train ids, or the run's :class:`Split`."""
    counts = store.concept_counts()
    lo, hi = prevalence
    eligible = sorted((c for c, k in counts.items() if lo <= k / store.num_rows <= hi), key=repr)
    if eligible:
        pos = store.concept_positives(eligible)
        split = train_ids if isinstance(train_ids, Split) else train_only_split(train_ids)
        # one question to the split for every concept's positives
        in_train = [code == TRAIN for code in split_codes(split, [pos[c] for c in eligible])]
        keep = []
        for c, mask in zip(eligible, in_train, strict=True):
            n_train = int(mask.sum())
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
    train_ids: np.ndarray | Split,
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
