"""L2-regularised logistic regression for many independent units: batched Newton or per-unit L-BFGS.

Each *unit* (one concept x strategy x mode, say) is its own binary problem with the objective of
scikit-learn's ``LogisticRegression(C=C)``::

    F(w, b) = 0.5 * ||w||^2 + C * sum_i log(1 + exp(-s_i (w . x_i + b)))      s_i = 2 y_i - 1

The intercept ``b`` is not penalised. :func:`fit_logistic` takes the units in one padded layout
``X (U, L, d)``, ``y (U, L)``, ``mask (U, L)`` (masked rows are ignored, so units can have different
numbers of labels); :func:`fit_logistic_units` takes them ragged, one ``(n_u, d)`` numpy array per unit,
and reads each in place (what the driver calls on CPU: no padded copy per round).

Two methods, and which runs where
---------------------------------
``method="auto"`` (the default) is ``"newton"`` when ``X`` is on a CUDA device and ``"lbfgs"``
otherwise; :func:`fit_logistic_units` is always ``"lbfgs"``. The two have different cost models:

* ``"newton"`` builds and factorises a ``(d+1) x (d+1)`` Hessian per unit (``L d^2`` flops) and then
  needs only a handful of steps, all batched over units in a few large products: right for a GPU,
  where flops are cheap and the number of kernel launches is what counts.
* ``"lbfgs"`` needs ~3-12 iterations at ``tol=1e-5`` on these problems, each costing exactly two
  passes over one unit's rows (``X @ direction`` and ``X^T residual``, ~4 L d flops): on a CPU that is
  far cheaper than a Hessian, and solving units one after another keeps each unit's rows in cache
  across its iterations (batched products over all units would stream ``U L d`` from DRAM every
  iteration).

Measured on the 2-core development VM, one thread each (``benchmarks/bench_learner.py --threads 1``,
5% positives, C=1, other work running): the batched Newton solver takes 2.5-7x *longer* than a plain
loop of ``sklearn.linear_model.LogisticRegression(C=C).fit`` (d=384, L=1000: 0.39 s vs 0.059 s for 20
units), while the per-unit L-BFGS here is faster than that loop in every cell of d in {64, 384, 2048}
x L in {100, 1000, 5000}, cold and warm-started, with a 10x tighter gradient tolerance: 4-7x at
L=100 (Python overhead: ~0.25 ms per fit vs ~1.6 ms), 2-4.5x at L=1000, and 1.2-2.8x at L=5000, where
both solvers are bound by reading X (at d=2048, L=5000, 40 MB per unit, both need ~10 iterations of
two passes). On a GPU the Newton solver stays: its batched products are what a GPU does best.

L-BFGS (``"lbfgs"``, numpy, one unit at a time)
------------------------------------------------
* Parameters ``theta = (w, b)``, logits, residuals and the L-BFGS memory are float64; products with
  ``X`` run in ``X``'s dtype (float32 normally) as BLAS ``gemv``. Memory of 10 pairs in the compact
  form of Byrd, Nocedal & Schnabel (1994), kept in ring-buffer order with the inverse of its
  triangular factor updated in O(m^2), so a direction costs four small products instead of the
  two-loop recursion's ~40 numpy calls (Python overhead is what counts at L = 100).
* Line search: ``s = X @ direction`` is computed once, after which the convex 1-D function
  ``phi(t) = F(theta + t * direction)`` and its first two derivatives cost O(L) (logits ``z + t s``):
  a safeguarded 1-D Newton/bisection starts at the Newton step from ``t = 0`` and accepts
  ``|phi'(t)| <= 0.01 |phi'(0)|``. This near-exact search needs fewer iterations than scikit-learn's
  Wolfe search (on near-quadratic objectives L-BFGS with exact steps behaves like conjugate
  gradients). The logits are then updated incrementally (``z += t s``) and recomputed from scratch
  when the distance travelled exceeds ten times their size, so float32 round-off cannot accumulate.
  Each iteration therefore reads ``X`` exactly twice.
* Stopping: ``max|grad F| <= tol * C * n_u`` (``n_u`` = the unit's labelled rows), i.e. scikit-learn's
  scaling (its ``tol`` bounds the gradient of the averaged objective ``F / (C n)``); the default
  ``tol=1e-5`` is 10x tighter than scikit-learn's default. A gradient tolerance does not bound the
  probabilities tightly on ill-conditioned units: at ``C=10`` with 5,000 labels, probabilities at
  ``tol=1e-5`` can be off the optimum by a few 1e-2 (scikit-learn's default, by ~0.2); ``tol=1e-8``
  gives better than 1e-4. When round-off leaves no descent direction even after the memory is reset,
  the unit stops unconverged.
* Cold start ``w = 0`` (no pass over ``X`` for the first logits) and ``b`` = the labels' log-odds.
  Every row enters the first products with a nonzero weight (cold: the gradient, warm: the logits), so
  non-finite values in ``X`` show there, without a separate validation pass (the error names the row).
* Tried and dropped: trying the L-BFGS step ``t = 1`` in one pass (``X @ direction`` and the gradient
  there, block by block while each row block is in cache) and keeping it under the Wolfe conditions.
  It saves a pass on most iterations in principle, but on this CPU re-reading a block from cache was
  only ~15% cheaper than from DRAM, and the looser steps cost ~25% more iterations: slower overall.
* Threads: units are solved ``threads`` at a time by a thread pool with BLAS pinned to one thread
  (threadpoolctl); a unit's result does not depend on the thread count or on the other units. Only
  large units (on average ``n_u * d >= 2^20``) are spread over threads: smaller ones are bound by
  Python, and the GIL made 2 threads up to 2.5x slower than 1 there. On the 2-core development VM,
  with another job on the second core, 2 threads gave 0.84-1.23x on large units (and sklearn's
  2-thread BLAS was far worse than 1 thread), so compare and run at ``threads=1`` there; machines
  with free cores should gain on large units.

Newton (``"newton"``, torch, batched over units)
-------------------------------------------------
Damped Newton with a *lazily refreshed* Hessian and an exact line search, all batched over units:

* The Hessian ``H = I + C X^T D X`` (``D = p (1 - p)``, bordered with the intercept row/column) is
  built with float32 matrix products and factorised in float64 with a batched Cholesky. Newton-CG
  was rejected on cost: each Hessian-vector product is a full memory-bound pass over ``X`` and
  un-preconditioned CG needs tens of them per Newton step.
* The Hessian is only rebuilt for a unit when its last step did not shrink the gradient enough
  (``||g_new|| > 0.5 ||g_old||``, sup norm). Otherwise the previous Cholesky factor is reused (a
  chord step), which costs two passes over ``X`` instead of a ``d``-times more expensive Hessian.
  When warm-started from the previous round's model the first factor is usually good enough for
  every remaining step, and with ``keep_factor=True`` even that one comes from the previous round.
* The step length comes from the same kind of exact line search as above, batched. Any positive
  definite factor gives a descent direction, so the method converges from any start, including
  cold starts and linearly separable data.
* Float64 for everything of size O(U L) or O(U d^2); probabilities agree with scikit-learn's
  ``lbfgs`` solution (``tol=1e-8``, float64) to ~1e-6.
* On CPU, per-unit ``mv``/``mm`` calls are used instead of ``bmm``; on GPUs everything is batched.

Convergence: a unit stops when its accepted step satisfies
``max|t * delta| <= tol * (1 + max|theta|)`` (default ``tol=1e-6``), or when no descent is possible any
more (the round-off floor). ``max_iter`` (default 50) bounds the number of Newton/chord steps.
Memory: the Hessians take ``8 * (d + 1)^2`` bytes per unit; units are solved in independent chunks
so that this stays under about 1 GiB (units are independent, so chunking changes no result).

Degenerate units (both methods)
-------------------------------
When a unit's labelled rows are all of one class (or it has none), the unpenalised objective has no
minimiser (``b -> +-inf``) and scikit-learn refuses to fit. For such units the intercept is penalised
like the weights (``0.5 * b^2`` is added), which makes the solution unique and finite: it predicts the
observed class with probability > 0.5 everywhere near the data, and a unit with **no** labelled rows
gets exactly ``W = 0, b = 0`` (p = 0.5 everywhere).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from .errors import ConfigError

__all__ = ["LogisticModel", "fit_logistic", "fit_logistic_units"]

_F64 = torch.float64
# Rebuild a unit's Hessian when the sup-norm of its gradient shrank by less than this factor.
_REFRESH_RATIO = 0.5
# Line search: accept t when |phi'(t)| <= _LS_ETA * |phi'(0)|.
_LS_ETA = 0.1
_LS_MAX = 40
# Bytes of float64 Hessian factors held at once; more units than this are solved chunk by chunk.
_HESSIAN_BYTES = 1 << 30
# Bytes of float32 temporaries (D * X) used while building Hessians.
_HESSIAN_TMP_BYTES = 32 << 20
# Defaults of the two methods.
_NEWTON_MAX_ITER = 50
_NEWTON_TOL = 1e-6
_LBFGS_MAX_ITER = 1000
_LBFGS_TOL = 1e-5
# L-BFGS: pairs kept, and the line search's acceptance |phi'(t)| <= _LBFGS_ETA * |phi'(0)|.
_LBFGS_MEMORY = 10
_LBFGS_ETA = 0.01
# Units are solved in parallel threads only when they hold this many values on average (n_u * d).
_PARALLEL_MIN_SIZE = 1 << 20


@dataclass(frozen=True, eq=False)
class LogisticModel:
    """A batch of ``U`` binary logistic-regression models.

    Attributes:
        W: ``(U, d)`` weights, float32 (float64 if fitted on float64 data).
        b: ``(U,)`` intercepts, same dtype and device as ``W``.
        n_iter: ``(U,)`` int64 iterations taken per unit: Newton/chord steps or L-BFGS steps (``None``
            for hand-built models).
        converged: ``(U,)`` bool, whether each unit met ``tol`` within ``max_iter`` (``None`` for
            hand-built models).
        factor: ``(U, d + 1, d + 1)`` float32 lower Cholesky factors of each unit's last Hessian
            (weights first, intercept last), kept only when fitted with ``method="newton"`` and
            ``keep_factor=True``. A Newton warm start from a model that has them skips the first
            (and usually only) Hessian build.
        method: the solver that fitted the model, ``"newton"`` or ``"lbfgs"`` (``""`` for
            hand-built models).
    """

    W: torch.Tensor
    b: torch.Tensor
    n_iter: torch.Tensor | None = None
    converged: torch.Tensor | None = None
    factor: torch.Tensor | None = None
    method: str = ""

    @property
    def n_units(self) -> int:
        """Number of units ``U``."""
        return int(self.W.shape[0])

    @property
    def dim(self) -> int:
        """Feature dimension ``d``."""
        return int(self.W.shape[1])

    def logits(self, X: torch.Tensor) -> torch.Tensor:
        """Decision values ``w_u . x + b_u``.

        Args:
            X: either ``(N, d)``, the same rows scored by every unit, or ``(U, N, d)``, one set of
                rows per unit. Cast to ``W``'s dtype and device if needed.

        Returns:
            ``(U, N)`` logits in ``W``'s dtype.
        """
        X = X.to(device=self.W.device, dtype=self.W.dtype)
        if X.dim() == 2:
            if X.shape[1] != self.dim:
                raise ValueError(f"X has {X.shape[1]} features but the model has d={self.dim}")
            return torch.addmm(self.b[:, None], self.W, X.T)
        if X.dim() == 3:
            if X.shape[0] != self.n_units or X.shape[2] != self.dim:
                raise ValueError(
                    f"X of shape {tuple(X.shape)} does not match the model's (U, N, d) = "
                    f"({self.n_units}, N, {self.dim})"
                )
            return torch.baddbmm(self.b[:, None, None], X, self.W[:, :, None]).squeeze(-1)
        raise ValueError(f"X must be (N, d) or (U, N, d), got shape {tuple(X.shape)}")

    def predict_proba(self, X: torch.Tensor) -> torch.Tensor:
        """Probability of the positive class, ``sigmoid(logits(X))``.

        Args:
            X: ``(N, d)`` shared rows or ``(U, N, d)`` per-unit rows (see :meth:`logits`).

        Returns:
            ``(U, N)`` probabilities in ``W``'s dtype.
        """
        return torch.sigmoid(self.logits(X))


def fit_logistic(
    X: torch.Tensor,
    y: torch.Tensor,
    mask: torch.Tensor,
    *,
    C: float = 1.0,
    init: LogisticModel | None = None,
    max_iter: int | None = None,
    tol: float | None = None,
    keep_factor: bool = False,
    method: str = "auto",
    threads: int | None = None,
    class_weight: str = "none",
) -> LogisticModel:
    """Fit ``U`` independent L2-regularised logistic regressions given in one padded layout.

    Same objective as ``sklearn.linear_model.LogisticRegression(C=C)`` (unpenalised intercept);
    see the module docstring for the two methods and for units whose labels are all one class.

    Args:
        X: ``(U, L, d)`` float features (float32 normally; float16/bfloat16 are upcast to float32).
            Masked rows may hold anything, non-finite values included.
        y: ``(U, L)`` labels, 0/1 (bool, int or float) on the rows where ``mask`` is true.
        mask: ``(U, L)`` bool, true for the real (labelled) rows of each unit.
        C: inverse regularisation strength, > 0.
        init: warm start, usually the previous round's model (``W (U, d)``, ``b (U,)``). Without
            it, ``W = 0`` and ``b`` is the log-odds of the labels.
        max_iter: maximum number of iterations per unit, >= 1 (default: 50 Newton/chord steps for
            ``"newton"``, 1000 L-BFGS steps for ``"lbfgs"``).
        tol: tolerance, > 0 (default: the method's own, see the module docstring): ``"newton"``
            stops on the step size (default 1e-6), ``"lbfgs"`` on the gradient,
            ``max|grad F| <= tol * C * n_u`` with ``n_u`` the unit's labelled rows (default 1e-5,
            scikit-learn's scaling and 10x tighter than its default).
        keep_factor: ``"newton"`` only: keep each unit's last Hessian factor in the result
            (``4 (d+1)^2`` bytes per unit) so that the next warm start from it can skip the Hessian
            build, which is most of a warm start's cost. The factor is only a preconditioner:
            results do not depend on it beyond ``tol``.
        method: ``"auto"`` (``"newton"`` when ``X`` is on a CUDA device, ``"lbfgs"`` otherwise),
            ``"newton"`` (batched damped Newton on ``X``'s device) or ``"lbfgs"`` (per-unit L-BFGS
            in numpy on the CPU, see :func:`fit_logistic_units`; the result is moved back to
            ``X``'s device).
        threads: ``"lbfgs"`` only: units solved in parallel, >= 1 (default
            ``torch.get_num_threads()``; small units always run one at a time, see the module
            docstring); results do not depend on it.
        class_weight: ``"none"`` or ``"balanced"``: each row's loss weighted by ``n / (2 n_class)``
            of its unit (scikit-learn's ``class_weight='balanced'``); units with one class get 1.

    Returns:
        The fitted :class:`LogisticModel`, with ``W``/``b`` in ``X``'s dtype (float32 for
        half-precision input) on ``X``'s device, and per-unit ``n_iter`` and ``converged``.

    Raises:
        ValueError: wrong shapes or dtypes, non-finite features or labels in unmasked rows,
            labels other than 0/1, or an ``init`` that does not match.
        ConfigError: ``C``, ``max_iter``, ``tol``, ``method`` or ``threads`` out of range, or
            ``keep_factor=True`` with the ``"lbfgs"`` method.
    """
    if not isinstance(keep_factor, bool):
        raise ConfigError(f"keep_factor={keep_factor!r}: must be True or False")
    device = X.device if isinstance(X, torch.Tensor) else torch.device("cpu")
    method = _resolve_method(method, device)
    max_iter, tol, threads = _check_config(method, C, max_iter, tol, threads)
    _check_class_weight(class_weight)
    if keep_factor and method == "lbfgs":
        raise ConfigError(
            "keep_factor=True needs method='newton' (L-BFGS has no Hessian factor to keep); "
            "pass method='newton' or drop keep_factor"
        )
    X, y, mask, start = _validate(X, y, mask, init)
    if method == "lbfgs":
        return _fit_lbfgs_padded(X, y, mask, start, C, max_iter, tol, threads, class_weight)
    U, L, d = X.shape
    chunk = max(1, _HESSIAN_BYTES // (8 * (d + 1) ** 2))
    if U <= chunk:
        return _fit(X, y, mask, start, C, max_iter, tol, keep_factor, class_weight)
    parts = []
    for s in range(0, U, chunk):
        sl = slice(s, s + chunk)
        start_s = None if start is None else _Start(*(None if t is None else t[sl] for t in start))
        parts.append(_fit(X[sl], y[sl], mask[sl], start_s, C, max_iter, tol, keep_factor, class_weight))
    return LogisticModel(
        W=torch.cat([p.W for p in parts]),
        b=torch.cat([p.b for p in parts]),
        n_iter=torch.cat([p.n_iter for p in parts]),
        converged=torch.cat([p.converged for p in parts]),
        factor=torch.cat([p.factor for p in parts]) if keep_factor else None,
        method="newton",
    )


def fit_logistic_units(
    Xs: Sequence[np.ndarray],
    ys: Sequence[np.ndarray],
    *,
    C: float = 1.0,
    init: LogisticModel | None = None,
    max_iter: int | None = None,
    tol: float | None = None,
    threads: int | None = None,
    class_weight: str = "none",
) -> LogisticModel:
    """Fit ``U`` independent logistic regressions given as ragged per-unit numpy arrays (CPU, L-BFGS).

    The ``"lbfgs"`` method of :func:`fit_logistic` without the padded ``(U, L, d)`` layout: each
    unit's labelled rows stay in their own array and are read in place (no copy for C-contiguous
    float32/float64 input). Same objective, defaults and results as
    ``fit_logistic(..., method="lbfgs")`` on the same rows, bit for bit.

    Args:
        Xs: ``U`` arrays of shape ``(n_u, d)``, float32 (or float64; other floats are upcast to
            float32), one per unit; ``n_u`` may differ between units and may be 0; every row must
            be finite.
        ys: ``U`` arrays of shape ``(n_u,)``: bool or 0/1 labels.
        C: inverse regularisation strength, > 0.
        init: warm start (``W (U, d)``, ``b (U,)``, any device; a Hessian factor is ignored).
            Without it, ``W = 0`` and ``b`` is the log-odds of each unit's labels.
        max_iter: maximum L-BFGS steps per unit, >= 1 (default 1000).
        tol: gradient tolerance, > 0: a unit stops when ``max|grad F| <= tol * C * n_u``
            (default 1e-5).
        threads: units solved in parallel, >= 1 (default ``torch.get_num_threads()``; small units
            always run one at a time, see the module docstring); BLAS runs single-threaded inside.
            Results do not depend on it.

    Returns:
        A :class:`LogisticModel` on the CPU: ``W (U, d)`` and ``b (U,)`` float64 if every ``Xs[u]``
        is float64, float32 otherwise; per-unit ``n_iter`` and ``converged``. A unit without rows
        gets ``W = 0, b = 0``.

    Raises:
        ValueError: wrong types, shapes or lengths, non-finite rows, labels other than 0/1, or an
            ``init`` that does not match.
        ConfigError: ``C``, ``max_iter``, ``tol`` or ``threads`` out of range.
    """
    max_iter, tol, threads = _check_config("lbfgs", C, max_iter, tol, threads)
    _check_class_weight(class_weight)
    units, d, out_dtype = _validate_units(Xs, ys)
    start = _validate_init(init, len(units), d, torch.device("cpu"))
    W0 = None if start is None else start.W.numpy()
    b0 = None if start is None else start.b.numpy()
    return _solve_units(
        units,
        W0,
        b0,
        d,
        C,
        max_iter,
        tol,
        threads,
        out_dtype,
        torch.device("cpu"),
        lambda u, i: f"Xs[{u}][{i}]",
        class_weight=class_weight,
    )


_METHODS = ("auto", "newton", "lbfgs")
CLASS_WEIGHTS = ("none", "balanced")


def _check_class_weight(class_weight: str) -> None:
    if class_weight not in CLASS_WEIGHTS:
        raise ConfigError(f"class_weight={class_weight!r}: choose one of {', '.join(CLASS_WEIGHTS)}")


def balanced_weights(y: np.ndarray) -> np.ndarray:
    """scikit-learn's ``class_weight='balanced'`` per row: ``n / (2 n_class)``; all 1 with one class."""
    n = y.size
    npos = float(np.sum(y > 0.5))
    if npos == 0 or npos == n:
        return np.ones(n)
    return np.where(y > 0.5, n / (2.0 * npos), n / (2.0 * (n - npos)))


def _resolve_method(method: str, device: torch.device) -> str:
    """``"auto"`` -> ``"newton"`` on CUDA, ``"lbfgs"`` elsewhere; anything unknown is a ConfigError."""
    if not isinstance(method, str) or method not in _METHODS:
        raise ConfigError(f"method={method!r}: must be one of {', '.join(repr(m) for m in _METHODS)}")
    if method == "auto":
        return "newton" if device.type == "cuda" else "lbfgs"
    return method


def _check_config(
    method: str, C: float, max_iter: int | None, tol: float | None, threads: int | None
) -> tuple[int, float, int]:
    """Check the numeric settings; return ``max_iter``, ``tol`` and ``threads`` with defaults filled in."""
    if isinstance(C, bool) or not isinstance(C, (int, float)) or not math.isfinite(C) or C <= 0:
        raise ConfigError(f"C={C!r}: the inverse regularisation strength must be a finite number > 0")
    if max_iter is None:
        max_iter = _NEWTON_MAX_ITER if method == "newton" else _LBFGS_MAX_ITER
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ConfigError(f"max_iter={max_iter!r}: must be an integer >= 1")
    if tol is None:
        tol = _NEWTON_TOL if method == "newton" else _LBFGS_TOL
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol <= 0:
        raise ConfigError(f"tol={tol!r}: must be a finite number > 0")
    if threads is None:
        threads = max(1, torch.get_num_threads())
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads={threads!r}: must be an integer >= 1 (or None for torch's thread count)")
    return max_iter, float(tol), threads


class _Start(NamedTuple):
    """Validated warm start on X's device: float64 W (U, d) and b (U,), optional factor (any float)."""

    W: torch.Tensor
    b: torch.Tensor
    factor: torch.Tensor | None


def _validate(
    X: torch.Tensor,
    y: torch.Tensor,
    mask: torch.Tensor,
    init: LogisticModel | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, _Start | None]:
    """Check the padded inputs; return X (float32/64), y, mask on X's device and the warm start."""
    if not isinstance(X, torch.Tensor):
        raise ValueError(f"X must be a torch.Tensor of shape (U, L, d), got {type(X).__name__}")
    if X.dim() != 3:
        raise ValueError(f"X must have shape (U, L, d), got shape {tuple(X.shape)}")
    if not X.is_floating_point():
        raise ValueError(f"X must be a floating-point tensor, got dtype {X.dtype}")
    if X.dtype not in (torch.float32, torch.float64):
        X = X.float()
    U, L, d = X.shape
    if d == 0:
        raise ValueError("X has d=0 features")
    dev = X.device
    y = torch.as_tensor(y, device=dev)
    mask = torch.as_tensor(mask, device=dev)
    if tuple(y.shape) != (U, L):
        raise ValueError(f"y must have shape (U, L) = ({U}, {L}) to match X, got {tuple(y.shape)}")
    if tuple(mask.shape) != (U, L):
        raise ValueError(f"mask must have shape (U, L) = ({U}, {L}) to match X, got {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got dtype {mask.dtype}")
    if y.dtype != torch.bool:
        if y.is_complex():
            raise ValueError(f"y must hold 0/1 labels, got dtype {y.dtype}")
        bad = mask & ~((y == 0) | (y == 1))
        if bool(bad.any()):
            u, i = (int(v) for v in bad.nonzero()[0])
            raise ValueError(f"y[{u}, {i}] = {y[u, i].item()!r}: labels must be 0 or 1 (or bool)")
    # One cheap pass: a row sum is non-finite iff the row has a non-finite value (or overflows).
    row_ok = torch.isfinite(X.sum(dim=-1))
    bad = mask & ~row_ok
    if bool(bad.any()):
        u, i = (int(v) for v in bad.nonzero()[0])
        raise ValueError(f"X[{u}, {i}] has non-finite (or overflowing) values in an unmasked row")
    if not bool(row_ok.all()):
        # Non-finite padding would poison the products (0 * nan = nan): zero it.
        X = torch.where(mask[..., None], X, torch.zeros((), dtype=X.dtype, device=dev))
    return X, y, mask, _validate_init(init, U, d, dev)


def _validate_init(init: LogisticModel | None, U: int, d: int, dev: torch.device) -> _Start | None:
    """Check a warm start against ``U`` units of dimension ``d``; return it as float64 on ``dev``."""
    if init is None:
        return None
    if not isinstance(init, LogisticModel):
        raise ValueError(f"init must be a LogisticModel, got {type(init).__name__}")
    if tuple(init.W.shape) != (U, d) or tuple(init.b.shape) != (U,):
        raise ValueError(
            f"init has W {tuple(init.W.shape)} and b {tuple(init.b.shape)}; "
            f"expected W ({U}, {d}) and b ({U},) to match X"
        )
    W0 = init.W.to(device=dev, dtype=_F64)
    b0 = init.b.to(device=dev, dtype=_F64)
    if not (bool(torch.isfinite(W0).all()) and bool(torch.isfinite(b0).all())):
        raise ValueError("init has non-finite weights or intercepts")
    F0 = None
    if init.factor is not None:
        if tuple(init.factor.shape) != (U, d + 1, d + 1):
            raise ValueError(
                f"init.factor has shape {tuple(init.factor.shape)}, expected ({U}, {d + 1}, {d + 1})"
            )
        if not init.factor.is_floating_point():
            raise ValueError(f"init.factor must be floating point, got dtype {init.factor.dtype}")
        F0 = init.factor.to(device=dev)
    return _Start(W0, b0, F0)


def _validate_units(Xs: Sequence[np.ndarray], ys: Sequence[np.ndarray]) -> tuple[list[_Unit], int, np.dtype]:
    """Check ragged per-unit inputs; return the units (C-contiguous float rows, float64 labels), d, dtype."""
    for name, seq in (("Xs", Xs), ("ys", ys)):
        if isinstance(seq, (np.ndarray, torch.Tensor, str, bytes)) or not isinstance(seq, Sequence):
            raise ValueError(
                f"{name} must be a sequence (list or tuple) of per-unit numpy arrays, got {type(seq).__name__}"
            )
    if len(Xs) != len(ys):
        raise ValueError(f"Xs has {len(Xs)} units but ys has {len(ys)}: pass one label array per unit")
    units: list[_Unit] = []
    d = None
    all64 = True
    for u, (x, lab) in enumerate(zip(Xs, ys)):
        if not isinstance(x, np.ndarray):
            raise ValueError(f"Xs[{u}] must be a numpy array of shape (n, d), got {type(x).__name__}")
        if x.ndim != 2:
            raise ValueError(f"Xs[{u}] must have shape (n, d), got shape {x.shape}")
        if x.dtype.kind != "f":
            raise ValueError(f"Xs[{u}] must be a floating-point array, got dtype {x.dtype}")
        if d is None:
            d = int(x.shape[1])
            if d == 0:
                raise ValueError(f"Xs[{u}] has d=0 features")
        elif x.shape[1] != d:
            raise ValueError(
                f"Xs[{u}] has {x.shape[1]} features but Xs[0] has {d}: every unit needs the same d"
            )
        if x.dtype not in (np.float32, np.float64):
            x = x.astype(np.float32)
        all64 = all64 and x.dtype == np.float64
        x = np.ascontiguousarray(x)
        n = int(x.shape[0])
        if not isinstance(lab, np.ndarray):
            raise ValueError(f"ys[{u}] must be a numpy array of shape ({n},), got {type(lab).__name__}")
        if lab.shape != (n,):
            raise ValueError(f"ys[{u}] must have shape ({n},) to match Xs[{u}], got {lab.shape}")
        if lab.dtype == np.bool_:
            yv = lab.astype(np.float64)
        else:
            if lab.dtype.kind not in "biuf":
                raise ValueError(f"ys[{u}] must hold 0/1 labels, got dtype {lab.dtype}")
            yv = lab.astype(np.float64)
            bad = np.flatnonzero((yv != 0) & (yv != 1))
            if bad.size:
                i = int(bad[0])
                raise ValueError(f"ys[{u}][{i}] = {lab[i]!r}: labels must be 0 or 1 (or bool)")
        units.append(_Unit(x, yv))
    if d is None:
        d = 0
    return units, d, np.dtype(np.float64 if all64 and units else np.float32)


class _Unit(NamedTuple):
    """One unit's rows (C-contiguous float32/float64 ``(n, d)``) and float64 labels ``(n,)``."""

    X: np.ndarray
    y: np.ndarray


def _fit_lbfgs_padded(
    X: torch.Tensor,
    y: torch.Tensor,
    mask: torch.Tensor,
    start: _Start | None,
    C: float,
    max_iter: int,
    tol: float,
    threads: int,
    class_weight: str = "none",
) -> LogisticModel:
    """The ``"lbfgs"`` method of :func:`fit_logistic`: slice each unit's rows out of the padded layout."""
    dev = X.device
    U, L, d = X.shape
    Xc = X.detach().cpu()
    Xn = Xc.numpy()
    mask_c = mask.cpu()
    yn = y.detach().cpu().to(_F64).numpy()
    counts = mask_c.sum(dim=1)
    prefix = (mask_c == (torch.arange(L) < counts[:, None])).all(dim=1).tolist()
    units: list[_Unit] = []
    mask_n = mask_c.numpy()
    gathered: dict[int, np.ndarray] = {}  # unit -> its rows in the padded layout, when not a prefix
    for u, n in enumerate(counts.tolist()):
        if prefix[u]:
            units.append(_Unit(np.ascontiguousarray(Xn[u, :n]), np.ascontiguousarray(yn[u, :n])))
        else:
            rows = gathered[u] = np.flatnonzero(mask_n[u])
            units.append(_Unit(Xn[u, rows], yn[u, rows]))
    W0 = None if start is None else start.W.cpu().numpy()
    b0 = None if start is None else start.b.cpu().numpy()

    def row_name(u: int, i: int) -> str:
        return f"X[{u}, {int(gathered[u][i]) if u in gathered else i}]"

    return _solve_units(
        units, W0, b0, d, C, max_iter, tol, threads, Xn.dtype, dev, row_name, class_weight=class_weight
    )


def _blas_single_thread():
    """A context manager that runs BLAS single-threaded (threadpoolctl; one shared controller)."""
    global _CONTROLLER
    if _CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=1, user_api="blas")


_CONTROLLER = None


class _NotFinite(Exception):
    """A unit's products with X were not finite: non-finite values in its rows, or an overflow."""


def _solve_units(
    units: list[_Unit],
    W0: np.ndarray | None,
    b0: np.ndarray | None,
    d: int,
    C: float,
    max_iter: int,
    tol: float,
    threads: int,
    out_dtype: np.dtype,
    device: torch.device,
    row_name: Callable[[int, int], str],
    *,
    class_weight: str = "none",
) -> LogisticModel:
    """Solve every unit with :func:`_lbfgs_unit`, ``threads`` at a time; collect a LogisticModel.

    ``row_name(u, i)`` names unit ``u``'s row ``i`` in error messages.
    """
    U = len(units)
    theta = np.zeros((U, d + 1))
    n_iter = np.zeros(U, dtype=np.int64)
    conv = np.ones(U, dtype=bool)
    todo = [u for u in range(U) if units[u].X.shape[0] > 0]

    def solve(u: int) -> None:
        w0 = None if W0 is None else W0[u]
        b = 0.0 if b0 is None else float(b0[u])
        X = units[u].X
        try:
            Cu = C if class_weight == "none" else C * balanced_weights(units[u].y)
            n_iter[u], conv[u] = _lbfgs_unit(X, units[u].y, w0, b, Cu, tol, max_iter, theta[u])
        except _NotFinite:
            with np.errstate(over="ignore", invalid="ignore"):
                bad = np.flatnonzero(~np.isfinite(X.sum(axis=1)))
            if bad.size:
                raise ValueError(
                    f"{row_name(u, int(bad[0]))} has non-finite (or overflowing) values: drop or fix that row"
                ) from None
            raise ValueError(
                f"unit {u}: products of its rows with the weights overflow {X.dtype} "
                f"(largest |value| {float(np.abs(X).max()):.3g}); scale the features down"
            ) from None

    if todo:
        with _blas_single_thread():
            workers = min(threads, len(todo))
            if sum(units[u].X.size for u in todo) < _PARALLEL_MIN_SIZE * len(todo):
                # Small units are Python-bound: the GIL would serialise the threads anyway, and
                # handing it back and forth made 2 threads up to 2.5x slower than 1 (measured).
                workers = 1
            if workers == 1:
                for u in todo:
                    solve(u)
            else:
                with ThreadPoolExecutor(max_workers=workers) as ex:
                    list(ex.map(solve, todo))
    tdt = torch.float64 if out_dtype == np.float64 else torch.float32
    th = torch.from_numpy(theta)
    return LogisticModel(
        W=th[:, :d].to(device=device, dtype=tdt),
        b=th[:, d].to(device=device, dtype=tdt),
        n_iter=torch.from_numpy(n_iter).to(device),
        converged=torch.from_numpy(conv).to(device),
        method="lbfgs",
    )


def _next_step(t: float, d1: float, d2: float, lo: float, hi: float) -> float:
    """The next trial of the safeguarded 1-D Newton search on ``phi'`` within the bracket ``(lo, hi)``.

    ``d1``, ``d2`` are ``phi'(t)`` and ``phi''(t)``. The Newton step when it stays inside the bracket;
    otherwise expand (no upper end yet), bisect, or shrink geometrically towards 0 (the minimiser can
    be tiny after a poor start). The caller stops when the result is within round-off of ``t``.
    """
    tn = t - d1 / d2 if d2 > 0.0 else math.nan
    if lo < tn < hi:
        return tn
    if hi == math.inf:
        return min(4.0 * t, 1e12)
    if lo > 0.0:
        return 0.5 * (lo + hi)
    return 0.1 * hi


def _lbfgs_unit(
    X: np.ndarray,
    y: np.ndarray,
    w0: np.ndarray | None,
    b0: float,
    C: float,
    tol: float,
    max_iter: int,
    theta: np.ndarray,
) -> tuple[int, bool]:
    """Minimise one unit's objective with L-BFGS and an exact line search, in place in ``theta``.

    Args:
        X: ``(n, d)`` C-contiguous float32/float64 rows, ``n >= 1``; products with it run in its
            dtype (BLAS gemv), everything else in float64.
        y: ``(n,)`` float64 0/1 labels.
        w0, b0: warm start, or ``w0=None`` for ``w = 0`` and ``b`` = the labels' log-odds.
        C, tol, max_iter: as in :func:`fit_logistic_units`.
        theta: ``(d + 1,)`` float64 output: the weights, then the intercept.

    Returns:
        ``(iterations, converged)``.
    """
    n, d = X.shape
    npos = float(y.sum())
    both = 0.0 < npos < n
    lam_b = 0.0 if both else 1.0
    if w0 is None:
        theta[:] = 0.0
        if both:
            theta[d] = math.log(npos) - math.log(n - npos)
    else:
        theta[:d] = w0
        theta[d] = b0
    with np.errstate(over="ignore", invalid="ignore"):
        # C may be per row (class weights): the stopping scale is C times the summed sample weights
        ctot = float(np.sum(C)) if isinstance(C, np.ndarray) else C * n
        return _lbfgs_run(X, y, theta, lam_b, C, tol * ctot, max_iter, w0 is None)


def _lbfgs_run(
    X: np.ndarray,
    y: np.ndarray,
    theta: np.ndarray,
    lam_b: float,
    C: float,
    thr: float,
    max_iter: int,
    cold: bool,
) -> tuple[int, bool]:
    """The L-BFGS iterations of :func:`_lbfgs_unit`; stops when ``max|grad F| <= thr``."""
    n, d = X.shape
    m = _LBFGS_MEMORY
    f64 = np.float64
    dot = np.dot
    w = theta[:d]
    # O(n) float64 work arrays: logits z, trial logits zt, probabilities q, residuals, X @ direction s.
    z, zt, q, res, s, Cs, Cs2, h = (np.empty(n) for _ in range(8))
    # Products with X run in X's dtype.
    v_x = np.empty(d, X.dtype)
    n_x = np.empty(n, X.dtype)
    g_x = np.empty(d, X.dtype)
    g = np.empty(d + 1)
    gw = g[:d]
    dirn = np.empty(d + 1)
    dw = dirn[:d]
    tmp = np.empty(d + 1)
    # L-BFGS memory in compact form (Byrd, Nocedal & Schnabel 1994), in ring-buffer order: rows of SY
    # are the steps s_i then the gradient changes y_i; Rinv is the inverse of the upper triangle of
    # S^T Y in chronological order (dropping the oldest pair = zeroing its row and column), YY = Y Y^T,
    # Dg = diag(S^T Y). Empty slots are all zero and drop out of every product.
    SY = np.zeros((2 * m, d + 1))
    Rinv = np.zeros((m, m))
    YY = np.zeros((m, m))
    Dg = np.zeros(m)
    coef = np.zeros(2 * m)
    top = coef[:m]
    bot = coef[m:]
    npairs = 0
    slot = 0
    gamma = 1.0

    def sigmoid(src: np.ndarray) -> None:
        np.negative(src, out=q)
        np.exp(q, out=q)
        np.add(q, 1.0, out=q)
        np.reciprocal(q, out=q)

    def forget() -> None:
        # Drop the curvature pairs (after a step that did not descend): the next direction is -g.
        for a in (SY, Rinv, YY, Dg):
            a.fill(0.0)

    def logits() -> float:
        np.copyto(v_x, w, casting="same_kind")
        dot(X, v_x, out=n_x)
        np.add(n_x, theta[d], out=z, dtype=f64)
        return float(np.abs(z).max())

    def gradient() -> float:
        # Needs q = sigmoid(z) and res = q - y; returns max|g|.
        np.multiply(res, C, out=res)
        np.copyto(n_x, res, casting="same_kind")
        dot(n_x, X, out=g_x)
        np.add(w, g_x, out=gw)
        g[d] = res.sum() + lam_b * theta[d]
        return max(float(g.max()), -float(g.min()))

    if cold:
        z.fill(theta[d])  # w = 0: no pass over X needed
        zmax = abs(float(theta[d]))
    else:
        zmax = logits()
    sigmoid(z)
    np.subtract(q, y, out=res)
    gradient()
    gmax = float(np.abs(g).max())
    if not (math.isfinite(gmax) and math.isfinite(zmax)):
        # Every row enters the first products with a nonzero weight, so a non-finite value anywhere
        # in X (or an overflow) shows here: this is the check of the data, at no extra pass.
        raise _NotFinite
    zpath = zmax
    it = 0
    while True:
        if gmax <= thr:
            return it, True
        if it >= max_iter:
            return it, False
        if npairs:
            v = dot(SY, g)
            u = dot(Rinv, v[:m])
            x = dot(YY, u)
            x -= v[m:]
            x *= gamma
            x += Dg * u
            dot(x, Rinv, out=top)
            np.multiply(u, -gamma, out=bot)
            dot(coef, SY, out=dirn)
            np.multiply(g, gamma, out=tmp)
            dirn += tmp
            np.negative(dirn, out=dirn)
        else:
            # Steepest descent, normalised so that X @ dirn cannot overflow whatever the scale of X.
            np.multiply(g, -1.0 / gmax, out=dirn)
        dphi0 = float(dot(g, dirn))
        if not dphi0 < 0.0:
            # Round-off: the direction does not descend. Forget the memory and try -g; if even that
            # fails, this is the floor of what the float arithmetic can resolve.
            if npairs:
                npairs = slot = 0
                forget()
                continue
            return it, False
        db = float(dirn[d])
        np.copyto(v_x, dw, casting="same_kind")
        a0 = float(dot(w, dw)) + lam_b * float(theta[d]) * db
        a1 = float(dot(dw, dw)) + lam_b * db * db
        dot(X, v_x, out=n_x)
        np.add(n_x, db, out=s, dtype=f64)
        smax = max(float(s.max()), -float(s.min()))
        if not smax < math.inf:
            raise _NotFinite  # X @ dirn overflowed
        np.multiply(s, C, out=Cs)
        np.multiply(Cs, s, out=Cs2)
        # First trial step: the 1-D Newton step from 0 (q = sigmoid(z) at the current point).
        np.subtract(1.0, q, out=h)
        h *= q
        d2 = a1 + float(dot(h, Cs2))
        t = -dphi0 / d2 if d2 > 0.0 else 1.0
        # Line search on phi(t) = F(theta + t * dirn): phi'(t) = a0 + t a1 + C sum (sigmoid(z + t s) - y) s.
        target = -_LBFGS_ETA * dphi0
        ok = False
        lo = 0.0
        hi = math.inf
        for _ in range(_LS_MAX):
            np.multiply(s, t, out=zt)
            zt += z
            sigmoid(zt)
            np.subtract(q, y, out=res)
            d1 = a0 + t * a1 + float(dot(res, Cs))
            if abs(d1) <= target:
                ok = True
                break
            if d1 > 0.0:
                hi = t
            else:
                lo = t
            np.subtract(1.0, q, out=h)
            h *= q
            d2 = a1 + float(dot(h, Cs2))
            tn = _next_step(t, d1, d2, lo, hi)
            if abs(tn - t) <= 1e-12 * t:
                ok = True  # the 1-D Newton step is below round-off: t is the minimiser
                break
            t = tn
        if not ok:
            t = lo
            if t > 0.0:
                np.multiply(s, t, out=zt)
                zt += z
                sigmoid(zt)
                np.subtract(q, y, out=res)
            else:
                sigmoid(z)  # restore q = sigmoid(z) at the unchanged point
                if npairs:
                    npairs = slot = 0
                    forget()
                    continue
                return it, False
        # Accept the step: theta += t dirn, z = zt (incrementally updated logits).
        s_new = SY[slot]
        y_new = SY[m + slot]
        np.multiply(dirn, t, out=s_new)
        theta += s_new
        z, zt = zt, z
        zpath += t * smax
        np.abs(z, out=h)
        zmax = float(h.max())
        if zpath > 10.0 * (1.0 + zmax):
            # The incremental logits carry float round-off in proportion to the distance travelled:
            # recompute them when that exceeds ten times their size (a far-off start; rare).
            zmax = logits()
            zpath = zmax
            sigmoid(z)
            np.subtract(q, y, out=res)
        np.negative(g, out=y_new)
        gmax = gradient()
        if not gmax < math.inf:
            raise _NotFinite  # the products overflowed
        y_new += g
        it += 1
        # Update the compact L-BFGS memory with (s_new, y_new).
        sy = float(dot(s_new, y_new))
        wv = dot(SY, y_new)
        yy = float(wv[m + slot])
        Rinv[slot, :] = 0.0
        Rinv[:, slot] = 0.0
        if sy > 2.2e-16 * yy and yy > 0.0:
            col = dot(Rinv, wv[:m])
            col *= -1.0 / sy
            Rinv[:, slot] = col
            Rinv[slot, slot] = 1.0 / sy
            YY[slot, :] = wv[m:]
            YY[:, slot] = wv[m:]
            Dg[slot] = sy
            gamma = sy / yy
            npairs = min(npairs + 1, m)
            slot = (slot + 1) % m
        else:
            # No usable curvature (round-off): drop this slot (the oldest pair when full).
            s_new.fill(0.0)
            y_new.fill(0.0)
            YY[slot, :] = 0.0
            YY[:, slot] = 0.0
            Dg[slot] = 0.0
            if npairs == m:
                npairs -= 1


def _per_unit_loops(X: torch.Tensor) -> bool:
    """Whether products with X run unit by unit (CPU) rather than batched (GPU)."""
    return X.device.type == "cpu"


def _matvec(X: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``X (k, L, d) @ w (k, d)`` in X's dtype, returned as float64 ``(k, L)``.

    On CPU a per-unit loop of ``mv`` is ~3x faster than one ``bmm`` (measured: batched matrix-vector
    products do not reach memory bandwidth there); on GPUs one batched call is better.
    """
    wc = w.to(X.dtype)
    if not _per_unit_loops(X):
        return torch.bmm(X, wc[:, :, None]).squeeze(-1).to(_F64)
    out = torch.empty(X.shape[0], X.shape[1], dtype=X.dtype)
    for u in range(X.shape[0]):
        torch.mv(X[u], wc[u], out=out[u])
    return out.to(_F64)


def _rmatvec(X: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """``X (k, L, d)^T @ r (k, L)`` in X's dtype, returned as float64 ``(k, d)`` (see :func:`_matvec`)."""
    rc = r.to(X.dtype)
    if not _per_unit_loops(X):
        return torch.bmm(X.transpose(1, 2), rc[:, :, None]).squeeze(-1).to(_F64)
    out = torch.empty(X.shape[0], X.shape[2], dtype=X.dtype)
    for u in range(X.shape[0]):
        torch.mv(X[u].T, rc[u], out=out[u])
    return out.to(_F64)


def _masked_absmax(v: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Per-row max of ``|v|`` over the entries where ``keep`` is true (0 for rows with none)."""
    if v.shape[1] == 0:
        return torch.zeros(v.shape[0], dtype=v.dtype, device=v.device)
    return torch.where(keep, v.abs(), torch.zeros((), dtype=v.dtype, device=v.device)).amax(dim=1)


def _hessian_cholesky(
    X: torch.Tensor, D: torch.Tensor, lam_b: torch.Tensor, b_floor: torch.Tensor
) -> torch.Tensor:
    """Lower Cholesky factors of the bordered Hessians ``[[I + X^T D X, X^T D], [D^T X, sum D + lam_b]]``.

    Args:
        X: ``(k, L, d)`` rows.
        D: ``(k, L)`` float64 curvature weights ``C * mask * p * (1 - p)``.
        lam_b: ``(k,)`` intercept penalty (0 or 1).
        b_floor: ``(k,)`` small curvature added to the intercept's diagonal entry.

    Returns:
        ``(k, d + 1, d + 1)`` float64 lower-triangular factors.
    """
    k, L, d = X.shape
    H = torch.empty(k, d + 1, d + 1, dtype=_F64, device=X.device)
    if _per_unit_loops(X):
        # Per-unit products are faster than bmm on CPU (see _matvec) and need no big temporary.
        # H is symmetric: with the columns split in two halves, three of the four blocks suffice.
        h = d // 2
        for u in range(k):
            Xu = X[u]
            XD = Xu * D[u].to(X.dtype)[:, None]
            if h >= 64:
                H[u, :h, :h] = torch.mm(XD[:, :h].T, Xu[:, :h])
                H[u, h:d, :d] = torch.mm(XD[:, h:].T, Xu)
                H[u, :h, h:d] = H[u, h:d, :h].T
            else:
                H[u, :d, :d] = torch.mm(XD.T, Xu)
            H[u, :d, d] = XD.sum(dim=0)
    else:
        step = max(1, _HESSIAN_TMP_BYTES // max(1, L * d * X.element_size()))
        for s in range(0, k, step):
            Xs = X[s : s + step]
            XD = Xs * D[s : s + step].to(X.dtype)[:, :, None]
            H[s : s + step, :d, :d] = torch.bmm(XD.transpose(1, 2), Xs)
            H[s : s + step, :d, d] = XD.sum(dim=1)
    H[:, d, :d] = H[:, :d, d]
    # Floor on the intercept's curvature: with every probability saturated (a far-off start) it
    # vanishes and the Newton step in b would explode. This changes only the preconditioner.
    H[:, d, d] = D.sum(dim=1) + lam_b + b_floor
    H.diagonal(dim1=1, dim2=2)[:, :d] += 1.0
    factor, info = torch.linalg.cholesky_ex(H)
    jitter = 1e-12
    while bool((info != 0).any()):
        # Only the intercept's curvature can vanish (all p saturated); nudge the diagonal.
        bad = info != 0
        scale = H[bad].diagonal(dim1=1, dim2=2).abs().amax(dim=1)
        Hb = H[bad] + (jitter * (1.0 + scale))[:, None, None] * torch.eye(d + 1, dtype=_F64, device=X.device)
        fb, ib = torch.linalg.cholesky_ex(Hb)
        factor[bad] = fb
        info[bad] = ib
        jitter *= 100.0
        if jitter > 1.0:  # pragma: no cover - H >= I on the weights, so this cannot persist
            raise FloatingPointError("Hessian factorisation failed")
    return factor


def _line_search(
    z: torch.Tensor,
    s: torch.Tensor,
    y: torch.Tensor,
    wts: torch.Tensor,
    a0: torch.Tensor,
    a1: torch.Tensor,
    dphi0: torch.Tensor,
) -> torch.Tensor:
    """Exact-ish line search on the convex ``phi(t) = F(theta + t delta)``, batched over units.

    ``phi'(t) = a0 + t a1 + sum_i wts_i (sigmoid(z_i + t s_i) - y_i) s_i`` where ``s = X delta_w +
    delta_b``, ``a0 = <theta, delta>_reg`` and ``a1 = ||delta||^2_reg``. Safeguarded 1-D Newton
    within a bracket, starting at ``t = 1``; accepts ``|phi'(t)| <= eta |phi'(0)|``. Units whose
    direction is not a descent direction get ``t = 0``; a unit that fails to converge gets the
    bracket's lower end, which still decreases ``F``.

    Returns:
        ``(k,)`` float64 step lengths.
    """
    k = z.shape[0]
    t = torch.ones(k, dtype=_F64, device=z.device)
    lo = torch.zeros_like(t)
    hi = torch.full_like(t, math.inf)
    target = _LS_ETA * dphi0.abs()
    ok = dphi0 >= 0
    t = torch.where(ok, lo, t)
    for _ in range(_LS_MAX):
        q = torch.sigmoid(z + t[:, None] * s)
        ws = wts * s
        d1 = a0 + t * a1 + ((q - y) * ws).sum(dim=1)
        ok = ok | (d1.abs() <= target)
        if bool(ok.all()):
            return t
        d2 = a1 + (q * (1.0 - q) * ws * s).sum(dim=1)
        pos = d1 > 0
        hi = torch.where(~ok & pos, t, hi)
        lo = torch.where(~ok & ~pos, t, lo)
        tn = t - d1 / d2
        # Fallback when the Newton step leaves the bracket: expand, shrink geometrically towards 0
        # (the minimiser can be tiny after a poor start), or bisect.
        mid = torch.where(
            torch.isinf(hi),
            torch.clamp(4.0 * t, max=1e12),
            torch.where(lo > 0, 0.5 * (lo + hi), 0.1 * hi),
        )
        good = (tn > lo) & (tn < hi) & torch.isfinite(tn)
        t = torch.where(ok, t, torch.where(good, tn, mid))
    return torch.where(ok, t, lo)


def _fit(
    X: torch.Tensor,
    y: torch.Tensor,
    mask: torch.Tensor,
    start: _Start | None,
    C: float,
    max_iter: int,
    tol: float,
    keep_factor: bool,
    class_weight: str = "none",
) -> LogisticModel:
    """Solve one chunk of units (inputs already validated)."""
    U, L, d = X.shape
    dev = X.device
    m = mask.to(_F64)
    yv = torch.where(mask, y.to(_F64), torch.zeros((), dtype=_F64, device=dev))
    n = m.sum(dim=1)
    npos = yv.sum(dim=1)
    both = (npos > 0) & (npos < n)
    wts = C * m
    if class_weight == "balanced":  # n / (2 n_class) per row; 1 for one-class units (as scikit-learn)
        w_pos = torch.where(both, n / (2.0 * npos.clamp(min=1.0)), torch.ones_like(n))
        w_neg = torch.where(both, n / (2.0 * (n - npos).clamp(min=1.0)), torch.ones_like(n))
        wts = wts * torch.where(yv > 0.5, w_pos[:, None], w_neg[:, None])
    lam_b = (~both).to(_F64)
    b_floor = 1e-6 * (1.0 + wts.sum(dim=1))
    if start is None:
        W = torch.zeros(U, d, dtype=_F64, device=dev)
        odds = torch.log(npos.clamp(min=1.0)) - torch.log((n - npos).clamp(min=1.0))
        b = torch.where(both, odds, torch.zeros_like(odds))
    else:
        W = start.W.clone()
        b = start.b.clone()

    # Outputs for the whole chunk; the working set below shrinks (is compacted) as units converge.
    W_out, b_out = W.clone(), b.clone()
    it_out = torch.zeros(U, dtype=torch.int64, device=dev)
    conv_out = torch.zeros(U, dtype=torch.bool, device=dev)

    idx = torch.arange(U, device=dev)
    Xa = X
    z = _matvec(Xa, W) + b[:, None]
    # Logits are updated incrementally (z += t * X @ delta), which accumulates float32 round-off in
    # proportion to the distance travelled; zpath tracks that distance so z can be recomputed.
    real = mask.clone()
    zpath = _masked_absmax(z, real)
    if start is not None and start.factor is not None:
        chol = start.factor.to(dtype=_F64, copy=True)
        need_h = torch.zeros(U, dtype=torch.bool, device=dev)
    else:
        # Filled for every unit by the first iteration (need_h is all true).
        chol = torch.empty(U, d + 1, d + 1, dtype=_F64, device=dev)
        need_h = torch.ones(U, dtype=torch.bool, device=dev)
    F_out = torch.empty(U, d + 1, d + 1, device=dev) if keep_factor else None
    gprev = torch.full((U,), math.inf, dtype=_F64, device=dev)
    n_it = torch.zeros(U, dtype=torch.int64, device=dev)
    active = torch.ones(U, dtype=torch.bool, device=dev)
    conv = torch.zeros(U, dtype=torch.bool, device=dev)

    for _ in range(max_iter):
        n_act = int(active.sum())
        if n_act == 0:
            break
        if n_act <= active.numel() // 2:
            W_out[idx], b_out[idx], it_out[idx], conv_out[idx] = W, b, n_it, conv
            if F_out is not None:
                F_out[idx] = chol.to(torch.float32)
            keep = active.nonzero().squeeze(1)
            idx, Xa = idx[keep], Xa[keep]
            W, b, z, yv, wts, lam_b = W[keep], b[keep], z[keep], yv[keep], wts[keep], lam_b[keep]
            b_floor, real, zpath = b_floor[keep], real[keep], zpath[keep]
            chol, need_h, gprev, n_it, active, conv = (
                chol[keep],
                need_h[keep],
                gprev[keep],
                n_it[keep],
                active[keep],
                conv[keep],
            )

        p = torch.sigmoid(z)
        r = wts * (p - yv)
        g = torch.cat([W + _rmatvec(Xa, r), (lam_b * b + r.sum(dim=1))[:, None]], dim=1)
        gn = g.abs().amax(dim=1)
        refresh = active & (need_h | (gn > _REFRESH_RATIO * gprev))
        if bool(refresh.any()):
            D = wts * p * (1.0 - p)
            if bool(refresh.all()):
                chol = _hessian_cholesky(Xa, D, lam_b, b_floor)
            else:
                ri = refresh.nonzero().squeeze(1)
                chol[ri] = _hessian_cholesky(Xa[ri], D[ri], lam_b[ri], b_floor[ri])
            need_h = need_h & ~refresh
        gprev = torch.where(active, gn, gprev)

        # Two triangular solves: much faster than torch.cholesky_solve for batched single vectors.
        half = torch.linalg.solve_triangular(chol, g[:, :, None], upper=False)
        delta = -torch.linalg.solve_triangular(chol.mT, half, upper=True).squeeze(-1)
        dw, db = delta[:, :d], delta[:, d]
        s = _matvec(Xa, dw) + db[:, None]
        dphi0 = (g * delta).sum(dim=1)
        a0 = (W * dw).sum(dim=1) + lam_b * b * db
        a1 = (dw * dw).sum(dim=1) + lam_b * db * db
        dphi0 = torch.where(active, dphi0, torch.zeros_like(dphi0))
        t = _line_search(z, s, yv, wts, a0, a1, dphi0)
        t = torch.where(active & (dphi0 < 0), t, torch.zeros_like(t))

        W = W + t[:, None] * dw
        b = b + t * db
        z = z + t[:, None] * s
        n_it = n_it + active.to(torch.int64)
        step = t * delta.abs().amax(dim=1)
        scale = 1.0 + torch.maximum(W.abs().amax(dim=1), b.abs())
        # A short step proves convergence only along a good direction: a fresh factor, or a stale
        # one the line search did not have to shrink much. No progress at all (t = 0) is the
        # round-off floor with a fresh factor; a stale factor giving a poor step is rebuilt.
        trusted = refresh | (t >= 0.25)
        stalled = active & (t <= 0)
        done = active & (((step <= tol * scale) & (t > 0) & trusted) | (stalled & refresh))
        need_h = need_h | (active & ~done & ~trusted)
        conv = conv | done
        active = active & ~done
        zpath = zpath + t * _masked_absmax(s, real)
        stale = active & (zpath > 10.0 * (1.0 + _masked_absmax(z, real)))
        if bool(stale.any()):
            si = stale.nonzero().squeeze(1)
            z[si] = _matvec(Xa[si], W[si]) + b[si, None]
            zpath[si] = _masked_absmax(z[si], real[si])

    W_out[idx], b_out[idx], it_out[idx], conv_out[idx] = W, b, n_it, conv
    if F_out is not None:
        F_out[idx] = chol.to(torch.float32)
    return LogisticModel(
        W=W_out.to(X.dtype),
        b=b_out.to(X.dtype),
        n_iter=it_out,
        converged=conv_out,
        factor=F_out,
        method="newton",
    )
