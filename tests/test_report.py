"""Tests for seals_gpu.report: summary numbers, table text, plots, error messages."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seals_gpu.errors import SealsError
from seals_gpu.report import (
    REQUIRED_COLUMNS,
    ReportError,
    format_table,
    load_metrics,
    make_plots,
    report,
    summarize,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CONCEPTS = [10, 20, 30]
ROUNDS = [0, 1, 2, 3]
STRATEGY_AP = {"maxent": 0.0, "random": -0.2}
MODE_AP = {"all": 0.1, "seals": 0.0}
STRATEGY_RECALL = {"maxent": 0.05, "random": 0.0}
MODE_RECALL = {"all": 0.0, "seals": 0.01}


def _rows(concepts=CONCEPTS, with_reference: bool = True) -> list[dict]:
    """2 strategies x 2 modes x 3 concepts x 4 rounds with closed-form values (see the expectations)."""
    rows = []
    for strategy in ("random", "maxent"):  # deliberately not in the report's order
        for mode in ("seals", "all"):
            for i, concept in enumerate(concepts):
                for r in ROUNDS:
                    if r == 0:
                        sel = 99.0  # the seed round must not count towards selection time
                    elif mode == "all":
                        sel = (1.0 + i) * r
                    else:
                        sel = 0.01 * (1.0 + i) * r
                    rows.append(
                        {
                            "concept": concept,
                            "strategy": strategy,
                            "mode": mode,
                            "round": r,
                            "n_labeled": 10 + 5 * r,
                            "n_positives": 2 + r + i,
                            "pool_size": 1000 if mode == "all" else 10 * (r + 1) * (i + 1),
                            "pool_fraction": 1.0 if mode == "all" else 0.001 * (r + 1) * (i + 1),
                            "test_ap": 0.3 + STRATEGY_AP[strategy] + MODE_AP[mode] + 0.1 * i + 0.05 * r,
                            "recall": 0.1 * r + 0.02 * i + STRATEGY_RECALL[strategy] + MODE_RECALL[mode],
                            "seconds_fit": 0.2,
                            "seconds_search": 0.0 if mode == "all" else 0.003,
                            "seconds_select": sel,
                            "seconds_round": sel + 0.5,
                        }
                    )
    if with_reference:
        for concept, ap in zip(concepts, (0.9, 0.8, 0.7), strict=True):
            rows.append(
                {
                    "concept": concept,
                    "strategy": "full",
                    "mode": "supervised",
                    "round": 0,
                    "n_labeled": 1000,
                    "n_positives": 50,
                    "pool_size": 1000,
                    "pool_fraction": 1.0,
                    "test_ap": ap,
                    "recall": float("nan"),
                    "seconds_fit": 3.0,
                    "seconds_search": 0.0,
                    "seconds_select": 0.0,
                    "seconds_round": 3.0,
                }
            )
    random.Random(0).shuffle(rows)  # the final round must be found by `round`, not by position
    return rows


def _write(run_dir: Path, rows: list[dict]) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text("{}\n")
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, run_dir / "metrics.parquet")
    return run_dir


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    return _write(tmp_path / "run", _rows())


def _by_key(rows: list[dict]) -> dict[tuple[str, str], dict]:
    return {(r["strategy"], r["mode"]): r for r in rows}


def test_summary_numbers(run_dir: Path) -> None:
    rows = summarize(load_metrics(run_dir))
    assert [(r["kind"], r["strategy"], r["mode"]) for r in rows] == [
        ("result", "maxent", "all"),
        ("result", "maxent", "seals"),
        ("result", "random", "all"),
        ("result", "random", "seals"),
        ("reference", "full", "supervised"),
        ("gap", "maxent", "seals-all"),
        ("gap", "random", "seals-all"),
    ]
    by = _by_key(rows)
    # Final round (3): AP = 0.45 + offsets + 0.1 i, mean over i = 0, 1, 2 -> 0.55 + offsets.
    expected_ap = {("maxent", "all"): 0.65, ("maxent", "seals"): 0.55, ("random", "all"): 0.45}
    expected_ap[("random", "seals")] = 0.35
    # Recall at round 3 = 0.3 + 0.02 i + offsets -> 0.32 + offsets.
    expected_recall = {("maxent", "all"): 0.37, ("maxent", "seals"): 0.38, ("random", "all"): 0.32}
    expected_recall[("random", "seals")] = 0.33
    for key, ap in expected_ap.items():
        r = by[key]
        assert r["n_concepts"] == 3 and r["n_ap"] == 3
        assert r["test_ap"] == pytest.approx(ap)
        assert r["recall"] == pytest.approx(expected_recall[key])
        assert r["n_labeled_min"] == r["n_labeled_max"] == 25
        assert r["n_labeled_mean"] == pytest.approx(25.0)
        assert r["n_positives"] == pytest.approx(6.0)  # 2 + 3 + mean(i)
        if key[1] == "all":
            assert r["pool_fraction"] == pytest.approx(1.0)
            # Selection (1 + i) r over r = 1..3 -> 2 (1 + i); mean over concepts 4.0 (99 at round 0 ignored).
            assert r["seconds_select"] == pytest.approx(4.0)
            assert r["seconds_round"] == pytest.approx(4.5)
            assert r["seconds_search"] == pytest.approx(0.0)
        else:
            assert r["pool_fraction"] == pytest.approx(0.008)  # 0.004 (i + 1) at round 3
            assert r["seconds_select"] == pytest.approx(0.04)
            assert r["seconds_round"] == pytest.approx(0.54)
            assert r["seconds_search"] == pytest.approx(0.003)
        assert r["seconds_fit"] == pytest.approx(0.2)

    ref = by[("full", "supervised")]
    assert ref["test_ap"] == pytest.approx(0.8)
    assert ref["n_concepts"] == 3
    assert ref["recall"] is None and ref["seconds_select"] is None

    for strategy in ("maxent", "random"):
        gap = by[(strategy, "seals-all")]
        assert gap["n_concepts"] == 3
        assert gap["test_ap_gap"] == pytest.approx(-0.1)
        assert gap["recall_gap"] == pytest.approx(0.01)
        assert gap["pool_fraction"] == pytest.approx(0.008)
        assert gap["select_speedup"] == pytest.approx(100.0)

    json.dumps(rows, allow_nan=False)  # JSON-ready: no NaN anywhere


def test_string_concepts_nan_ap_and_ordering(tmp_path: Path) -> None:
    rows = _rows(concepts=["cat", "dog", "owl"], with_reference=False)
    for row in rows:
        if row["concept"] == "owl" and row["round"] == 3 and row["strategy"] == "maxent":
            row["test_ap"] = float("nan")
    extra = [dict(r, strategy=s) for r in rows if r["strategy"] == "random" for s in ("zeta", "id", "alpha")]
    run = _write(tmp_path / "run", rows + extra)
    table = load_metrics(run)
    assert table.schema.field("concept").type == pa.string()
    out = summarize(table)
    assert [(r["strategy"], r["mode"]) for r in out if r["kind"] == "result"] == [
        (s, m) for s in ("maxent", "id", "random", "alpha", "zeta") for m in ("all", "seals")
    ]
    by = _by_key(out)
    r = by[("maxent", "seals")]
    assert r["n_ap"] == 2 and r["n_concepts"] == 3
    assert r["test_ap"] == pytest.approx((0.45 + 0.55) / 2)  # concepts 0 and 1 only
    assert by[("maxent", "seals-all")]["test_ap_gap"] == pytest.approx(-0.1)  # paired over finite ones
    assert [r["strategy"] for r in out if r["kind"] == "gap"] == ["maxent", "id", "random", "alpha", "zeta"]


def test_only_one_mode_has_no_gap(tmp_path: Path) -> None:
    run = _write(tmp_path / "run", [r for r in _rows() if r["mode"] != "all"])
    out = summarize(load_metrics(run))
    assert not [r for r in out if r["kind"] == "gap"]
    text = format_table(out)
    assert "SEALS - All" not in text


def test_format_table(run_dir: Path) -> None:
    text = format_table(summarize(load_metrics(run_dir)))
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("strategy") and "AP" in line)
    for col in ("mode", "concepts", "labels", "recall", "pool frac", "select/round"):
        assert col in header
    row = next(line for line in lines if line.split()[:2] == ["maxent", "SEALS"])
    assert row.split()[2:6] == ["3", "25", "0.550", "0.380"]
    assert "0.0080" in row and "40.0 ms" in row and "540.0 ms" in row
    row = next(line for line in lines if line.split()[:2] == ["random", "All"])
    assert "0.450" in row and "1.0000" in row and "4.00 s" in row
    assert any(line.startswith("full") and "0.800" in line for line in lines)
    gap = next(line for line in lines if line.startswith("maxent") and "-0.100" in line)
    assert "+0.010" in gap and "100.0x" in gap
    # Aligned: every line of the first block is as long as its rule or shorter.
    rule = next(line for line in lines if set(line) <= {"-", " "} and line)
    assert all(len(line) <= len(rule) for line in lines[2 : lines.index(rule) + 6])
    assert format_table([]) == "(no results)\n"


def test_plots_and_report(run_dir: Path) -> None:
    text, files = report(run_dir)
    assert "maxent" in text and "random" in text
    plots = run_dir / "plots"
    assert [p.name for p in files] == ["ap.png", "recall.png", "pool_fraction.png", "summary.json"]
    for p in files[:3]:
        assert p.parent == plots
        data = p.read_bytes()
        assert len(data) > 1000 and data[:8] == PNG_SIGNATURE
    summary = json.loads(files[3].read_text())
    assert summary == json.loads(json.dumps(summarize(load_metrics(run_dir))))
    assert sorted(p.name for p in plots.iterdir()) == sorted(p.name for p in files)  # no temp files left

    text2, files2 = report(run_dir, plots=False)
    assert text2 == text and files2 == []


def test_make_plots_custom_dir(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "figs" / "nested"
    files = make_plots(load_metrics(run_dir), out)
    assert all(p.parent == out and p.stat().st_size > 0 for p in files)


def test_missing_dir(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ReportError, match="does not exist") as e:
        load_metrics(missing)
    assert str(missing) in str(e.value)
    assert isinstance(e.value, SealsError)
    with pytest.raises(SealsError):
        report(missing)


def test_missing_file(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    with pytest.raises(ReportError, match="missing") as e:
        load_metrics(tmp_path / "run")
    assert str(tmp_path / "run" / "metrics.parquet") in str(e.value)


def test_corrupt_file(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.parquet").write_bytes(b"PAR1 not really parquet")
    with pytest.raises(ReportError, match="corrupt") as e:
        load_metrics(run)
    assert str(run / "metrics.parquet") in str(e.value)


def test_missing_column(tmp_path: Path) -> None:
    rows = [{k: v for k, v in r.items() if k != "seconds_select"} for r in _rows()]
    run = _write(tmp_path / "run", rows)
    with pytest.raises(ReportError, match="seconds_select") as e:
        load_metrics(run)
    assert str(run / "metrics.parquet") in str(e.value)


def test_wrong_type_and_nulls(tmp_path: Path) -> None:
    rows = [dict(r, round=str(r["round"])) for r in _rows()]
    run = _write(tmp_path / "a", rows)
    with pytest.raises(ReportError, match="'round'"):
        load_metrics(run)
    rows = _rows()
    rows[0]["strategy"] = None
    with pytest.raises(ReportError, match="null"):
        load_metrics(_write(tmp_path / "b", rows))
    empty = pa.Table.from_pylist(_rows()).slice(0, 0)
    (tmp_path / "c").mkdir()
    pq.write_table(empty, tmp_path / "c" / "metrics.parquet")
    with pytest.raises(ReportError, match="no rows"):
        load_metrics(tmp_path / "c")


def test_types_normalised(tmp_path: Path) -> None:
    table = pa.Table.from_pylist(_rows())
    table = table.set_column(
        table.column_names.index("round"), "round", table.column("round").cast(pa.int32())
    )
    table = table.set_column(
        table.column_names.index("strategy"), "strategy", table.column("strategy").dictionary_encode()
    )
    (tmp_path / "run").mkdir()
    pq.write_table(table, tmp_path / "run" / "metrics.parquet")
    loaded = load_metrics(tmp_path / "run")
    assert loaded.schema.field("round").type == pa.int64()
    assert loaded.schema.field("strategy").type == pa.string()
    assert set(REQUIRED_COLUMNS) <= set(loaded.column_names)
    assert not math.isnan(_by_key(summarize(loaded))[("maxent", "seals")]["test_ap"])
