"""Tests that assert the whole error message of compute-module ``raise`` statements that no other test
asserted (strategies, learner, metrics, scoring, index shards).

Each test feeds the public function the smallest bad input that reaches one check and compares the complete
message, so a reworded, truncated or emptied message fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from seals_gpu.errors import ConfigError, IndexError_
from seals_gpu.index.shard import IndexShard, train_ivfpq
from seals_gpu.learner import LogisticModel, fit_logistic, fit_logistic_units
from seals_gpu.metrics import average_precision
from seals_gpu.scoring import score_all, score_select
from seals_gpu.strategies import select_topk, select_topk_segmented

from .conftest import unit_rows


def _exact(message: str) -> str:
    """A regex that matches ``message`` and nothing else."""
    return "^" + re.escape(message) + "$"


# ------------------------------------------------------------------------------------------------ strategies
@pytest.mark.parametrize("b", [-1, 1.5, True], ids=["negative", "float", "bool"])
def test_a_bad_selection_size_is_refused_naming_the_value(b: object) -> None:
    """A selection size that is not an integer >= 0 is refused in one line naming the value, by select_topk
    and select_topk_segmented alike (covers ``strategies._check_b``)."""
    scores, ids = torch.tensor([0.5, 0.2]), torch.tensor([1, 2])
    message = _exact(f"b={b!r}: the number to select must be an integer >= 0")
    with pytest.raises(ConfigError, match=message):
        select_topk(scores, ids, b)
    with pytest.raises(ConfigError, match=message):
        select_topk_segmented(scores, ids, torch.tensor([0, 2]), b)


# --------------------------------------------------------------------------------------------------- learner
def _fit_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One unit of 4 labelled rows with d=2, both classes present."""
    X = torch.from_numpy(unit_rows(4, 2)).reshape(1, 4, 2)
    y = torch.tensor([[True, False, True, False]])
    return X, y, torch.ones(1, 4, dtype=torch.bool)


def _units() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Two ragged units (3 and 2 rows, d=2) for fit_logistic_units."""
    return [unit_rows(3, 2), unit_rows(2, 2, seed=1)], [np.array([1, 0, 1]), np.array([0, 1])]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"C": 0}, "C=0: the inverse regularisation strength must be a finite number > 0"),
        ({"C": float("nan")}, "C=nan: the inverse regularisation strength must be a finite number > 0"),
        ({"C": "1"}, "C='1': the inverse regularisation strength must be a finite number > 0"),
        ({"tol": -1}, "tol=-1: must be a finite number > 0"),
        ({"tol": float("inf")}, "tol=inf: must be a finite number > 0"),
        ({"tol": True}, "tol=True: must be a finite number > 0"),
    ],
    ids=["C-zero", "C-nan", "C-str", "tol-negative", "tol-inf", "tol-bool"],
)
def test_bad_solver_settings_are_refused_naming_the_setting(kwargs: dict[str, object], message: str) -> None:
    """A regularisation strength or tolerance that is not a finite number > 0 is refused by fit_logistic and
    fit_logistic_units in one line naming the setting and its value (covers ``learner._check_config``)."""
    with pytest.raises(ConfigError, match=_exact(message)):
        fit_logistic(*_fit_inputs(), **kwargs)
    with pytest.raises(ConfigError, match=_exact(message)):
        fit_logistic_units(*_units(), **kwargs)


def test_padded_inputs_of_the_wrong_type_are_refused_naming_it() -> None:
    """fit_logistic refuses features that are not a torch tensor, features that are not floating point and
    complex labels, naming the type or dtype it got (covers ``learner._validate``)."""
    X, y, mask = _fit_inputs()
    with pytest.raises(ValueError, match=_exact("X must be a torch.Tensor of shape (U, L, d), got ndarray")):
        fit_logistic(X.numpy(), y, mask)
    with pytest.raises(ValueError, match=_exact("X must be a floating-point tensor, got dtype torch.int64")):
        fit_logistic(X.long(), y, mask)
    with pytest.raises(ValueError, match=_exact("y must hold 0/1 labels, got dtype torch.complex64")):
        fit_logistic(X, y.to(torch.complex64), mask)


def test_a_bad_warm_start_is_refused_naming_what_is_wrong() -> None:
    """A warm start with non-finite weights, or with a Hessian factor of the wrong shape, is refused by
    fit_logistic with the factor's shape and the expected one (covers ``learner._validate_init``)."""
    X, y, mask = _fit_inputs()
    inf_start = LogisticModel(W=torch.full((1, 2), float("inf")), b=torch.zeros(1))
    with pytest.raises(ValueError, match=_exact("init has non-finite weights or intercepts")):
        fit_logistic(X, y, mask, init=inf_start)
    flat_factor = LogisticModel(W=torch.zeros(1, 2), b=torch.zeros(1), factor=torch.eye(3))
    with pytest.raises(ValueError, match=_exact("init.factor has shape (3, 3), expected (1, 3, 3)")):
        fit_logistic(X, y, mask, init=flat_factor, method="newton")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"Xs": lambda Xs: [Xs[0], torch.from_numpy(Xs[1])]},
            "Xs[1] must be a numpy array of shape (n, d), got Tensor",
        ),
        ({"Xs": lambda Xs: [x[:, :0] for x in Xs]}, "Xs[0] has d=0 features"),
        (
            {"Xs": lambda Xs: [Xs[0], np.zeros((2, 3), np.float32)]},
            "Xs[1] has 3 features but Xs[0] has 2: every unit needs the same d",
        ),
        ({"ys": lambda ys: [ys[0], list(ys[1])]}, "ys[1] must be a numpy array of shape (2,), got list"),
    ],
    ids=["X-tensor", "d-zero", "d-differs", "y-list"],
)
def test_ragged_units_of_the_wrong_form_are_refused_naming_the_unit(
    change: dict[str, object], message: str
) -> None:
    """fit_logistic_units refuses a unit whose rows or labels are not numpy arrays, rows with no features,
    or units with different feature counts, in one line naming the unit and what it got (covers
    ``learner._validate_units``)."""
    Xs, ys = _units()
    if "Xs" in change:
        Xs = change["Xs"](Xs)  # type: ignore[operator]
    if "ys" in change:
        ys = change["ys"](ys)  # type: ignore[operator]
    with pytest.raises(ValueError, match=_exact(message)):
        fit_logistic_units(Xs, ys)


def test_features_whose_products_overflow_are_refused_with_the_largest_value() -> None:
    """Finite rows too large for their dtype, whose products with the weights overflow, are refused by
    fit_logistic_units and fit_logistic (L-BFGS) naming the unit, the dtype and the largest value, with the
    fix (covers ``learner._solve_units``)."""
    X = np.full((3, 1), 3e38, np.float32)
    y = np.zeros(3, dtype=bool)
    message = _exact(
        "unit 0: products of its rows with the weights overflow float32 (largest |value| 3e+38); "
        "scale the features down"
    )
    with pytest.raises(ValueError, match=message):
        fit_logistic_units([X], [y])
    with pytest.raises(ValueError, match=message):
        fit_logistic(
            torch.from_numpy(X)[None],
            torch.from_numpy(y)[None],
            torch.ones(1, 3, dtype=torch.bool),
            method="lbfgs",
        )


# --------------------------------------------------------------------------------------------------- metrics
@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_scores_are_refused_naming_the_metric(bad: float) -> None:
    """average_precision refuses NaN or infinite scores in one line naming the metric (covers
    ``metrics._check_inputs``)."""
    with pytest.raises(ValueError, match=_exact("average_precision: scores contain NaN or infinite values")):
        average_precision(np.array([0, 1]), np.array([0.5, bad]))


# --------------------------------------------------------------------------------------------------- scoring
def _batch() -> dict[str, object]:
    """A valid score_select batch: 10 embeddings of d=4, one maxent unit with 3 candidates."""
    rows = torch.tensor([0, 1, 2])
    return {
        "emb": torch.from_numpy(unit_rows(10, 4)),
        "rows": rows,
        "ids": rows + 100,
        "offsets": torch.tensor([0, 3]),
        "W": torch.zeros(1, 4),
        "bias": torch.zeros(1),
        "kind": torch.zeros(1, dtype=torch.int8),
        "ref": None,
        "beta": 1.0,
        "b": 2,
    }


def test_the_valid_scoring_batch_of_these_tests_is_accepted() -> None:
    """The baseline batch that the scoring error tests spoil one argument of is itself scored, so each
    refusal is due to the one spoiled argument (guards the tests of this module)."""
    assert score_select(**_batch(), backend="torch").ids.shape == (1, 2)


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"b": 0}, ConfigError, "b=0; the number of items selected per unit must be an integer >= 1"),
        ({"b": 2.0}, ConfigError, "b=2.0; the number of items selected per unit must be an integer >= 1"),
        ({"W": torch.zeros(1, 3)}, ValueError, "W has dimension 3 but the embeddings have 4"),
        (
            {"kind": torch.zeros(1)},
            ValueError,
            "kind must be an integer tensor (int8), got torch.float32",
        ),
        (
            {"kind": torch.tensor([5], dtype=torch.int8)},
            ValueError,
            "kind values [5] are not strategy kinds; use 0 (maxent), 1 (mlp) or 2 (id)",
        ),
        (
            {"beta": -1.0},
            ConfigError,
            "beta=-1.0; the id-strategy exponent must be a finite number >= 0",
        ),
        (
            {"offsets": torch.tensor([0, 1, 3])},
            ValueError,
            "offsets must have shape (2,) (U+1 for U=1 units), got (3,)",
        ),
        ({"offsets": torch.tensor([0.0, 3.0])}, ValueError, "offsets must be int64, got torch.float32"),
        (
            {
                "offsets": torch.tensor([0, 3, 2, 3]),
                "W": torch.zeros(3, 4),
                "bias": torch.zeros(3),
                "kind": torch.zeros(3, dtype=torch.int8),
            },
            ValueError,
            "offsets must be non-decreasing: offsets[1]=3 > offsets[2]=2",
        ),
        (
            {"ids": torch.tensor([100, 101])},
            ValueError,
            "ids must have the shape of rows (3,), got (2,)",
        ),
    ],
    ids=[
        "b-zero",
        "b-float",
        "W-dim",
        "kind-float",
        "kind-unknown",
        "beta-negative",
        "offsets-shape",
        "offsets-float",
        "offsets-decreasing",
        "ids-shape",
    ],
)
def test_a_malformed_selection_batch_is_refused_naming_the_argument(
    change: dict[str, object], error: type[Exception], message: str
) -> None:
    """score_select refuses a bad selection size, model tensors, strategy kinds, exponent, CSR offsets or
    candidate ids in one line naming the argument and its bad value (covers ``scoring._check_b``,
    ``scoring._check_units``, ``scoring._check_offsets`` and ``scoring._check_batch``)."""
    with pytest.raises(error, match=_exact(message)):
        score_select(**{**_batch(), **change}, backend="torch")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backend": "gpu"}, "backend='gpu' is not one of ['auto', 'torch', 'cuda']"),
        ({"backend": "torch", "chunk_rows": 0}, "chunk_rows=0; must be >= 1"),
    ],
    ids=["backend", "chunk-rows"],
)
def test_bad_scoring_options_are_refused_naming_the_option(kwargs: dict[str, object], message: str) -> None:
    """score_select refuses an unknown backend (listing the known ones) and a chunk size below 1, naming
    the option and its value (covers ``scoring._check_backend`` and ``scoring.score_select``)."""
    with pytest.raises(ConfigError, match=_exact(message)):
        score_select(**_batch(), **kwargs)


def test_an_exclusion_list_of_the_wrong_length_is_refused_with_both_counts() -> None:
    """score_all takes one excluded-id array per unit; a list of another length is refused naming the
    number of units and the list's length (covers ``scoring._Exclusion.__init__``)."""
    ids = np.arange(5, dtype=np.int64)
    W, bias, kind = torch.zeros(2, 4), torch.zeros(2), torch.zeros(2, dtype=torch.int8)
    with pytest.raises(ValueError, match=_exact("exclude must hold one id array per unit (2), got 1")):
        score_all([(ids, unit_rows(5, 4))], W, bias, kind, None, 1.0, 3, exclude=[ids])


# ----------------------------------------------------------------------------------------------------- index
@pytest.fixture(scope="module")
def ivfpq_shard() -> IndexShard:
    """A 3-row IVF-PQ shard (d=4, one list, one sub-quantizer) trained on 256 unit vectors."""
    sample = unit_rows(256, 4)
    trained = train_ivfpq(sample, nlist=1, pq_m=1)
    return IndexShard.build(np.arange(3), sample[:3], kind="ivfpq", trained=trained)


def test_an_allowed_row_mask_of_the_wrong_length_is_refused(ivfpq_shard: IndexShard) -> None:
    """IndexShard.restrict_search takes one allowed flag per row of the shard; a mask of another length is
    refused with both lengths (covers ``IndexShard.restrict_search``)."""
    with pytest.raises(IndexError_, match=_exact("allowed rows must have shape (3,), got (2,)")):
        ivfpq_shard.restrict_search(np.ones(2, dtype=bool))


def test_a_faiss_index_that_disagrees_with_the_ids_is_refused_on_load(
    ivfpq_shard: IndexShard, tmp_path: Path
) -> None:
    """A saved IVF-PQ shard whose ids.npy (and vectors) were replaced by fewer rows than its FAISS index
    holds is refused on load with both counts and the fix (covers ``IndexShard.load``)."""
    folder = tmp_path / "shard"
    ivfpq_shard.save(folder)
    np.save(folder / "ids.npy", np.arange(2, dtype=np.int64))
    np.save(folder / "vectors.npy", np.asarray(ivfpq_shard.vectors[:2], dtype=np.float32))
    path = folder / "index.faiss"
    with pytest.raises(IndexError_, match=_exact(f"{path}: holds 3 vectors but ids.npy has 2; rebuild")):
        IndexShard.load(folder, kind="ivfpq")
