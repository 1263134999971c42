"""Properties a user relies on that `make mutate` (mutmut over the core modules, issue #17) found untested.

Each test states one property of the public behaviour; the mutants it kills are named in its docstring
(mutmut's names, without the ``seals_gpu.`` prefix). Mutants that no test can kill because they do not
change behaviour are listed, with the reason, in ``benchmarks/mutation_equivalent.json`` and TESTING.md.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from seals_gpu.atomic import _HOST, check_writable, leftovers, write_json
from seals_gpu.errors import ConfigError, SealsError
from seals_gpu.index.merge import TIE_EPS, merge_neighbors, rescorer, sort_neighbors
from seals_gpu.metrics import average_precision, average_precision_many, recall
from seals_gpu.strategies import (
    STRATEGIES,
    binary_entropy,
    check_strategies,
    id_scores,
    knn_density,
    linear_density,
    pairwise_density,
    random_scores,
    select_topk,
)

# ------------------------------------------------------------------------------------------- metrics


def test_recall_with_one_positive_is_zero_or_one():
    """A concept with a single positive has recall 0 or 1, not NaN (metrics.x_recall__mutmut_37)."""
    assert recall(1, 1) == 1.0
    assert recall(0, 1) == 0.0
    np.testing.assert_array_equal(recall(np.array([0, 1, 1]), np.array([1, 1, 2])), [0.0, 1.0, 0.5])


def test_average_precision_many_errors_name_the_function():
    """A caller of the batched AP learns which function refused what (metrics.x_average_precision_many__mutmut_5,
    _11, _12)."""
    with pytest.raises(
        ValueError, match=r"^average_precision_many: y_true \(3,\) and scores \(3,\) must both"
    ):
        average_precision_many(np.ones(3), np.ones(3))


def test_metrics_take_tensors_that_require_grad_and_duck_arrays():
    """Scores straight from a model (a tensor that requires grad) are detached, not refused; an array-like
    that only has a ``cpu`` attribute is read as an array (metrics.x__to_numpy__mutmut_1, _2, _6-8, _12,
    _13)."""
    y = torch.tensor([1, 0, 1, 0])
    s = torch.tensor([0.9, 0.8, 0.7, 0.1], requires_grad=True)
    assert average_precision(y, s) == pytest.approx((1 + 2 / 3) / 2)

    class Scores:
        cpu = "not a method"

        def __array__(self, dtype=None, copy=None):
            return np.array([0.9, 0.8, 0.7, 0.1])

    assert average_precision([1, 0, 1, 0], Scores()) == pytest.approx((1 + 2 / 3) / 2)


def test_metrics_input_errors_name_the_function_the_expected_shape_and_the_bad_value():
    """Each ValueError says which function, which shape it wanted, which dtype or label was wrong
    (metrics.x__check_inputs__mutmut_8-16, _25, _29, _37-43, _49, _57; x_average_precision__mutmut_5, _11,
    _12)."""
    with pytest.raises(
        ValueError, match=r"^average_precision: y_true \(3,\) and scores \(2,\) must both have shape \(N,\)$"
    ):
        average_precision([0, 1, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match=r"must both have shape \(U, N\)$"):
        average_precision_many(np.ones((2, 3)), np.ones((3, 2)))
    with pytest.raises(ValueError, match="^average_precision: y_true must hold 0/1 labels, got dtype <U1$"):
        average_precision(np.array(["a", "b"]), [0.1, 0.2])
    with pytest.raises(
        ValueError, match=r"^average_precision: y_true must hold 0/1 labels, found (np\.int64\(2\)|2)$"
    ):
        average_precision([1, 0, 2], [0.3, 0.2, 0.1])
    with pytest.raises(ValueError, match="^average_precision: scores must be numeric, got dtype <U3$"):
        average_precision([1, 0], np.array(["0.5", "0.1"]))


def test_metrics_accept_float32_labels_and_integer_scores():
    """Labels may be any 0/1 numeric dtype and scores any numeric dtype, integers included
    (metrics.x__check_inputs__mutmut_26, _53-56)."""
    y = np.array([1, 0, 1, 0], dtype=np.float32)
    assert average_precision(y, np.array([9, 8, 7, 1])) == pytest.approx((1 + 2 / 3) / 2)


# ---------------------------------------------------------------------------------------- strategies


def test_check_strategies_names_a_non_string_and_lists_the_valid_names_when_empty():
    """The ConfigError says what was wrong: the non-string value, or (for no name at all) the valid names
    spelled out (strategies.x_check_strategies__mutmut_6, _18)."""
    with pytest.raises(ConfigError, match=r"^strategy names must be strings, got 3$"):
        check_strategies(["maxent", 3])
    with pytest.raises(
        ConfigError, match="^no strategy given; valid strategies: " + ", ".join(sorted(STRATEGIES)) + "$"
    ):
        check_strategies([])


def test_id_scores_default_beta_is_one_and_scores_keep_the_probabilities_dtype():
    """``id`` = entropy * density ** 1 by default; the density enters in p's dtype, so float64 probabilities
    give exact float64 scores and float32 ones float32 scores (strategies.x_id_scores__mutmut_1, _12, _14)."""
    p = torch.tensor([0.1, 0.5, 0.7], dtype=torch.float64)
    dens = torch.tensor([0.3, 0.1 + 1e-12, 0.9], dtype=torch.float64)  # not representable in float32
    got = id_scores(p, dens)
    assert got.dtype == torch.float64
    assert torch.equal(got, binary_entropy(p) * dens)
    p32 = p.to(torch.float32)
    assert id_scores(p32, dens).dtype == torch.float32


def test_id_scores_integer_density_is_neither_refused_nor_rounded():
    """An integer density (e.g. a count) is used as is, also next to half-precision probabilities (2049 is
    not a float16) (strategies.x_id_scores__mutmut_13, _15)."""
    p = torch.tensor([0.25, 0.5], dtype=torch.float16)
    got = id_scores(p, torch.tensor([2049, 3]))
    want = binary_entropy(p).to(torch.float32) * torch.tensor([2049.0, 3.0])
    torch.testing.assert_close(got.to(torch.float32), want, rtol=0, atol=0)


@pytest.mark.parametrize("beta", [float("nan"), float("inf"), True, "1", -0.5])
def test_id_scores_refuses_a_beta_that_is_not_a_finite_number_at_least_zero(beta):
    """(strategies.x_id_scores__mutmut_3, _4)"""
    with pytest.raises(ConfigError, match=r"^beta=.*: the density exponent must be a finite number >= 0$"):
        id_scores(torch.tensor([0.5]), torch.tensor([1.0]), beta=beta)


def test_linear_density_shape_and_dtype_contract():
    """A 1-D X is refused (not silently dotted); float64 means work with float32 rows, in the rows' dtype;
    a unit-count mismatch names both counts (strategies.x_linear_density__mutmut_2, _14, _18, _26-28)."""
    with pytest.raises(
        ValueError,
        match=r"^linear_density: X \(4,\) must be \(N, d\) or \(U, N, d\) and ref_mean \(4,\) must be",
    ):
        linear_density(torch.ones(4), torch.ones(4))
    X = torch.nn.functional.normalize(torch.randn(5, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    ref = X.mean(0).to(torch.float64)
    got = linear_density(X, ref)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, X @ ref.to(torch.float32))
    with pytest.raises(ValueError, match="^linear_density: X has 2 units but ref_mean has 3$"):
        linear_density(torch.ones(2, 5, 4), torch.ones(3, 4))


def test_knn_density_averages_the_valid_neighbours_of_every_point_in_a_batch():
    """Per point the mean over its valid neighbours only (one valid neighbour: that similarity; none: 0), for
    (U, N, k) batches too; a mask of the wrong shape is refused naming both shapes
    (strategies.x_knn_density__mutmut_3, _6-8, _10, _23, _26, _27, _36, _40)."""
    sims = torch.tensor(
        [[[0.9, 0.5, 0.1], [0.4, 0.2, 0.0]], [[0.3, 0.3, 0.6], [1.0, -1.0, 0.5]]], dtype=torch.float64
    )
    valid = torch.tensor(
        [[[True, True, False], [False, True, False]], [[False, False, False], [True, True, True]]]
    )
    want = torch.tensor([[0.7, 0.2], [0.0, 0.5 / 3]], dtype=torch.float64)
    torch.testing.assert_close(knn_density(sims, valid), want)
    torch.testing.assert_close(knn_density(sims), sims.mean(dim=2))
    with pytest.raises(ValueError, match=r"^knn_density: valid \(2, 3\) must match sims \(2, 2, 3\)$"):
        knn_density(sims, valid[0])


def test_pairwise_density_validates_its_arguments_with_clear_errors():
    """Wrong shapes are a ValueError naming both shapes (not a matmul error), an empty R says so, and chunk
    must be an int >= 1, 1 included (strategies.x_pairwise_density__mutmut_2, _3, _11-13, _18, _19, _21,
    _22, _24-26)."""
    with pytest.raises(
        ValueError, match=r"^pairwise_density: X \(3, 4\) and R \(5, 2\) must be \(N, d\) and \(M, d\)$"
    ):
        pairwise_density(torch.ones(3, 4), torch.ones(5, 2))
    with pytest.raises(ValueError, match=r"X \(4,\) and R \(5, 4\)"):
        pairwise_density(torch.ones(4), torch.ones(5, 4))
    with pytest.raises(ValueError, match="^pairwise_density: the reference set R is empty$"):
        pairwise_density(torch.ones(3, 4), torch.ones(0, 4))
    for bad in (0, True, 2.0):
        with pytest.raises(ConfigError, match=f"^chunk={bad!r}: must be an integer >= 1$"):
            pairwise_density(torch.ones(3, 4), torch.ones(5, 4), chunk=bad)
    X = torch.nn.functional.normalize(torch.randn(7, 4, generator=torch.Generator().manual_seed(1)), dim=1)
    torch.testing.assert_close(pairwise_density(X, X, chunk=1), linear_density(X, X.mean(0)))


def test_pairwise_density_takes_a_reference_set_in_another_dtype():
    """float64 reference rows with float32 points: the result is in the points' dtype
    (strategies.x_pairwise_density__mutmut_29)."""
    X = torch.nn.functional.normalize(torch.randn(6, 3, generator=torch.Generator().manual_seed(2)), dim=1)
    got = pairwise_density(X, X.to(torch.float64))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, linear_density(X, X.mean(0)))


def test_pairwise_density_sums_in_float64():
    """The blocks' sums accumulate in float64 whatever the points' dtype: float64 points get float64
    accuracy, and float32 products that cancel (1e8 + 1 - 1e8) keep the 1
    (strategies.x_pairwise_density__mutmut_34, _37, _62, _64)."""
    X = torch.nn.functional.normalize(
        torch.randn(5, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64), dim=1
    )
    R = torch.nn.functional.normalize(
        torch.randn(9, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64), dim=1
    )
    torch.testing.assert_close(pairwise_density(X, R), (X @ R.T).mean(dim=1), rtol=0, atol=1e-15)
    got = pairwise_density(torch.ones(1, 1), torch.tensor([[1e8], [1.0], [-1e8]]))
    assert got.dtype == torch.float32 and got.item() == pytest.approx(1 / 3, rel=1e-6)


_M64 = (1 << 64) - 1


def _mix(x: int) -> int:
    """splitmix64's finaliser, written out on Python ints (the published constants)."""
    x &= _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _score(i: int, seed: int, unit: int, round_: int) -> float:
    g = 0x9E3779B97F4A7C15
    key = _mix(seed + g)
    key = _mix((key ^ (unit & _M64)) + g)
    key = _mix((key ^ (round_ & _M64)) + g)
    return (_mix(i + key) >> 11) / float(1 << 53)


def test_random_scores_are_the_documented_splitmix64_chain_so_seeded_runs_reproduce():
    """Random selections of a seeded run depend on these exact scores: splitmix64(id + key) with key the
    splitmix64 chain over (seed, unit, round), whatever the ids' integer dtype
    (strategies.x__mix64_int__mutmut_*, x__random_key__mutmut_12-22, x_random_scores__mutmut_20)."""
    ids = [0, 1, -1, 12345, 2**40 + 7, 2**63 - 1]
    for seed, unit, round_ in ((7, 3, 2), (0, 0, 0), (-5, 2**40, 9)):
        got = random_scores(torch.tensor(ids), seed, unit, round_)
        assert got.tolist() == [_score(i, seed, unit, round_) for i in ids]
    small = [0, 1, -1, 12345, 2**31 - 1]
    assert random_scores(torch.tensor(small, dtype=torch.int32), 7, 3, 2).tolist() == [
        _score(i, 7, 3, 2) for i in small
    ]


@pytest.mark.parametrize(
    ("kw", "msg"), [({"seed": "1"}, "seed='1'"), ({"unit": 1.5}, "unit=1.5"), ({"round": True}, "round=True")]
)
def test_random_scores_refuses_non_integer_seed_unit_round_naming_it(kw, msg):
    """(strategies.x__random_key__mutmut_1-9)"""
    args = {"seed": 1, "unit": 2, "round": 3, **kw}
    with pytest.raises(ConfigError, match=f"^random_scores: {re.escape(msg)} must be an integer$"):
        random_scores(torch.arange(3), **args)


def test_random_scores_refuses_bool_ids():
    """(strategies.x_random_scores__mutmut_13)"""
    with pytest.raises(ValueError, match="^random_scores: ids must be integers, got dtype torch.bool$"):
        random_scores(torch.tensor([True, False]), 1, 2, 3)


def test_select_topk_refuses_2d_input_and_always_returns_int64_ids():
    """(strategies.x_select_topk__mutmut_3, _7-9, _11)"""
    with pytest.raises(
        ValueError, match=r"^select_topk: scores \(2, 2\) and ids \(2, 2\) must be equal-length 1-D$"
    ):
        select_topk(torch.rand(2, 2), torch.arange(4).reshape(2, 2), 1)
    got = select_topk(torch.tensor([0.1, 0.9, 0.5]), torch.tensor([7, 3, 5], dtype=torch.int32), 2)
    assert got.dtype == torch.int64 and got.tolist() == [3, 5]


# --------------------------------------------------------------------------------------------- merge


def test_merge_neighbors_refuses_no_parts_and_parts_of_different_shapes_naming_them():
    """(index.merge.x_merge_neighbors__mutmut_2-5, _10, _14, _15)"""
    with pytest.raises(ValueError, match=r"^merge_neighbors needs at least one \(D, I\) pair$"):
        merge_neighbors([], 3)
    a = (np.zeros((2, 3), np.float32), np.zeros((2, 3), np.int64))
    b = (np.zeros((2, 2), np.float32), np.zeros((2, 3), np.int64))  # same queries, D and I disagree
    with pytest.raises(ValueError, match=r"^shard results disagree in shape: \[\(2, 3\), \(2, 3\)\]$"):
        merge_neighbors([a, b], 2)


def test_merge_neighbors_keeps_large_ids_exact_whatever_the_parts_integer_dtype():
    """Global int64 ids near 2**62 come out exactly, also when one shard hands them over as uint64 (numpy
    would otherwise join int64 and uint64 into float64) (index.merge.x_merge_neighbors__mutmut_33, _35)."""
    big = 2**62 + 1
    p1 = (np.array([[0.9, 0.1]], np.float32), np.array([[big, big + 2]], np.int64))
    p2 = (np.array([[0.5]], np.float32), np.array([[big + 4]], np.uint64))
    D, I = merge_neighbors([p1, p2], 3)
    assert I.dtype == np.int64 and I.tolist() == [[big, big + 4, big + 2]]


def test_merge_neighbors_with_rescore_warns_nothing_when_a_row_has_fewer_than_k_candidates():
    """Shards may return fewer than k real neighbours (padding ``-inf``); merging such rows with a rescore is
    silent, no numpy RuntimeWarning in the user's log (index.merge.x_merge_neighbors__mutmut_57)."""
    p1 = (np.array([[0.9, -np.inf], [0.8, 0.7]], np.float32), np.array([[1, -1], [2, 3]], np.int64))
    p2 = (np.array([[-np.inf], [0.6]], np.float32), np.array([[-1], [4]], np.int64))

    def rescore(rows, ids):  # never needed: no row has a near tie at its k-th place
        raise AssertionError("no rescore expected")

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        D, I = merge_neighbors([p1, p2], 2, rescore)
    assert I.tolist() == [[1, -1], [2, 3]]
    assert D[0, 1] == -np.inf and D[1].tolist() == [np.float32(0.8), np.float32(0.7)]


def test_merge_neighbors_rescores_a_near_tie_in_a_row_that_also_has_missing_slots():
    """A row whose k-th place is a near tie is re-scored in float64 also when some shard padded it with
    missing entries: the missing slots stay missing and the tie is decided on the exact scores, through the
    package's own rescorer (index.merge.x_merge_neighbors__mutmut_71, _76)."""
    rng = np.random.default_rng(8)
    d = 8
    q = rng.normal(size=(1, d)).astype(np.float32)
    q /= np.linalg.norm(q)
    other = rng.normal(size=d)
    other -= (other @ q[0]) * q[0]
    other /= np.linalg.norm(other)
    vecs = {
        i: (s * q[0] + np.sqrt(1 - s * s) * other).astype(np.float32)
        for i, s in ((10, 0.9), (11, 0.5), (12, 0.5 + 2e-7))
    }
    exact = {i: float(q[0].astype(np.float64) @ v.astype(np.float64)) for i, v in vecs.items()}
    assert exact[12] > exact[11] and exact[12] - exact[11] < TIE_EPS
    # shard A's float32 similarity put 11 a hair ahead; both shards padded their row with missing slots
    part_a = (np.array([[exact[11] + 1e-6, -np.inf]], np.float32), np.array([[11, -1]], np.int64))
    part_b = (
        np.array([[exact[10], exact[12] - 1e-7, -np.inf]], np.float32),
        np.array([[10, 12, 7]], np.int64),
    )
    D, I = merge_neighbors(
        [part_a, part_b], 2, rescorer(q, lambda ids: np.stack([vecs[int(i)] for i in ids]))
    )
    assert I.tolist() == [[10, 12]]
    assert D[0].tolist() == [np.float32(exact[10]), np.float32(exact[12])]


def test_sort_neighbors_keeps_each_id_once_in_every_row_and_pads_missing_slots():
    """Every row keeps one entry per id (its best), whichever id repeats (not only the smallest) and in any
    row (not only the first), also in a row of one id repeated and in two-column input; the rest is
    padded with D = -inf, I = -1 up to k; D comes back as float32 and I as int64
    (index.merge.x_sort_neighbors__mutmut_63, _70-73, _80-84, _145, _148, _157, _158, _174, _175)."""
    f = np.float32
    D = np.array([[0.9, 0.8, 0.7, 0.6], [0.2, 0.9, 0.4, 0.3]], np.float32)
    Ds, Is = sort_neighbors(D, np.array([[1, 2, 3, 4], [3, 9, 9, 8]]), 5)
    assert Ds.dtype == np.float32 and Is.dtype == np.int64
    assert Is.tolist() == [[1, 2, 3, 4, -1], [9, 8, 3, -1, -1]]
    assert Ds.tolist() == [
        [f(0.9), f(0.8), f(0.7), f(0.6), -np.inf],
        [f(0.9), f(0.3), f(0.2), -np.inf, -np.inf],
    ]
    Ds, Is = sort_neighbors(np.array([[0.1, 0.5, 0.3, 0.2]], np.float32), np.array([[6, 6, 6, 6]]), 3)
    assert Is.tolist() == [[6, -1, -1]] and Ds.tolist() == [[f(0.5), -np.inf, -np.inf]]
    Ds, Is = sort_neighbors(np.array([[0.4, 0.6], [0.5, -np.inf]]), np.array([[7, 7], [2, 5]]), 2)
    assert Is.tolist() == [[7, -1], [2, -1]] and Ds.tolist() == [[f(0.6), -np.inf], [f(0.5), -np.inf]]


def test_sort_neighbors_orders_by_the_float32_similarity_it_returns_then_by_id():
    """Similarities given in float64 are ranked as the float32 values returned: two that round to the same
    float32 are a tie, broken by the lower id, so the output is ordered as documented
    (index.merge.x_sort_neighbors__mutmut_3, _5)."""
    D = np.array([[0.5, 0.5 + 1e-12, 0.25]], np.float64)
    Ds, Is = sort_neighbors(D, np.array([[3, 7, 1]]), 3)
    assert Is.tolist() == [[3, 7, 1]]
    assert Ds[0, 0] == Ds[0, 1] == np.float32(0.5)


# -------------------------------------------------------------------------------------------- atomic


def test_write_json_writes_numpy_values_and_paths_as_plain_json(tmp_path):
    """numpy integers, floats and arrays and Paths become JSON numbers, lists and strings, keys sorted, one
    trailing newline; anything else is a TypeError naming its type, and the target is left untouched
    (atomic.x__json_default__mutmut_1-5, x_write_json)."""
    out = tmp_path / "o.json"
    write_json(out, {"b": np.int64(3), "a": np.float32(0.5), "c": np.arange(3), "d": Path("x/y")})
    text = out.read_text()
    assert json.loads(text) == {"a": 0.5, "b": 3, "c": [0, 1, 2], "d": "x/y"}
    assert text.endswith("}\n") and text.index('"a"') < text.index('"b"')
    with pytest.raises(TypeError, match="^not JSON-serialisable: object$"):
        write_json(out, {"x": object()})
    assert json.loads(out.read_text())["b"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["o.json"]  # no temporary left behind


def test_leftovers_never_include_a_live_process_temporaries(tmp_path):
    """A temporary of this process or of another live process (here the parent) is never a leftover; one of a
    dead process is (atomic.x__alive__mutmut_2, _4)."""
    names = [f".out.{_HOST}.{pid}.abcdefgh.tmp" for pid in (os.getpid(), os.getppid())]
    for n in names:
        (tmp_path / n).write_text("x")
    assert leftovers(tmp_path) == []
    dead = 2**22 + 12345  # above the default pid_max, so no such process
    (tmp_path / f".out.{_HOST}.{dead}.abcdefgh.tmp").write_text("x")
    assert [p.name for p in leftovers(tmp_path)] == [f".out.{_HOST}.{dead}.abcdefgh.tmp"]


def test_check_writable_refuses_a_folder_the_process_may_not_write(tmp_path, monkeypatch):
    """A folder without write (or search) permission is refused naming it (the suite may run as root, for whom
    every folder is writable, so the permission check itself is simulated) (atomic.x_check_writable__mutmut_15,
    _16)."""
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: real_access(p, mode) and not mode & os.W_OK)
    with pytest.raises(
        SealsError,
        match=rf"^cannot write {re.escape(str(tmp_path))}/a/b \({re.escape(str(tmp_path))} is not writable\); pick an",
    ):
        check_writable(tmp_path / "a" / "b")


def test_leftovers_never_include_a_temporary_of_another_users_live_process(tmp_path, monkeypatch):
    """A process this user may not signal (kill -0 answers EPERM) is alive: its temporary stays. The suite may
    run as root, who may signal anyone, so EPERM is simulated (atomic.x__alive__mutmut_4)."""
    other = 2**22 + 54321
    name = f".out.{_HOST}.{other}.abcdefgh.tmp"
    (tmp_path / name).write_text("x")

    def kill(pid: int, sig: int) -> None:
        assert sig == 0  # a probe only
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "kill", kill)
    assert leftovers(tmp_path) == []
