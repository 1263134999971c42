"""Tests that pin the error messages of the compute modules' input checks (scoring, learner, metrics, pool).

Each refused input must be named in the message: the bad value (shape, dtype, count) and, where there is
one, the fix. Found by mutation testing: replacing any of these messages by None (``raise ValueError(None)``)
survived the rest of the suite.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from seals_gpu.learner import LogisticModel, fit_logistic
from seals_gpu.metrics import recall
from seals_gpu.pool import NeighborCache
from seals_gpu.scoring import TopB, merge_topb, score_candidates, score_select, strategy_scores

from .conftest import unit_rows as _unit


def _select(emb, rows, offsets, W, bias, kind, ref) -> object:
    """score_select on the torch backend, the candidates' ids being 100 + their rows."""
    rows = torch.as_tensor(rows)
    return score_select(emb, rows, rows + 100, offsets, W, bias, kind, ref, 1.0, 2, backend="torch")


def _candidates(emb, rows, offsets, W, bias, kind, ref) -> object:
    """score_candidates on the torch backend."""
    return score_candidates(emb, rows, offsets, W, bias, kind, ref, 1.0, backend="torch")


SCORERS: dict[str, Callable[..., object]] = {"score_select": _select, "score_candidates": _candidates}


def _good() -> dict[str, object]:
    """A valid batch: 10 embeddings of d=4, one maxent unit with 3 candidates."""
    return {
        "emb": torch.from_numpy(_unit(10, 4)),
        "rows": torch.tensor([0, 1, 2]),
        "offsets": torch.tensor([0, 3]),
        "W": torch.zeros(1, 4),
        "bias": torch.zeros(1),
        "kind": torch.zeros(1, dtype=torch.int8),
        "ref": None,
    }


# ------------------------------------------------------------------------------------------------ scoring
@pytest.mark.parametrize("scorer", sorted(SCORERS))
def test_the_valid_batch_of_these_tests_is_accepted(scorer: str) -> None:
    """The baseline batch that the error tests below spoil one argument of is itself scored, so each
    refusal below is due to the one spoiled argument (guards the tests of this module)."""
    SCORERS[scorer](**_good())


@pytest.mark.parametrize("scorer", sorted(SCORERS))
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"emb": torch.zeros(10)}, r"^emb must be a 2-D tensor \(N, d\), got shape \(10,\)$"),
        (
            {"emb": np.zeros((10, 4), np.float32)},
            r"^emb must be a 2-D torch\.Tensor \(N, d\), got ndarray; use torch\.from_numpy$",
        ),
        ({"emb": torch.zeros(10, 4, dtype=torch.int64)}, r"^emb must be floating point, got torch\.int64$"),
        ({"W": torch.zeros(4)}, r"^W must be 2-D \(U, d\), got shape \(4,\)$"),
        ({"W": torch.zeros(1, 4, dtype=torch.int32)}, r"^W must be floating point, got torch\.int32$"),
        (
            {"kind": torch.tensor([2], dtype=torch.int8)},
            r"^units of kind 2 \(id\) need ref, a \(U, d\) tensor of reference vectors$",
        ),
        ({"rows": torch.tensor([[0, 1, 2]])}, r"^rows must be 1-D \(M,\), got shape \(1, 3\)$"),
        (
            {"offsets": torch.tensor([1, 3])},
            r"^offsets must start at 0 and end at M=3, got offsets\[0\]=1, offsets\[-1\]=3$",
        ),
        (
            {"offsets": torch.tensor([0, 2])},
            r"^offsets must start at 0 and end at M=3, got offsets\[0\]=0, offsets\[-1\]=2$",
        ),
        ({"rows": torch.tensor([0, 10, 2])}, r"^rows must index emb's 10 rows, got row 10$"),
        ({"rows": torch.tensor([0, -1, 2])}, r"^rows must index emb's 10 rows, got row -1$"),
    ],
    ids=[
        "emb-1d",
        "emb-numpy",
        "emb-int",
        "W-1d",
        "W-int",
        "id-without-ref",
        "rows-2d",
        "offsets-start",
        "offsets-end",
        "row-past-end",
        "row-negative",
    ],
)
def test_a_malformed_scoring_batch_is_refused_naming_the_bad_argument(
    scorer: str, change: dict[str, object], message: str
) -> None:
    """score_select and score_candidates refuse an embedding matrix, weight matrix, candidate rows or CSR
    offsets of the wrong rank, dtype or range (and id units without reference vectors) with a message
    naming the argument, its bad shape, dtype or value and what it must be (kills raise-message mutants of
    ``_check_emb``, ``_check_units``, ``_check_offsets`` and ``_check_batch``)."""
    with pytest.raises(ValueError, match=message):
        SCORERS[scorer](**{**_good(), **change})


def test_id_scores_without_similarities_are_refused() -> None:
    """strategy_scores of an id (kind 2) unit needs the similarities ``x . ref_u``; called without them it
    says so (kills raise-message mutants of ``strategy_scores``)."""
    z = torch.tensor([-1.0, 0.0, 2.0])
    assert strategy_scores(z, 0).shape == (3,)
    with pytest.raises(ValueError, match=r"^kind 2 \(id\) needs sim = x \. ref_u$"):
        strategy_scores(z, torch.tensor([0, 2, 1]))


def test_results_for_different_numbers_of_units_do_not_merge() -> None:
    """merge_topb merges results of the same units only; two results of 2 and 3 units are refused with
    both counts in the message (kills raise-message mutants of ``merge_topb``)."""
    with pytest.raises(ValueError, match=r"^cannot merge results for 2 and 3 units$"):
        merge_topb(TopB.empty(2, 4), TopB.empty(3, 4), 4)


# ------------------------------------------------------------------------------------------------ learner
def _fit_inputs(U: int = 1, L: int = 4, d: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    X = torch.from_numpy(_unit(U * L, d)).reshape(U, L, d)
    y = (torch.arange(U * L) % 2 == 0).reshape(U, L)
    return X, y, torch.ones(U, L, dtype=torch.bool)


@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, torch.float32])
def test_a_mask_that_is_not_bool_is_refused_naming_its_dtype(dtype: torch.dtype) -> None:
    """fit_logistic takes the row mask as a bool tensor only (an int or float mask is not read as 0/1);
    the message names the mask's dtype (kills raise-message mutants of ``_validate``)."""
    X, y, mask = _fit_inputs()
    with pytest.raises(ValueError, match=rf"^mask must be a bool tensor, got dtype {dtype}$"):
        fit_logistic(X, y, mask.to(dtype))


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool])
def test_a_warm_start_factor_that_is_not_floating_point_is_refused(dtype: torch.dtype) -> None:
    """A warm start whose Hessian factor has the right shape but an integer or bool dtype is refused by
    fit_logistic, naming the dtype (kills raise-message mutants of ``_validate_init``)."""
    X, y, mask = _fit_inputs(U=1, d=2)
    init = LogisticModel(W=torch.zeros(1, 2), b=torch.zeros(1), factor=torch.ones(1, 3, 3, dtype=dtype))
    with pytest.raises(ValueError, match=rf"^init\.factor must be floating point, got dtype {dtype}$"):
        fit_logistic(X, y, mask, init=init, method="newton")


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((5, 4), r"^X has 4 features but the model has d=3$"),
        ((5, 2), r"^X has 2 features but the model has d=3$"),
        ((3, 5, 3), r"^X of shape \(3, 5, 3\) does not match the model's \(U, N, d\) = \(2, N, 3\)$"),
        ((2, 5, 4), r"^X of shape \(2, 5, 4\) does not match the model's \(U, N, d\) = \(2, N, 3\)$"),
    ],
)
def test_rows_that_do_not_fit_the_model_are_refused_naming_both_shapes(
    shape: tuple[int, ...], message: str
) -> None:
    """LogisticModel.logits (and predict_proba through it) refuses shared rows with the wrong number of
    features, or per-unit rows with the wrong number of units or features, naming X's shape and the
    model's (kills raise-message mutants of ``LogisticModel.logits``)."""
    model = LogisticModel(W=torch.zeros(2, 3), b=torch.zeros(2))
    assert model.logits(torch.zeros(5, 3)).shape == (2, 5)
    with pytest.raises(ValueError, match=message):
        model.logits(torch.zeros(shape))
    with pytest.raises(ValueError, match=message):
        model.predict_proba(torch.zeros(shape))


# ------------------------------------------------------------------------------------------------ metrics
@pytest.mark.parametrize(
    ("n_found", "n_total", "message"),
    [
        (-1, 5, r"^recall: counts must be >= 0, got n_found=-1, n_total=5$"),
        (3, -1, r"^recall: counts must be >= 0, got n_found=3, n_total=-1$"),
        (6, 5, r"^recall: n_found=6 exceeds n_total=5$"),
        (
            np.array([1, 6]),
            np.array([2, 5]),
            r"^recall: n_found=array\(\[1, 6\]\) exceeds n_total=array\(\[2, 5\]\)$",
        ),
    ],
    ids=["negative-found", "negative-total", "found-exceeds", "array-exceeds"],
)
def test_impossible_recall_counts_are_refused_naming_them(
    n_found: object, n_total: object, message: str
) -> None:
    """recall refuses negative counts and more positives found than exist, quoting both counts (kills
    raise-message mutants of ``recall``)."""
    assert recall(2, 4) == 0.5
    with pytest.raises(ValueError, match=message):
        recall(n_found, n_total)


# --------------------------------------------------------------------------------------------------- pool
@pytest.mark.parametrize(
    ("D_shape", "I_shape", "message"),
    [
        ((3, 2), (3, 2), r"^neighbour rows D \(3, 2\) and I \(3, 2\) must both be \(2, k\) for 2 ids$"),
        ((2, 2), (2, 1), r"^neighbour rows D \(2, 2\) and I \(2, 1\) must both be \(2, k\) for 2 ids$"),
        ((2, 5), (2, 4, 1), r"^neighbour rows D \(2, 3\) and I \(2, 3, 1\) must both be \(2, k\) for 2 ids$"),
    ],
    ids=["too-many-rows", "widths-differ", "I-3d"],
)
def test_neighbour_rows_that_do_not_match_the_ids_are_refused(
    D_shape: tuple[int, ...], I_shape: tuple[int, ...], message: str
) -> None:
    """NeighborCache.add stores one row of neighbours per id: rows for a different number of ids, D and I
    of different widths (after cutting them to k), or a 3-D I are refused with both shapes and the expected one (kills raise-message mutants
    of ``NeighborCache.add``)."""
    cache = NeighborCache(3)
    ids = np.array([7, 9], dtype=np.int64)
    with pytest.raises(ValueError, match=message):
        cache.add(ids, np.zeros(D_shape, dtype=np.float32), np.zeros(I_shape, dtype=np.int64))
    assert len(cache) == 0
