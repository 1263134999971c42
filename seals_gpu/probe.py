"""Pool-escape estimate (``seals-gpu run --probe B``): how many positives lie outside a SEALS unit's pool.

SEALS only ever scores its candidate pool, so by itself it cannot tell what it misses. With ``--probe B``
each round every SEALS unit spends ``B`` of its ``b`` labels on *probes*: items drawn uniformly at random,
without replacement, from its **outside set**

    O_r = train rows − pool_r − labeled_r      (at round r's selection; its size N_r = |O_r| is known)

(:func:`draw_probes`: a generator seeded by (run seed, concept, strategy, mode, round), so a unit draws the
same probes whatever else runs). All units have no outside (they score every train row) and take no probes.
In a short final round a unit takes ``min(B, b_round - 1)`` probes (:func:`probe_count`): the model keeps at
least one pick.

**Estimator** (per round, from that round's probes only). Of the ``n`` probes, ``y`` are positive. Then

    K̂_r = N_r · y / n

is unbiased for K_r, the number of positives in O_r (the mean of a hypergeometric draw is ``n K_r / N_r``).
A per-round estimate is used because O_r shrinks as the pool grows and earlier probes are labeled, so
earlier rounds' probes no longer sample the current outside set.

**Interval**: Clopper-Pearson (exact binomial, two-sided 95%) on the proportion ``y / n``, scaled by
``N_r``: ``[N_r · p_lo, N_r · p_hi]``, with ``p_lo = Beta(α/2; y, n−y+1)`` and
``p_hi = Beta(1−α/2; y+1, n−y)`` quantiles (``p_lo = 0`` at ``y = 0``, ``p_hi = 1`` at ``y = n``). It is
chosen over Wilson because rare concepts mostly see ``y = 0``, where Clopper-Pearson still guarantees at
least nominal coverage (its upper bound at ``y = 0`` is ``1 − (α/2)^{1/n}``); sampling without replacement
is less variable than the binomial, so the interval stays conservative. The lower bound is raised to ``y``
(the probes' own positives are known to be there).

**Recall**. ``M_r = K_r − y`` positives are outside the pool and still unlabeled after round r (its
estimate ``(N_r − n) · y / n`` is unbiased too). With ``F_r`` the positives the unit has labeled through
round r (the ``n_positives`` column, probes included):

    recall_est = F_r / (F_r + M̂_r),   interval F_r / (F_r + M_hi) .. F_r / (F_r + M_lo)

It is the recall the unit would have *if its pool held no more unlabeled positives*: the true recall is
``F_r / (F_r + pool positives + M_r)``, so ``recall_est`` estimates an upper bound on it, close once the
model has mined its pool. A gap between the two says positives are still in the pool (reachable); a low
``recall_est`` says positives have escaped the pool (SEALS cannot reach them without new seeds).
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import numpy as np

from .pool import isin_sorted
from .seeds import draw_excluding
from .split import Side, train_only_split

ALPHA = 0.05  # two-sided: 95% intervals
# the metrics.parquet columns a run with --probe B > 0 adds (float64, NaN where not applicable: All units,
# round 0, a round without probes); a run without --probe writes none of them
PROBE_COLUMNS = (
    "probes",
    "probe_positives",
    "outside_size",
    "outside_positives",
    "outside_pos_est",
    "outside_pos_lo",
    "outside_pos_hi",
    "recall_est",
    "recall_est_lo",
    "recall_est_hi",
)


def probe_count(probe: int, b_round: int) -> int:
    """Probes a SEALS unit takes in a round of ``b_round`` labels: ``B``, but at most ``b_round - 1``."""
    return max(0, min(int(probe), int(b_round) - 1))


def probe_key(concept: Any, strategy: str, mode: str) -> int:
    """A stable key of a unit for its probe draws (unrelated to Random's scores of the same unit)."""
    return zlib.crc32(repr(("probe", concept, strategy, mode)).encode())


def outside_ids(train_ids: np.ndarray, pool_ids: np.ndarray, labeled_ids: np.ndarray) -> np.ndarray:
    """Sorted train ids neither in the pool nor labeled (``train_ids`` sorted)."""
    excluded = np.union1d(pool_ids, labeled_ids)
    return train_ids[~isin_sorted(train_ids, excluded)]


def draw_probes(
    seed: int,
    key: int,
    round_no: int,
    n: int,
    train: np.ndarray | Side,
    pool_ids: np.ndarray,
    labeled_ids: np.ndarray,
) -> tuple[np.ndarray, int]:
    """``n`` ids drawn uniformly without replacement from the outside set (all of it when it is smaller), in
    the order drawn, and the outside set's size. Deterministic in (seed, key, round) and the unit's state.
    ``train``: the sorted train ids, or the run's :class:`~seals_gpu.split.Side` (the same draws)."""
    if not isinstance(train, Side):
        train = train_only_split(train).train
    excluded = np.union1d(pool_ids, labeled_ids)
    size = int(train.size - train.contains(excluded).sum())
    rng = np.random.default_rng([int(seed), int(key), int(round_no)])
    if n <= 0 or size == 0:
        return np.empty(0, np.int64), size
    if n >= size or size < 4 * n or size < train.size // 4:  # rejection would be slow: list the set
        out = outside_ids(train.all(), pool_ids, labeled_ids)  # the pool is most of the split anyway
        return rng.permutation(out)[: min(n, size)].astype(np.int64), size
    return draw_excluding(rng, train, excluded, n), size


def clopper_pearson(y: int, n: int, alpha: float = ALPHA) -> tuple[float, float]:
    """Two-sided exact binomial interval for a proportion of ``y`` successes in ``n`` trials (``n >= 1``)."""
    from scipy.stats import beta

    lo = 0.0 if y <= 0 else float(beta.ppf(alpha / 2, y, n - y + 1))
    hi = 1.0 if y >= n else float(beta.ppf(1 - alpha / 2, y + 1, n - y))
    return lo, hi


def estimate(outside: int, n: int, y: int, found: int, alpha: float = ALPHA) -> dict[str, float]:
    """The probe columns of one (unit, round) from the outside set's size, the probes taken and their
    positives, and the positives the unit has labeled so far (``outside_positives``, the truth, is the
    caller's). NaN where there were no probes."""
    nan = float("nan")
    row = {c: nan for c in PROBE_COLUMNS}
    row.update(probes=float(n), probe_positives=float(y), outside_size=float(outside))
    if n <= 0:
        return row
    p_lo, p_hi = clopper_pearson(y, n, alpha)
    k_lo = max(outside * p_lo, float(y))
    k_hi = max(outside * p_hi, float(y))
    row.update(outside_pos_est=outside * y / n, outside_pos_lo=k_lo, outside_pos_hi=k_hi)
    m_est = (outside - n) * y / n
    m_lo, m_hi = k_lo - y, k_hi - y

    def recall(m: float) -> float:
        return found / (found + m) if found + m > 0 else nan

    row.update(recall_est=recall(m_est), recall_est_lo=recall(m_hi), recall_est_hi=recall(m_lo))
    return row


def empty_row() -> dict[str, float]:
    """The probe columns of a unit and round without probes (All units, round 0)."""
    return dict.fromkeys(PROBE_COLUMNS, math.nan)


# ---------------------------------------------------------------------------------------------- the run's side
def add_probes(run: Any, round_no: int, b_round: int, chosen: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Append each SEALS unit's probes to its picks (``chosen``, in place) and return, per unit, which of its
    picks are probes (bool). The outside set excludes the round's model picks too (with ``--expand each`` a
    pick may come from neighbours the pool gained within the round)."""
    cfg = run.config
    n = probe_count(cfg.probe, b_round)
    flags: dict[int, np.ndarray] = {}
    for u in run.units:
        picks = chosen[u.index]
        if u.mode != "seals" or n == 0:
            flags[u.index] = np.zeros(picks.size, bool)
            continue
        taken = np.concatenate([u.labeled_ids, picks])
        ids, _ = draw_probes(
            cfg.seed,
            probe_key(u.concept, u.strategy, u.mode),
            round_no,
            n,
            run.split.train,
            u.pool.ids,
            taken,
        )
        chosen[u.index] = np.concatenate([picks, ids]).astype(np.int64)
        flags[u.index] = np.concatenate([np.zeros(picks.size, bool), np.ones(ids.size, bool)])
    return flags


def outside_state(
    run: Any, chosen: dict[int, np.ndarray], probe: dict[int, np.ndarray] | None
) -> list[tuple[int, float]]:
    """Per unit, before the round's labels go in: the size of the outside set its probes were drawn from,
    and the true number of positives in it (from the store's labels; NaN without them)."""
    out: list[tuple[int, float]] = []
    for u in run.units:
        if u.mode != "seals" or probe is None:
            out.append((0, math.nan))
            continue
        picks = chosen[u.index][~probe[u.index]]
        inside = np.union1d(np.union1d(u.pool.ids, u.labeled_ids), picks)
        size = int(run.split.train.size - run.split.train.contains(inside).sum())
        truth = math.nan
        if run.store.has_labels:
            pos = run._train_pos[u.concept]  # sorted
            truth = float(pos.size - isin_sorted(pos, inside).sum())
        out.append((size, truth))
    return out


def probe_rows(
    run: Any, probe: dict[int, np.ndarray] | None, before: list[tuple[int, float]] | None
) -> dict[int, dict[str, float]]:
    """Each unit's probe columns for the round just labeled (its labels are the last of ``u.labels``)."""
    rows: dict[int, dict[str, float]] = {}
    for u in run.units:
        if probe is None or before is None or u.mode != "seals" or not probe[u.index].any():
            rows[u.index] = empty_row()
            continue
        flag = probe[u.index]
        y = int(u.labels[-1][flag].sum())
        size, truth = before[u.index]
        rows[u.index] = estimate(size, int(flag.sum()), y, int(u.label_vec.sum())) | {
            "outside_positives": truth
        }
    return rows
