"""Reports for a finished (or running) SEALS run: the paper-style table and Figure-1-style plots.

A run directory holds ``config.json`` and ``metrics.parquet``. The metrics have one row per
(concept, strategy, mode, round) with the columns in :data:`REQUIRED_COLUMNS`; rows with strategy
``full`` or mode ``supervised`` are a full-supervision reference (one per concept, only ``test_ap`` is used).

- :func:`load_metrics` reads and validates the table (clear :class:`ReportError` otherwise);
- :func:`summarize` gives the Table-1-style rows (Coleman et al.): metrics at the final budget of every
  concept, averaged over concepts, plus the SEALS-vs-All gap per strategy;
- :func:`format_table` renders those rows as aligned plain text;
- :func:`make_plots` writes ``ap.png``, ``recall.png``, ``pool_fraction.png`` and ``summary.json``, and for
  a run with ``--probe`` ``recall_estimate.png`` (the probe estimate of recall with its band, against the
  true recall where the store has labels; :mod:`seals_gpu.probe`);
- :func:`report` does all of it for a run directory (plots into ``RUN_DIR/plots``).

Matplotlib is imported only inside :func:`make_plots`, through the object API (``Figure`` +
``FigureCanvasAgg``), so no global backend or pyplot state is touched.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .atomic import atomic_path, write_json
from .errors import SealsError

__all__ = [
    "ReportError",
    "REQUIRED_COLUMNS",
    "STRATEGY_ORDER",
    "MODE_ORDER",
    "METRICS_FILE",
    "PLOTS_DIR",
    "load_metrics",
    "summarize",
    "format_table",
    "make_plots",
    "report",
]

METRICS_FILE = "metrics.parquet"
PLOTS_DIR = "plots"

STRATEGY_ORDER = ("maxent", "mlp", "id", "id-knn", "id-pairwise", "random")
MODE_ORDER = ("all", "seals")
REFERENCE_STRATEGY = "full"
REFERENCE_MODE = "supervised"

_INT_COLUMNS = ("round", "n_labeled", "n_positives", "pool_size")
_FLOAT_COLUMNS = (
    "pool_fraction",
    "test_ap",
    "recall",
    "seconds_fit",
    "seconds_search",
    "seconds_select",
    "seconds_round",
)
_KEY_COLUMNS = ("concept", "strategy", "mode")
REQUIRED_COLUMNS = _KEY_COLUMNS + _INT_COLUMNS + _FLOAT_COLUMNS

# Per-round timing columns averaged over rounds >= 1 (round 0 is the seed set: nothing is selected).
_TIME_COLUMNS = ("seconds_select", "seconds_round", "seconds_fit", "seconds_search")
# Metrics taken at each concept's final round.
_FINAL_COLUMNS = ("test_ap", "recall", "pool_fraction", "n_positives")


class ReportError(SealsError):
    """The run directory or its ``metrics.parquet`` is missing, corrupt or lacks columns."""


# ----------------------------------------------------------------------------------------------------
# Loading


def load_metrics(run_dir: str | os.PathLike[str]) -> pa.Table:
    """Read and validate ``RUN_DIR/metrics.parquet`` (a path to the Parquet file itself is accepted too).

    Columns are normalised: integer columns to ``int64``, float columns to ``float64`` (nulls become NaN),
    ``strategy``/``mode`` to ``string``, ``concept`` to ``int64`` or ``string``. Extra columns pass through.
    """
    path = Path(run_dir)
    if path.is_file() and path.suffix == ".parquet":
        file = path
    else:
        if not path.exists():
            raise ReportError(
                f"run directory {path} does not exist: pass the folder a run wrote "
                f"(it holds config.json and {METRICS_FILE})"
            )
        if not path.is_dir():
            raise ReportError(f"{path} is not a directory: pass the run folder that holds {METRICS_FILE}")
        file = path / METRICS_FILE
        if not file.is_file():
            raise ReportError(
                f"{file} is missing: the run has not recorded any round yet, or {path} is not a run "
                f"directory; run it first or pass the right folder"
            )
    try:
        table = pq.read_table(file)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise ReportError(
            f"{file} is not a readable Parquet file ({type(e).__name__}: {e}); it is corrupt or was cut "
            f"short: delete it and re-run the experiment"
        ) from e

    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise ReportError(
            f"{file} lacks column(s) {', '.join(missing)} (has: {', '.join(table.column_names)}); "
            f"it was not written by seals_gpu or by an older version: re-run the experiment"
        )
    if table.num_rows == 0:
        raise ReportError(f"{file} has no rows: the run recorded no round yet; wait for it or re-run it")

    columns: dict[str, pa.ChunkedArray] = {}
    for name in REQUIRED_COLUMNS:
        col = table.column(name)
        if pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        t = col.type
        if name == "concept":
            if pa.types.is_integer(t):
                target = pa.int64()
            elif pa.types.is_string(t) or pa.types.is_large_string(t):
                target = pa.string()
            else:
                raise _type_error(file, name, t, "an integer or string")
        elif name in ("strategy", "mode"):
            if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
                raise _type_error(file, name, t, "string")
            target = pa.string()
        elif name in _INT_COLUMNS:
            if not pa.types.is_integer(t):
                raise _type_error(file, name, t, "int64")
            target = pa.int64()
        else:
            if not (pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_null(t)):
                raise _type_error(file, name, t, "float64")
            target = pa.float64()
        if col.type != target:
            col = col.cast(target)
        if name in _KEY_COLUMNS and col.null_count:
            raise ReportError(
                f"{file}: column {name!r} has {col.null_count} null value(s); every row needs a "
                f"concept, strategy and mode: re-run the experiment"
            )
        if name in _FLOAT_COLUMNS and col.null_count:
            col = pc.fill_null(col, float("nan"))
        columns[name] = col

    for i, name in enumerate(table.column_names):
        if name in columns:
            table = table.set_column(i, name, columns[name])
    return table


def _type_error(file: Path, name: str, got: pa.DataType, want: str) -> ReportError:
    return ReportError(
        f"{file}: column {name!r} has type {got}, expected {want}; the file was not written by "
        f"seals_gpu: re-run the experiment"
    )


# ----------------------------------------------------------------------------------------------------
# Summary


def _strategy_key(s: str) -> tuple[int, str]:
    return (STRATEGY_ORDER.index(s), "") if s in STRATEGY_ORDER else (len(STRATEGY_ORDER), s)


def _mode_key(m: str) -> tuple[int, str]:
    return (MODE_ORDER.index(m), "") if m in MODE_ORDER else (len(MODE_ORDER), m)


def _is_reference(strategy: str, mode: str) -> bool:
    return strategy == REFERENCE_STRATEGY or mode == REFERENCE_MODE


def _encode(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, list[Any]]:
    """Integer codes and the distinct values of a column (order of first appearance)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    enc = pc.dictionary_encode(col)
    return enc.indices.to_numpy(zero_copy_only=False).astype(np.int64), enc.dictionary.to_pylist()


def _floats(table: pa.Table, name: str) -> np.ndarray:
    col = table.column(name).cast(pa.float64())
    return pc.fill_null(col, float("nan")).to_numpy().astype(np.float64, copy=False)


def _nanmean(x: np.ndarray) -> float | None:
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else None


def _group_means(gid: np.ndarray, x: np.ndarray, n_groups: int, mask: np.ndarray | None = None) -> np.ndarray:
    """Mean of the finite ``x`` per group id (NaN where a group has none)."""
    ok = np.isfinite(x)
    if mask is not None:
        ok &= mask
    sums = np.bincount(gid[ok], weights=x[ok], minlength=n_groups)
    counts = np.bincount(gid[ok], minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


class _Grouped:
    """Per-(strategy, mode, concept) view of a metrics table: final-round values and per-round timings."""

    def __init__(self, table: pa.Table) -> None:
        s_codes, self.strategies = _encode(table.column("strategy"))
        m_codes, self.modes = _encode(table.column("mode"))
        c_codes, self.concepts = _encode(table.column("concept"))
        n_m, n_c = len(self.modes), len(self.concepts)
        rnd = _floats(table, "round")
        rnd = np.where(np.isfinite(rnd), rnd, 0.0)
        key = (s_codes * n_m + m_codes) * n_c + c_codes
        ukeys, gid = np.unique(key, return_inverse=True)
        gid = gid.reshape(-1)
        n_groups = len(ukeys)
        self.g_strategy = ukeys // (n_m * n_c)
        self.g_mode = (ukeys // n_c) % n_m
        self.g_concept = ukeys % n_c
        # Final row per group: highest round; among equal rounds the last row in the file.
        order = np.lexsort((np.arange(len(gid)), rnd, gid))
        sorted_gid = gid[order]
        is_last = np.r_[sorted_gid[1:] != sorted_gid[:-1], True]
        last = order[is_last]  # one per group, in gid order
        self.final: dict[str, np.ndarray] = {}
        for name in _FINAL_COLUMNS + ("n_labeled", "round"):
            self.final[name] = _floats(table, name)[last]
        later = rnd >= 1
        self.per_round: dict[str, np.ndarray] = {
            name: _group_means(gid, _floats(table, name), n_groups, later) for name in _TIME_COLUMNS
        }
        self.n_groups = n_groups
        # Per-(strategy, mode, round) curve data for the plots.
        self._gid, self._rnd, self._table = gid, rnd, table

    def pairs(self) -> list[tuple[int, int]]:
        seen = sorted({(int(s), int(m)) for s, m in zip(self.g_strategy, self.g_mode, strict=True)})
        return sorted(seen, key=lambda p: (_strategy_key(self.strategies[p[0]]), _mode_key(self.modes[p[1]])))

    def groups_of(self, s: int, m: int) -> np.ndarray:
        return np.flatnonzero((self.g_strategy == s) & (self.g_mode == m))

    def curve(self, s: int, m: int, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(mean n_labeled, mean ``name``) per round over the concepts of one strategy/mode."""
        rows = np.isin(self._gid, self.groups_of(s, m))
        rnd = self._rnd[rows]
        rounds, rid = np.unique(rnd, return_inverse=True)
        rid = rid.reshape(-1)
        x = _group_means(rid, _floats(self._table, "n_labeled")[rows], len(rounds))
        y = _group_means(rid, _floats(self._table, name)[rows], len(rounds))
        keep = np.isfinite(x) & np.isfinite(y)
        return x[keep], y[keep]


def summarize(table: pa.Table) -> list[dict[str, Any]]:
    """Table-1-style rows (JSON-ready: missing values are ``None``).

    ``kind == "result"``, one per (strategy, mode), ordered by :data:`STRATEGY_ORDER` then other strategies
    alphabetically, mode ``all`` before ``seals``: ``n_concepts``; at each concept's final round (highest
    ``round``), averaged over concepts: ``test_ap`` (NaN APs skipped; ``n_ap`` counts the finite ones),
    ``recall``, ``pool_fraction``, ``n_positives``, ``n_labeled_mean``/``_min``/``_max``; per-round timings
    ``seconds_select``, ``seconds_round``, ``seconds_fit``, ``seconds_search`` (each averaged over rounds
    >= 1 of a concept, then over concepts).

    ``kind == "reference"``: the full-supervision rows (strategy ``full`` / mode ``supervised``), with
    ``test_ap`` only (other metrics ``None``).

    ``kind == "gap"``, one per strategy that has both modes, after the rest (mode ``"seals-all"``):
    ``test_ap_gap`` and ``recall_gap`` (SEALS minus All, paired over the concepts present in both),
    ``pool_fraction`` (SEALS) and ``select_speedup`` (All / SEALS mean selection seconds).
    """
    if table.num_rows == 0:
        return []
    g = _Grouped(table)
    results: list[dict[str, Any]] = []
    references: list[dict[str, Any]] = []
    for s, m in g.pairs():
        strategy, mode = str(g.strategies[s]), str(g.modes[m])
        idx = g.groups_of(s, m)
        ap = g.final["test_ap"][idx]
        n_lab = g.final["n_labeled"][idx]
        n_lab = n_lab[np.isfinite(n_lab)]
        row: dict[str, Any] = {
            "kind": "result",
            "strategy": strategy,
            "mode": mode,
            "n_concepts": len(idx),
            "n_ap": int(np.isfinite(ap).sum()),
            "test_ap": _nanmean(ap),
            "recall": _nanmean(g.final["recall"][idx]),
            "pool_fraction": _nanmean(g.final["pool_fraction"][idx]),
            "n_positives": _nanmean(g.final["n_positives"][idx]),
            "n_labeled_mean": float(n_lab.mean()) if n_lab.size else None,
            "n_labeled_min": int(n_lab.min()) if n_lab.size else None,
            "n_labeled_max": int(n_lab.max()) if n_lab.size else None,
        }
        for name in _TIME_COLUMNS:
            row[name] = _nanmean(g.per_round[name][idx])
        if _is_reference(strategy, mode):
            row["kind"] = "reference"
            for name in ("recall", "pool_fraction", "n_positives", *_TIME_COLUMNS):
                row[name] = None
            references.append(row)
        else:
            results.append(row)

    gaps: list[dict[str, Any]] = []
    mode_index = {str(v): i for i, v in enumerate(g.modes)}
    if "all" in mode_index and "seals" in mode_index:
        m_all, m_seals = mode_index["all"], mode_index["seals"]
        order = sorted(range(len(g.strategies)), key=lambda s: _strategy_key(str(g.strategies[s])))
        for s in order:
            strategy = str(g.strategies[s])
            if _is_reference(strategy, "all"):
                continue
            i_all, i_seals = g.groups_of(s, m_all), g.groups_of(s, m_seals)
            if not (len(i_all) and len(i_seals)):
                continue
            shared, a_pos, s_pos = np.intersect1d(
                g.g_concept[i_all], g.g_concept[i_seals], assume_unique=True, return_indices=True
            )
            ia, is_ = i_all[a_pos], i_seals[s_pos]

            def diff(name: str, ia: np.ndarray = ia, is_: np.ndarray = is_) -> float | None:
                return _nanmean(g.final[name][is_] - g.final[name][ia])

            sel_all = _nanmean(g.per_round["seconds_select"][ia])
            sel_seals = _nanmean(g.per_round["seconds_select"][is_])
            speedup = sel_all / sel_seals if sel_all is not None and sel_seals else None
            gaps.append(
                {
                    "kind": "gap",
                    "strategy": strategy,
                    "mode": "seals-all",
                    "n_concepts": len(shared),
                    "test_ap_gap": diff("test_ap"),
                    "recall_gap": diff("recall"),
                    "pool_fraction": _nanmean(g.final["pool_fraction"][is_]),
                    "select_speedup": speedup,
                }
            )
    return results + references + gaps


# ----------------------------------------------------------------------------------------------------
# Text table


def _fmt(x: Any, digits: int, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _fmt_seconds(x: Any) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    x = float(x)
    if x == 0:
        return "0 s"
    a = abs(x)
    if a < 1e-3:
        return f"{x * 1e6:.1f} us"
    if a < 1:
        return f"{x * 1e3:.1f} ms"
    if a < 120:
        return f"{x:.2f} s"
    if a < 7200:
        return f"{x / 60:.1f} min"
    return f"{x / 3600:.2f} h"


def _fmt_labels(row: dict[str, Any]) -> str:
    lo, hi = row.get("n_labeled_min"), row.get("n_labeled_max")
    if lo is None or hi is None:
        return "-"
    return str(lo) if lo == hi else f"{lo}-{hi}"


_MODE_NAMES = {"seals": "SEALS", "all": "All", "supervised": "supervised"}


def _align(header: Sequence[str], body: list[list[str]], left: int) -> list[str]:
    """Columns before ``left`` are left-aligned, the rest right-aligned."""
    widths = [max(len(r[i]) for r in [list(header), *body]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return [line(header), rule, *(line(r) for r in body)]


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Aligned plain-text rendering of :func:`summarize` rows (AP/recall 3 decimals, pool fraction 4)."""
    if not rows:
        return "(no results)\n"
    main = [r for r in rows if r.get("kind", "result") in ("result", "reference")]
    gaps = [r for r in rows if r.get("kind") == "gap"]
    out: list[str] = []
    if main:
        header = [
            "strategy",
            "mode",
            "concepts",
            "labels",
            "AP",
            "recall",
            "pool frac",
            "select/round",
            "round",
        ]
        body = []
        for r in main:
            ref = r.get("kind") == "reference"
            body.append(
                [
                    str(r["strategy"]),
                    _MODE_NAMES.get(str(r["mode"]), str(r["mode"])) + (" (ref)" if ref else ""),
                    str(r.get("n_concepts", "-")),
                    _fmt_labels(r),
                    _fmt(r.get("test_ap"), 3),
                    _fmt(r.get("recall"), 3),
                    _fmt(r.get("pool_fraction"), 4),
                    _fmt_seconds(r.get("seconds_select")),
                    _fmt_seconds(r.get("seconds_round")),
                ]
            )
        out += ["Final budget, mean over concepts (times: mean per round, rounds >= 1)", ""]
        out += _align(header, body, left=2)
    if gaps:
        if out:
            out.append("")
        header = ["strategy", "concepts", "AP gap", "recall gap", "SEALS pool frac", "select speedup"]
        body = [
            [
                str(r["strategy"]),
                str(r.get("n_concepts", "-")),
                _fmt(r.get("test_ap_gap"), 3, signed=True),
                _fmt(r.get("recall_gap"), 3, signed=True),
                _fmt(r.get("pool_fraction"), 4),
                "-" if r.get("select_speedup") is None else f"{r['select_speedup']:.1f}x",
            ]
            for r in gaps
        ]
        out += ["SEALS - All (paired over shared concepts; speedup = All / SEALS selection time)", ""]
        out += _align(header, body, left=1)
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------------------------------
# Plots

_PLOTS = (
    ("ap.png", "test_ap", "mean test AP"),
    ("recall.png", "recall", "mean recall (positives found)"),
    ("pool_fraction.png", "pool_fraction", "mean pool fraction"),
)
_LINESTYLES = {"seals": "-", "all": "--"}


def _colour(strategy: str, others: Sequence[str]) -> str:
    palette = [f"C{i}" for i in range(10)]
    if strategy in STRATEGY_ORDER:
        return palette[STRATEGY_ORDER.index(strategy)]
    return palette[(len(STRATEGY_ORDER) + list(others).index(strategy)) % len(palette)]


def make_plots(table: pa.Table, out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write ``ap.png``, ``recall.png``, ``pool_fraction.png`` (metric vs labels, one line per
    strategy/mode: solid SEALS, dashed All, one colour per strategy) and ``summary.json`` (the
    :func:`summarize` rows) into ``out_dir``, each atomically. Returns the paths written."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out_dir = Path(out_dir)
    # every output checked before the first is written: a folder (or anything but a file) where a plot or
    # summary.json goes could not be replaced, and would leave the plots half old, half new
    for name in [f for f, _, _ in _PLOTS] + ["summary.json"]:
        target = out_dir / name
        if os.path.lexists(target) and not target.is_file():
            what = "a folder" if target.is_dir() else "not a regular file"
            raise ReportError(
                f"cannot write the plots: {target} is {what}; remove or rename it, or pass --no-plots"
            )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(out_dir, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as e:
        raise ReportError(
            f"cannot write the plots to {out_dir} ({e.strerror or e}); remove or rename what is "
            "there, or pass --no-plots"
        ) from None
    rows = summarize(table)
    written: list[Path] = []
    g = _Grouped(table) if table.num_rows else None
    pairs = g.pairs() if g is not None else []
    refs = [r for r in rows if r["kind"] == "reference" and r.get("test_ap") is not None]
    others = sorted(
        {str(g.strategies[s]) for s, _ in pairs if str(g.strategies[s]) not in STRATEGY_ORDER} if g else set()
    )

    probe_plot = _has_probe_estimate(table)
    if probe_plot:
        target = out_dir / PROBE_PLOT
        if os.path.lexists(target) and not target.is_file():
            raise ReportError(
                f"cannot write the plots: {target} is not a regular file; remove or rename it, or pass --no-plots"
            )
    for filename, column, ylabel in _PLOTS:
        fig = Figure(figsize=(7, 4.5), dpi=100, layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        positive = True
        for s, m in pairs:
            strategy, mode = str(g.strategies[s]), str(g.modes[m])
            if _is_reference(strategy, mode):
                continue
            x, y = g.curve(s, m, column)
            if not x.size:
                continue
            positive &= bool((y > 0).all())
            ax.plot(
                x,
                y,
                linestyle=_LINESTYLES.get(mode, ":"),
                color=_colour(strategy, others),
                marker="o",
                markersize=3,
                linewidth=1.5,
                label=f"{strategy} ({_MODE_NAMES.get(mode, mode)})",
            )
        if column == "test_ap":
            for r in refs:
                ax.axhline(
                    r["test_ap"],
                    color="0.4",
                    linestyle=":",
                    linewidth=1.2,
                    label=f"{r['strategy']} ({r['mode']})",
                )
        if column == "pool_fraction" and positive and ax.lines:
            ax.set_yscale("log")
        ax.set_xlabel("labels (n_labeled)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small", loc="best")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        path = out_dir / filename
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
        written.append(path)

    if probe_plot and g is not None:
        written.append(_plot_probe_estimate(g, pairs, others, out_dir / PROBE_PLOT))
    summary = out_dir / "summary.json"
    write_json(summary, rows)
    written.append(summary)
    return written


PROBE_PLOT = "recall_estimate.png"
_PROBE_BAND = ("recall_est", "recall_est_lo", "recall_est_hi")


def _has_probe_estimate(table: pa.Table) -> bool:
    """A run with ``--probe``: its metrics hold a finite recall estimate somewhere."""
    if not all(c in table.column_names for c in _PROBE_BAND):
        return False
    return bool(np.isfinite(_floats(table, "recall_est")).any())


def _plot_probe_estimate(
    g: _Grouped, pairs: list[tuple[int, int]], others: Sequence[str], path: Path
) -> Path:
    """``recall_estimate.png``: per SEALS strategy, the probe estimate of recall (mean over concepts, solid)
    and the mean of the concepts' 95% bounds (band), against the true recall (dashed) where it is known.
    The estimate treats the pool's unlabeled items as negatives, so it sits above the true recall until the
    pool is mined out (see :mod:`seals_gpu.probe`)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for s, m in pairs:
        strategy, mode = str(g.strategies[s]), str(g.modes[m])
        if mode != "seals" or _is_reference(strategy, mode):
            continue
        colour = _colour(strategy, others)
        x, y = g.curve(s, m, "recall_est")
        if not x.size:
            continue
        xl, lo = g.curve(s, m, "recall_est_lo")
        xh, hi = g.curve(s, m, "recall_est_hi")
        if xl.size == x.size and xh.size == x.size:
            ax.fill_between(x, lo, hi, color=colour, alpha=0.15, linewidth=0)
        ax.plot(x, y, color=colour, marker="o", markersize=3, linewidth=1.5, label=f"{strategy}: estimate")
        xt, yt = g.curve(s, m, "recall")
        if xt.size:
            ax.plot(xt, yt, color=colour, linestyle="--", linewidth=1.2, label=f"{strategy}: true recall")
    ax.set_xlabel("labels (n_labeled)")
    ax.set_ylabel("recall, SEALS (probe estimate, 95% band)")
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    if ax.lines:
        ax.legend(fontsize="small", loc="best")
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


# ----------------------------------------------------------------------------------------------------
# Entry point


def report(run_dir: str | os.PathLike[str], *, plots: bool = True) -> tuple[str, list[Path]]:
    """Load ``RUN_DIR/metrics.parquet``, return ``(table text, files written)``; with ``plots`` the
    figures and ``summary.json`` go to ``RUN_DIR/plots`` (nothing is written without it)."""
    table = load_metrics(run_dir)
    text = format_table(summarize(table))
    files: list[Path] = []
    if plots:
        base = Path(run_dir)
        if base.is_file():
            base = base.parent
        files = make_plots(table, base / PLOTS_DIR)
    return text, files
