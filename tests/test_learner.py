"""Batched logistic regression: agreement with scikit-learn, warm starts, masking, degenerate units."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.linear_model import LogisticRegression

import seals_gpu.learner as learner_mod
from seals_gpu.errors import ConfigError
from seals_gpu.learner import LogisticModel, fit_logistic


def _unit_rows(rng: np.random.Generator, n: int, d: int, n_pos: int, separable: bool) -> tuple:
    """Unit-length rows with ``n_pos`` positives; shifted positives, or a hyperplane split if separable."""
    x = rng.standard_normal((n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    lab = np.zeros(n)
    if separable:
        score = x @ rng.standard_normal(d)
        lab[np.argsort(-score)[:n_pos]] = 1.0
    else:
        lab[rng.choice(n, n_pos, replace=False)] = 1.0
        x[lab == 1] += 1.5 * rng.standard_normal(d) / np.sqrt(d)
    return x.astype(np.float32), lab


def _pack(units: list[tuple], d: int, pad_value: float = 0.0) -> tuple[torch.Tensor, ...]:
    L = max(len(lab) for _, lab in units)
    U = len(units)
    X = np.full((U, L, d), pad_value, dtype=np.float32)
    y = np.full((U, L), 7.0)  # garbage labels in padding must be ignored
    m = np.zeros((U, L), dtype=bool)
    for u, (x, lab) in enumerate(units):
        X[u, : len(lab)] = x
        y[u, : len(lab)] = lab
        m[u, : len(lab)] = True
    return torch.from_numpy(X), torch.from_numpy(y), torch.from_numpy(m)


def _sklearn_proba(x: np.ndarray, lab: np.ndarray, query: np.ndarray) -> np.ndarray:
    clf = LogisticRegression(C=1.0, tol=1e-8, max_iter=10000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit(x.astype(np.float64), lab)
    return clf.predict_proba(query.astype(np.float64))[:, 1]


def _penalised_grad(x: np.ndarray, lab: np.ndarray, w: np.ndarray, b: float, lam_b: float) -> np.ndarray:
    """Gradient of 0.5||w||^2 + 0.5 lam_b b^2 + sum log-loss, in float64."""
    p = 1.0 / (1.0 + np.exp(-(x @ w + b)))
    r = p - lab
    return np.concatenate([w + x.T @ r, [lam_b * b + r.sum()]])


@pytest.mark.parametrize("d", [8, 64, 384])
@pytest.mark.parametrize("separable", [False, True])
def test_matches_sklearn(d: int, separable: bool) -> None:
    rng = np.random.default_rng(1000 * d + separable)
    specs = [(100, 5), (37, 3), (180, 90), (60, 2)]  # (rows, positives): imbalanced and balanced
    units = [_unit_rows(rng, n, d, k, separable) for n, k in specs]
    X, y, m = _pack(units, d)
    model = fit_logistic(X, y, m)
    assert bool(model.converged.all())
    query = rng.standard_normal((50, d)).astype(np.float32)
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    p_ours = model.predict_proba(torch.from_numpy(query)).double().numpy()
    for u, (x, lab) in enumerate(units):
        both = np.concatenate([x, query])
        p_sk = _sklearn_proba(x, lab, both)
        p_train = model.predict_proba(torch.from_numpy(x))[u].double().numpy()
        np.testing.assert_allclose(p_train, p_sk[: len(lab)], atol=1e-3, rtol=0)
        np.testing.assert_allclose(p_ours[u], p_sk[len(lab) :], atol=1e-3, rtol=0)


def test_warm_start_is_fast_and_agrees() -> None:
    rng = np.random.default_rng(5)
    d = 32
    units = [_unit_rows(rng, 300, d, k, False) for k in (10, 30, 150)]
    X, y, m = _pack(units, d)
    m_before = m.clone()
    m_before[:, 280:] = False  # the previous round saw 20 fewer labels
    prev = fit_logistic(X, y, m_before)
    cold = fit_logistic(X, y, m)
    warm = fit_logistic(X, y, m, init=prev)
    assert bool(warm.converged.all())
    assert int(warm.n_iter.max()) <= int(cold.n_iter.max())
    torch.testing.assert_close(warm.W, cold.W, atol=1e-5, rtol=0)
    torch.testing.assert_close(warm.b, cold.b, atol=1e-5, rtol=0)
    # Restarting from the solution itself stops almost at once.
    again = fit_logistic(X, y, m, init=warm)
    assert int(again.n_iter.max()) <= 2
    torch.testing.assert_close(again.W, warm.W, atol=1e-5, rtol=0)


def test_keep_factor_warm_start() -> None:
    rng = np.random.default_rng(6)
    d = 16
    units = [_unit_rows(rng, 120, d, k, False) for k in (6, 40)]
    X, y, m = _pack(units, d)
    m_before = m.clone()
    m_before[:, 100:] = False
    prev = fit_logistic(X, y, m_before, keep_factor=True)
    assert prev.factor is not None and prev.factor.shape == (2, d + 1, d + 1)
    assert prev.factor.dtype == torch.float32
    warm = fit_logistic(X, y, m, init=prev)
    plain = fit_logistic(X, y, m, init=LogisticModel(prev.W, prev.b))
    assert warm.factor is None
    torch.testing.assert_close(warm.W, plain.W, atol=1e-5, rtol=0)
    torch.testing.assert_close(warm.b, plain.b, atol=1e-5, rtol=0)


def test_masked_rows_are_ignored() -> None:
    rng = np.random.default_rng(7)
    d = 12
    units = [_unit_rows(rng, n, d, k, False) for n, k in ((40, 4), (90, 20), (15, 5))]
    X, y, m = _pack(units, d)
    X_nan, _, _ = _pack(units, d, pad_value=float("nan"))
    X_big, _, _ = _pack(units, d, pad_value=1e3)
    ref = fit_logistic(X, y, m)
    for Xp in (X_nan, X_big):
        other = fit_logistic(Xp, y, m)
        torch.testing.assert_close(other.W, ref.W, atol=1e-6, rtol=0)
        torch.testing.assert_close(other.b, ref.b, atol=1e-6, rtol=0)
    # Each unit alone gives the same answer as the batch.
    for u, unit in enumerate(units):
        Xu, yu, mu = _pack([unit], d)
        alone = fit_logistic(Xu, yu, mu)
        torch.testing.assert_close(alone.W[0], ref.W[u], atol=1e-5, rtol=0)
        torch.testing.assert_close(alone.b[0], ref.b[u], atol=1e-5, rtol=0)


def test_single_class_and_empty_units() -> None:
    rng = np.random.default_rng(8)
    d = 10
    x_neg, _ = _unit_rows(rng, 30, d, 0, False)
    x_pos, _ = _unit_rows(rng, 25, d, 0, False)
    x_mix, lab_mix = _unit_rows(rng, 50, d, 10, False)
    empty = (np.zeros((0, d), np.float32), np.zeros(0))
    units = [(x_neg, np.zeros(30)), (x_pos, np.ones(25)), empty, (x_mix, lab_mix)]
    X, y, m = _pack(units, d)
    model = fit_logistic(X, y, m)
    assert bool(model.converged.all())
    assert bool(torch.isfinite(model.W).all()) and bool(torch.isfinite(model.b).all())
    # Empty unit: the documented default W = 0, b = 0 (p = 0.5 everywhere).
    assert bool((model.W[2] == 0).all()) and float(model.b[2]) == 0.0
    # Single-class units lean towards their class and solve the intercept-penalised problem.
    assert bool((model.predict_proba(torch.from_numpy(x_neg))[0] < 0.5).all())
    assert bool((model.predict_proba(torch.from_numpy(x_pos))[1] > 0.5).all())
    for u, lam_b in ((0, 1.0), (1, 1.0), (3, 0.0)):
        x, lab = units[u]
        g = _penalised_grad(x.astype(np.float64), lab, model.W[u].double().numpy(), float(model.b[u]), lam_b)
        assert np.abs(g).max() < 1e-4


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(min_value=2, max_value=60),
    d=st.integers(min_value=1, max_value=20),
    frac=st.floats(min_value=0.0, max_value=1.0),
    scale=st.sampled_from([0.1, 1.0, 10.0]),
    C=st.sampled_from([0.1, 1.0, 10.0]),
    seed=st.integers(min_value=0, max_value=2**31),
)
def test_optimality_conditions(n: int, d: int, frac: float, scale: float, C: float, seed: int) -> None:
    """On arbitrary small problems the returned point is a stationary point of the objective."""
    rng = np.random.default_rng(seed)
    x = (scale * rng.standard_normal((n, d))).astype(np.float32)
    lab = (rng.random(n) < frac).astype(np.float64)
    X, y, m = _pack([(x, lab)], d)
    model = fit_logistic(X.double(), y, m, C=C, tol=1e-10, max_iter=200)
    assert bool(model.converged.all())
    w = model.W[0].numpy()
    b = float(model.b[0])
    lam_b = 0.0 if 0 < lab.sum() < n else 1.0
    p = 1.0 / (1.0 + np.exp(-(x.astype(np.float64) @ w + b)))
    r = C * (p - lab)
    g = np.concatenate([w + x.T.astype(np.float64) @ r, [lam_b * b + r.sum()]])
    assert np.abs(g).max() <= 1e-6 * (1.0 + C * n * scale)


def test_unit_chunking_gives_the_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(9)
    d = 6
    units = [_unit_rows(rng, 40, d, k, False) for k in (3, 10, 20, 5, 1)]
    X, y, m = _pack(units, d)
    ref = fit_logistic(X, y, m, keep_factor=True)
    monkeypatch.setattr(learner_mod, "_HESSIAN_BYTES", 2 * 8 * (d + 1) ** 2)  # two units per chunk
    chunked = fit_logistic(X, y, m, init=LogisticModel(ref.W * 0.5, ref.b * 0.5, factor=ref.factor))
    torch.testing.assert_close(chunked.W, ref.W, atol=1e-5, rtol=0)
    torch.testing.assert_close(chunked.b, ref.b, atol=1e-5, rtol=0)
    assert chunked.n_iter.shape == (5,) and chunked.converged.shape == (5,)


def test_dtypes_and_prediction_shapes() -> None:
    rng = np.random.default_rng(10)
    d = 5
    units = [_unit_rows(rng, 30, d, k, False) for k in (5, 12)]
    X, y, m = _pack(units, d)
    model = fit_logistic(X, y.bool() & m, m)  # bool labels
    assert model.W.dtype == torch.float32 and model.W.shape == (2, d) and model.b.shape == (2,)
    m64 = fit_logistic(X.double(), y, m)
    assert m64.W.dtype == torch.float64
    torch.testing.assert_close(m64.W.float(), model.W, atol=1e-5, rtol=0)
    m16 = fit_logistic(X.half(), y, m)
    assert m16.W.dtype == torch.float32
    shared = torch.randn(7, d)
    assert model.predict_proba(shared).shape == (2, 7)
    per_unit = torch.randn(2, 7, d)
    out = model.predict_proba(per_unit)
    assert out.shape == (2, 7)
    torch.testing.assert_close(out[1], model.predict_proba(per_unit[1])[1])
    torch.testing.assert_close(model.logits(shared), (shared @ model.W.T + model.b).T)
    with pytest.raises(ValueError, match="features"):
        model.logits(torch.randn(3, d + 1))
    with pytest.raises(ValueError, match="shape"):
        model.logits(torch.randn(d))


def test_input_validation() -> None:
    X = torch.randn(2, 5, 3)
    y = torch.zeros(2, 5)
    y[:, 0] = 1
    m = torch.ones(2, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"X must have shape \(U, L, d\)"):
        fit_logistic(X[0], y, m)
    with pytest.raises(ValueError, match="floating"):
        fit_logistic(X.long(), y, m)
    with pytest.raises(ValueError, match=r"y must have shape"):
        fit_logistic(X, y[:, :4], m)
    with pytest.raises(ValueError, match=r"mask must have shape"):
        fit_logistic(X, y, m[:1])
    with pytest.raises(ValueError, match="bool"):
        fit_logistic(X, y, m.float())
    bad_y = y.clone()
    bad_y[1, 3] = 2
    with pytest.raises(ValueError, match=r"y\[1, 3\] = 2"):
        fit_logistic(X, bad_y, m)
    m_pad = m.clone()
    m_pad[1, 3] = False
    fit_logistic(X, bad_y, m_pad)  # the bad label is in padding: fine
    bad_X = X.clone()
    bad_X[0, 2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"X\[0, 2\] has non-finite"):
        fit_logistic(bad_X, y, m)
    with pytest.raises(ConfigError, match="C=0"):
        fit_logistic(X, y, m, C=0)
    with pytest.raises(ConfigError, match="C=nan"):
        fit_logistic(X, y, m, C=float("nan"))
    with pytest.raises(ConfigError, match="max_iter=0"):
        fit_logistic(X, y, m, max_iter=0)
    with pytest.raises(ConfigError, match="tol=-1"):
        fit_logistic(X, y, m, tol=-1)
    with pytest.raises(ValueError, match="init has W"):
        fit_logistic(X, y, m, init=LogisticModel(torch.zeros(3, 3), torch.zeros(3)))
    with pytest.raises(ValueError, match="init.factor"):
        fit_logistic(X, y, m, init=LogisticModel(torch.zeros(2, 3), torch.zeros(2), factor=torch.eye(3)))
    with pytest.raises(ValueError, match="non-finite"):
        fit_logistic(X, y, m, init=LogisticModel(torch.full((2, 3), float("inf")), torch.zeros(2)))


def test_zero_length_shapes() -> None:
    model = fit_logistic(torch.randn(3, 0, 4), torch.zeros(3, 0), torch.zeros(3, 0, dtype=torch.bool))
    assert bool((model.W == 0).all()) and bool((model.b == 0).all())
    none = fit_logistic(torch.randn(0, 5, 4), torch.zeros(0, 5), torch.zeros(0, 5, dtype=torch.bool))
    assert none.W.shape == (0, 4) and none.b.shape == (0,)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu() -> None:
    rng = np.random.default_rng(11)
    d = 64
    units = [_unit_rows(rng, n, d, k, False) for n, k in ((200, 10), (120, 60), (80, 3))]
    X, y, m = _pack(units, d)
    cpu = fit_logistic(X, y, m)
    gpu = fit_logistic(X.cuda(), y.cuda(), m.cuda())
    assert gpu.W.device.type == "cuda"
    torch.testing.assert_close(gpu.W.cpu(), cpu.W, atol=1e-4, rtol=0)
    torch.testing.assert_close(gpu.b.cpu(), cpu.b, atol=1e-4, rtol=0)


def test_batched_code_path_matches_per_unit_loops(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bmm path used on GPUs, exercised on CPU."""
    rng = np.random.default_rng(12)
    d = 24
    units = [_unit_rows(rng, n, d, k, False) for n, k in ((90, 9), (60, 30), (20, 0))]
    X, y, m = _pack(units, d)
    loops = fit_logistic(X, y, m)
    monkeypatch.setattr(learner_mod, "_per_unit_loops", lambda X: False)
    monkeypatch.setattr(learner_mod, "_HESSIAN_TMP_BYTES", 1)  # one unit per Hessian chunk
    batched = fit_logistic(X, y, m)
    torch.testing.assert_close(batched.W, loops.W, atol=1e-5, rtol=0)
    torch.testing.assert_close(batched.b, loops.b, atol=1e-5, rtol=0)


def test_max_iter_reports_unconverged() -> None:
    rng = np.random.default_rng(13)
    d = 20
    X, y, m = _pack([_unit_rows(rng, 200, d, 20, True)], d)
    model = fit_logistic(X, y, m, max_iter=1)
    assert model.n_iter.tolist() == [1]
    assert model.converged.tolist() == [False]
    assert bool(torch.isfinite(model.W).all())


@pytest.mark.parametrize("scale", [10.0, 1e3, 1e6])
def test_far_off_warm_start_still_converges(scale: float) -> None:
    rng = np.random.default_rng(14)
    d = 30
    units = [
        _unit_rows(rng, n, d, k, sep) for n, k, sep in ((150, 8, True), (100, 50, False), (40, 1, False))
    ]
    X, y, m = _pack(units, d)
    ref = fit_logistic(X, y, m)
    g = torch.Generator().manual_seed(int(scale))
    init = LogisticModel(scale * torch.randn(3, d, generator=g), scale * torch.randn(3, generator=g))
    model = fit_logistic(X, y, m, init=init)
    assert bool(model.converged.all())
    torch.testing.assert_close(model.W, ref.W, atol=1e-5, rtol=0)
    torch.testing.assert_close(model.b, ref.b, atol=1e-5, rtol=0)
