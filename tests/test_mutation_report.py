"""benchmarks/mutation_report.py's sampled score: the draw, the estimate and its interval, the command line."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


SCRIPT = ROOT / "benchmarks" / "mutation_report.py"
if not SCRIPT.exists():  # mutmut's copy of the tests (mutants/tests) has no benchmarks/ beside it
    pytest.skip(f"{SCRIPT} is not here", allow_module_level=True)


def _load():
    spec = importlib.util.spec_from_file_location("mutation_report", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules.setdefault("mutation_report", mod)
    spec.loader.exec_module(mod)
    return mod


mr = _load()


def _fake_mutants(
    root: Path,
    codes: dict[str, dict[str, int | None]],
    hashes: dict[str, dict[str, str]] | None = None,
) -> Path:
    """A mutants/ folder as mutmut leaves it: one ``.meta`` per module with an exit code per mutant (and,
    when given, the hash of each mutated function's source)."""
    for module, by_name in codes.items():
        meta = root / "seals_gpu" / Path(*module.split(".")).with_suffix(".py.meta")
        meta.parent.mkdir(parents=True, exist_ok=True)
        data: dict = {"exit_code_by_key": by_name}
        if hashes is not None:
            data["hash_by_function_name"] = hashes.get(module, {})
        meta.write_text(json.dumps(data))
    return root


def _names(module: str, n: int) -> list[str]:
    return [f"seals_gpu.{module}.x_f__mutmut_{i}" for i in range(1, n + 1)]


@pytest.mark.parametrize(("detected", "n"), [(0, 10), (3, 10), (38, 40), (40, 40), (1, 1), (517, 600)])
def test_wilson_interval_endpoints_solve_the_score_equation(detected: int, n: int) -> None:
    """Each finite endpoint p of the Wilson interval satisfies (p_hat - p)^2 = z^2 p (1 - p) / n; it holds
    p_hat, and it is narrower than [0, 1] unless n is tiny."""
    z = 1.959964
    low, high = mr.wilson(detected, n)
    p_hat = detected / n
    assert 0.0 <= low <= p_hat <= high <= 1.0
    for p in (low, high):
        assert (p_hat - p) ** 2 == pytest.approx(z * z * p * (1 - p) / n, abs=1e-12)
    # 40 of 40: the lower end is n / (n + z^2), the textbook value
    if detected == n:
        assert low == pytest.approx(n / (n + z * z))
        assert high == 1.0


def test_wilson_refuses_an_empty_sample() -> None:
    with pytest.raises(ValueError, match="n must be positive"):
        mr.wilson(0, 0)


def test_the_draw_is_seeded_per_module_and_uniform_over_the_module() -> None:
    results = {"pool": dict.fromkeys(_names("pool", 200)), "metrics": dict.fromkeys(_names("metrics", 5))}
    a = mr.draw_sample(results, ["pool", "metrics"], 40, seed=7)
    b = mr.draw_sample(results, ["metrics", "pool"], 40, seed=7)
    assert a == b  # the same seed: the same draw, whatever the order of the modules
    assert len(a["pool"]) == len(set(a["pool"])) == 40
    assert set(a["pool"]) <= set(results["pool"])
    assert sorted(a["metrics"]) == sorted(results["metrics"])  # fewer than n: all of them
    # another module's count does not change this module's draw
    assert mr.draw_sample(results, ["pool"], 40, seed=7)["pool"] == a["pool"]
    assert mr.draw_sample(results, ["pool"], 40, seed=8)["pool"] != a["pool"]
    # a larger sample with the same seed keeps the verdicts already paid for: it holds the smaller one
    assert set(a["pool"]) < set(mr.draw_sample(results, ["pool"], 80, seed=7)["pool"])
    # uniform: over many seeds every mutant is drawn about n / N of the time
    hits = dict.fromkeys(results["pool"], 0)
    for seed in range(300):
        for name in mr.draw_sample(results, ["pool"], 40, seed=seed)["pool"]:
            hits[name] += 1
    expected = 300 * 40 / 200
    assert min(hits.values()) > expected * 0.4 and max(hits.values()) < expected * 1.8
    # editing one function renumbers its mutants only: the rest of the draw stays
    edited = {k: v for k, v in results["pool"].items() if not k.endswith(("_1", "_2", "_3"))}
    after = mr.draw_sample({"pool": edited}, ["pool"], 40, seed=7)["pool"]
    assert len(set(a["pool"]) - set(after)) <= 3
    # name order does not decide the draw: no systematic preference for low mutant numbers
    first_half = sum(hits[n] for n in _names("pool", 100))
    assert abs(first_half / (300 * 40) - 0.5) < 0.05


def test_sample_rows_count_the_drawn_mutants_only() -> None:
    status = {f"m{i}": "killed" for i in range(30)}
    status.update(
        {"s1": "survived", "e1": "equivalent", "n1": "no tests", "t1": "timeout", "other": "survived"}
    )
    sample = {"modules": {"pool": [*(f"m{i}" for i in range(8)), "s1", "e1", "n1", "t1", "unseen"]}}
    row = mr.sample_rows({"status": status}, sample)["pool"]
    assert row["drawn"] == 13 and row["not checked"] == 1 and row["checked"] == 12
    assert row["detected"] == 9 and row["survived"] == 1 and row["equivalent"] == 1 and row["no tests"] == 1
    # 9 detected of 12 checked - 1 equivalent = 11 (a mutant no test reaches counts against the score)
    assert row["estimate"] == round(100 * 9 / 11, 1)
    low, high = mr.wilson(9, 11)
    assert (row["low"], row["high"]) == (round(100 * low, 1), round(100 * high, 1))
    empty = mr.sample_rows({"status": {}}, {"modules": {"pool": ["a", "b"]}})["pool"]
    assert empty["estimate"] is None and empty["not checked"] == 2


def test_sample_command_writes_the_draw_and_prints_only_mutants_without_a_verdict(
    tmp_path: Path, capsys
) -> None:
    names = _names("pool", 12)
    codes = {n: (1 if i % 3 == 0 else None) for i, n in enumerate(names)}
    mutants = _fake_mutants(tmp_path / "mutants", {"pool": codes})
    out = tmp_path / "sample.json"
    rc = mr.main(
        [
            "--mutants",
            str(mutants),
            "--modules",
            "pool",
            "--sample",
            "6",
            "--seed",
            "3",
            "--sample-file",
            str(out),
        ]
    )
    assert rc == 0
    (drawn,) = json.loads(out.read_text())["draws"]
    assert drawn["n"] == 6 and drawn["seed"] == 3 and len(drawn["modules"]["pool"]) == 6
    printed = capsys.readouterr().out.split()
    assert printed == [n for n in drawn["modules"]["pool"] if codes[n] is None]
    # the report then adds the sampled estimate for the drawn mutants
    testing = tmp_path / "TESTING.md"
    rc = mr.main(
        [
            "--mutants",
            str(mutants),
            "--modules",
            "pool",
            "--sample-file",
            str(out),
            "--out",
            str(tmp_path / "m.json"),
            "--testing",
            str(testing),
            "--equivalent",
            str(tmp_path / "none.json"),
        ]
    )
    assert rc == 0
    report = json.loads((tmp_path / "m.json").read_text())
    (sample,) = report["samples"]
    row = sample["rows"]["pool"]
    killed = sum(1 for n in drawn["modules"]["pool"] if codes[n] == 1)
    assert row["detected"] == killed and row["not checked"] == 6 - killed
    assert "Sampled estimate" in testing.read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--sample", "0"], "--sample 0: give a positive count"), (["--modules", "nosuch"], "--modules nosuch")],
)
def test_bad_arguments_exit_2_and_write_nothing(
    tmp_path: Path, capsys, args: list[str], message: str
) -> None:
    mutants = _fake_mutants(tmp_path / "mutants", {"pool": dict.fromkeys(_names("pool", 3))})
    out = tmp_path / "sample.json"
    rc = mr.main(
        ["--mutants", str(mutants), "--sample-file", str(out), "--out", str(tmp_path / "m.json"), *args]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not (tmp_path / "m.json").exists()


class _Item:
    def __init__(self, name: str, kills: bool) -> None:
        self.nodeid, self._kills = name, kills

    def get_closest_marker(self, name: str):
        return object() if (name == "kills" and self._kills) else None


class _Config:
    def __init__(self) -> None:
        self.deselected: list = []

        class Hook:
            def pytest_deselected(hook, items):  # noqa: N805 - stands in for pytest's hook relay
                self.deselected.extend(items)

        self.hook = Hook()


@pytest.mark.parametrize(
    ("mutant", "dropped"),
    [
        ("seals_gpu.store.x_write_store__mutmut_3", True),
        ("seals_gpu.index.shard.xǁIndexShardǁload__mutmut_1", True),
        ("seals_gpu.atomic.x_write_json__mutmut_4", False),
        ("seals_gpu.driver.xǁRunǁstart__mutmut_30", False),
        ("", False),  # mutmut's clean run: every test
        ("stats", False),  # the traced run
        ("fail", False),  # mutmut's forced failure
    ],
)
def test_kill_tests_run_only_for_mutants_of_the_modules_they_guard(
    monkeypatch, mutant: str, dropped: bool
) -> None:
    """Under mutmut the tests marked ``kills`` (processes started and killed) run for mutants of atomic.py and
    driver.py, and in the clean and traced runs; for any other mutant they are deselected, and reported so."""
    from tests.mutmut_hooks import deselect_kill_tests

    monkeypatch.setenv("MUTANT_UNDER_TEST", mutant)
    items = [_Item("a", False), _Item("k1", True), _Item("b", False), _Item("k2", True)]
    config = _Config()
    deselect_kill_tests(config, items)
    names = [i.nodeid for i in items]
    if dropped:
        assert names == ["a", "b"] and [i.nodeid for i in config.deselected] == ["k1", "k2"]
    else:
        assert names == ["a", "k1", "b", "k2"] and config.deselected == []


def test_outside_mutmut_no_test_is_deselected(monkeypatch) -> None:
    from tests.mutmut_hooks import deselect_kill_tests

    monkeypatch.delenv("MUTANT_UNDER_TEST", raising=False)
    items = [_Item("k1", True)]
    deselect_kill_tests(_Config(), items)
    assert [i.nodeid for i in items] == ["k1"]


def _draw(tmp_path: Path, mutants: Path, out: Path, n: int, seed: int) -> int:
    return mr.main(
        ["--mutants", str(mutants), "--modules", "pool", "--sample", str(n), "--seed", str(seed)]
        + ["--sample-file", str(out)]
    )


def test_a_new_seed_is_kept_beside_the_earlier_draws_and_reported_with_its_overlap(
    tmp_path: Path, capsys
) -> None:
    names = _names("pool", 30)
    mutants = _fake_mutants(
        tmp_path / "mutants", {"pool": {n: (1 if i % 2 else 0) for i, n in enumerate(names)}}
    )
    out = tmp_path / "sample.json"
    assert _draw(tmp_path, mutants, out, 10, 0) == 0
    first = json.loads(out.read_text())["draws"]
    assert _draw(tmp_path, mutants, out, 10, 1) == 0
    draws = json.loads(out.read_text())["draws"]
    assert [d["seed"] for d in draws] == [0, 1] and draws[0] == first[0]
    # drawing a seed again replaces that seed's draw only
    assert _draw(tmp_path, mutants, out, 5, 0) == 0
    again = json.loads(out.read_text())["draws"]
    assert [(d["seed"], d["n"]) for d in again] == [(0, 5), (1, 10)] and again[1] == draws[1]
    rc = mr.main(
        ["--mutants", str(mutants), "--modules", "pool", "--sample-file", str(out)]
        + ["--out", str(tmp_path / "m.json"), "--testing", str(tmp_path / "T.md")]
        + ["--equivalent", str(tmp_path / "none.json")]
    )
    assert rc == 0
    samples = json.loads((tmp_path / "m.json").read_text())["samples"]
    overlap = len(set(again[0]["modules"]["pool"]) & set(again[1]["modules"]["pool"]))
    assert [s["seed"] for s in samples] == [0, 1]
    assert samples[0]["also_earlier"] == 0 and samples[1]["also_earlier"] == overlap
    for s, d in zip(samples, again, strict=True):
        killed = sum(1 for n in d["modules"]["pool"] if names.index(n) % 2)
        assert s["rows"]["pool"]["detected"] == killed and s["rows"]["pool"]["drawn"] == d["n"]
    text = (tmp_path / "T.md").read_text()
    assert "with seed 0," in text and "with seed 1," in text


def test_a_one_draw_file_from_before_still_reads(tmp_path: Path) -> None:
    old = tmp_path / "sample.json"
    old.write_text(json.dumps({"n": 2, "seed": 4, "modules": {"pool": ["a", "b"]}}))
    assert mr.load_draws(old) == [{"n": 2, "seed": 4, "modules": {"pool": ["a", "b"]}}]
    assert mr.load_draws(tmp_path / "absent.json") == []


@pytest.mark.parametrize(
    "content", ["{not json", "[]", '{"draws": [{"n": 2}]}', '{"n": "2", "seed": 0, "modules": {}}']
)
@pytest.mark.parametrize("drawing", [True, False])
def test_a_file_that_is_not_a_sample_is_named_and_left_alone(
    tmp_path: Path, capsys, content: str, drawing: bool
) -> None:
    mutants = _fake_mutants(tmp_path / "mutants", {"pool": dict.fromkeys(_names("pool", 3))})
    bad = tmp_path / "sample.json"
    bad.write_text(content)
    args = ["--mutants", str(mutants), "--modules", "pool", "--sample-file", str(bad)]
    args += ["--out", str(tmp_path / "m.json"), "--testing", str(tmp_path / "T.md")]
    rc = mr.main(args + (["--sample", "2"] if drawing else []))
    assert rc == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "not a sample file" in err and len(err.strip().splitlines()) == 1
    assert bad.read_text() == content
    assert not (tmp_path / "m.json").exists() and not (tmp_path / "T.md").exists()


def test_mutmuts_progress_goes_to_stderr_while_mutants_are_written(
    tmp_path: Path, monkeypatch, capfd
) -> None:
    """``--sample`` prints the mutant names to run on stdout (the Makefile passes them to mutmut), and first
    has mutmut bring ``mutants/`` up to date, which reports on stdout: that report must go to stderr, from
    worker processes too, and stdout must work again afterwards."""
    mm = pytest.importorskip("mutmut.__main__")
    import subprocess

    calls: list[str] = []

    def fake(name: str):
        def f(*_a, **_k) -> None:
            calls.append(name)
            print(f"mutmut says {name}")
            if name == "create_mutants":
                subprocess.run([sys.executable, "-c", "print('a worker says hi')"], check=True)

        return f

    for name in (
        "copy_also_copy_files",
        "copy_src_dir",
        "create_mutants",
        "set_mutant_under_test",
        "setup_source_paths",
        "store_lines_covered_by_tests",
    ):
        monkeypatch.setattr(mm, name, fake(name))
    monkeypatch.chdir(tmp_path)
    mr.generate_mutants()
    print("names follow")
    out, err = capfd.readouterr()
    assert out == "names follow\n"
    assert "mutmut says create_mutants" in err and "a worker says hi" in err
    assert calls[-1] == "create_mutants" and (tmp_path / "mutants").is_dir()


# --- kept verdicts: a fresh clone has no mutants/, the verdicts of earlier runs live in a committed file ---


def _report(tmp_path: Path, mutants: Path, verdicts: Path, *extra: str) -> int:
    return mr.main(
        ["--mutants", str(mutants), "--modules", "pool", "store", "--verdicts", str(verdicts)]
        + ["--out", str(tmp_path / "m.json"), "--testing", str(tmp_path / "T.md")]
        + [
            "--equivalent",
            str(tmp_path / "none.json"),
            "--sample-file",
            str(tmp_path / "none-s.json"),
            *extra,
        ]
    )


def _two_modules() -> tuple[dict, dict]:
    codes = {
        "pool": {
            "seals_gpu.pool.xǁPoolǁadd__mutmut_1": 1,
            "seals_gpu.pool.xǁPoolǁadd__mutmut_2": 0,
            "seals_gpu.pool.x_grow__mutmut_1": 24,
            "seals_gpu.pool.x_grow__mutmut_2": None,
            "seals_gpu.pool.x_grow__mutmut_3": 2,  # interrupted: no verdict to keep
        },
        "store": {"seals_gpu.store.x_read__mutmut_1": -9, "seals_gpu.store.x_read__mutmut_2": 1},
    }
    hashes = {"pool": {"xǁPoolǁadd": "aaa", "x_grow": "bbb"}, "store": {"x_read": "ccc"}}
    return codes, hashes


def test_verdicts_survive_a_fresh_mutants_folder_while_their_function_is_unchanged(
    tmp_path: Path, capsys
) -> None:
    codes, hashes = _two_modules()
    verdicts = tmp_path / "verdicts.json"
    assert _report(tmp_path, _fake_mutants(tmp_path / "run1", codes, hashes), verdicts) == 0
    kept = json.loads(verdicts.read_text())
    assert kept["modules"] == {
        "pool": {
            "seals_gpu.pool.xǁPoolǁadd__mutmut_1": [1, "aaa"],
            "seals_gpu.pool.xǁPoolǁadd__mutmut_2": [0, "aaa"],
            "seals_gpu.pool.x_grow__mutmut_1": [24, "bbb"],
        },
        "store": {
            "seals_gpu.store.x_read__mutmut_1": [-9, "ccc"],
            "seals_gpu.store.x_read__mutmut_2": [1, "ccc"],
        },
    }
    first = json.loads((tmp_path / "m.json").read_text())["modules"]
    # a new machine: mutmut wrote the mutants again, with no verdicts; Pool.add was edited since
    fresh = {m: dict.fromkeys(v) for m, v in codes.items()}
    fresh["pool"]["seals_gpu.pool.x_grow__mutmut_2"] = 1  # this run checked one more
    hashes["pool"]["xǁPoolǁadd"] = "changed"
    capsys.readouterr()
    assert _report(tmp_path, _fake_mutants(tmp_path / "run2", fresh, hashes), verdicts) == 0
    assert "verdicts: 3 taken from verdicts.json" in capsys.readouterr().out
    second = json.loads((tmp_path / "m.json").read_text())["modules"]
    assert second["store"] == first["store"]
    assert second["store"]["crashed"] == 1 and second["store"]["killed"] == 1
    pool = second["pool"]
    assert (pool["timeout"], pool["killed"], pool["survived"], pool["not checked"]) == (1, 1, 0, 3)
    kept = json.loads(verdicts.read_text())["modules"]["pool"]
    assert kept == {
        "seals_gpu.pool.x_grow__mutmut_1": [24, "bbb"],
        "seals_gpu.pool.x_grow__mutmut_2": [1, "bbb"],
    }


def test_mutmuts_own_verdict_wins_over_a_kept_one() -> None:
    results = {"pool": {"seals_gpu.pool.x_f__mutmut_1": 1, "seals_gpu.pool.x_f__mutmut_2": None}}
    kept = {"pool": {"seals_gpu.pool.x_f__mutmut_1": [0, "h"], "seals_gpu.pool.x_f__mutmut_2": [0, "h"]}}
    assert mr.apply_verdicts(results, {"pool": {"x_f": "h"}}, kept) == 1
    assert results["pool"] == {"seals_gpu.pool.x_f__mutmut_1": 1, "seals_gpu.pool.x_f__mutmut_2": 0}
    # no hash recorded for the function: nothing is taken
    results = {"pool": {"seals_gpu.pool.x_f__mutmut_2": None}}
    assert (
        mr.apply_verdicts(results, {"pool": {}}, kept) == 0
        and results["pool"]["seals_gpu.pool.x_f__mutmut_2"] is None
    )


def test_verdicts_of_another_mutmut_release_are_not_used(tmp_path: Path, capsys) -> None:
    codes, hashes = _two_modules()
    verdicts = tmp_path / "verdicts.json"
    verdicts.write_text(
        json.dumps(
            {"mutmut": "2.4.0", "modules": {"store": {"seals_gpu.store.x_read__mutmut_1": [0, "ccc"]}}}
        )
    )
    fresh = {m: dict.fromkeys(v) for m, v in codes.items()}
    assert _report(tmp_path, _fake_mutants(tmp_path / "run", fresh, hashes), verdicts) == 0
    out = capsys.readouterr()
    assert "holds verdicts of mutmut 2.4.0" in out.err
    assert json.loads((tmp_path / "m.json").read_text())["modules"]["store"]["not checked"] == 2
    assert json.loads(verdicts.read_text())["modules"] == {}


@pytest.mark.parametrize(
    "content",
    ["{not json", "[]", '{"mutmut": "3.8.1"}', '{"mutmut": "3.8.1", "modules": {"pool": {"x": [1]}}}'],
)
def test_a_file_that_is_not_a_verdict_file_is_named_and_nothing_is_written(
    tmp_path: Path, capsys, content: str
) -> None:
    codes, hashes = _two_modules()
    verdicts = tmp_path / "verdicts.json"
    verdicts.write_text(content)
    assert _report(tmp_path, _fake_mutants(tmp_path / "run", codes, hashes), verdicts) == 2
    err = capsys.readouterr().err
    assert str(verdicts) in err and "not a verdict file" in err and len(err.strip().splitlines()) == 1
    assert verdicts.read_text() == content
    assert not (tmp_path / "m.json").exists() and not (tmp_path / "T.md").exists()


def test_a_drawn_mutant_with_a_kept_verdict_is_not_run_again(tmp_path: Path, capsys) -> None:
    names = _names("pool", 8)
    hashes = {"pool": {"x_f": "h"}}
    mutants = _fake_mutants(tmp_path / "mutants", {"pool": dict.fromkeys(names)}, hashes)
    verdicts = tmp_path / "verdicts.json"
    verdicts.write_text(
        json.dumps({"mutmut": mr._minor(_mutmut()) + ".0", "modules": {"pool": {names[0]: [1, "h"]}}})
    )
    out = tmp_path / "sample.json"
    rc = mr.main(
        ["--mutants", str(mutants), "--modules", "pool", "--sample", "8", "--sample-file", str(out)]
        + ["--verdicts", str(verdicts)]
    )
    assert rc == 0
    assert capsys.readouterr().out.split() == names[1:]


def _mutmut() -> str:
    try:
        from importlib.metadata import version

        return version("mutmut")
    except Exception:  # noqa: BLE001
        return "?"


def test_on_a_fresh_clone_the_report_rebuilds_mutants_and_reads_the_kept_verdicts(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """A clone has benchmarks/mutation_verdicts.json but no mutants/: the report has mutmut write the mutants
    (today's names and function hashes; no test is run) and reports the kept verdicts; with no kept verdicts
    it says to run ``make mutate`` and writes nothing."""
    codes, hashes = _two_modules()
    monkeypatch.setattr(mr, "ROOT", tmp_path)
    monkeypatch.chdir(tmp_path)  # the report changes to ROOT; put the test's directory back afterwards
    generated: list[Path] = []

    def fake_generate() -> None:  # what mutmut leaves: every mutant, none checked
        generated.append(
            _fake_mutants(tmp_path / "mutants", {m: dict.fromkeys(v) for m, v in codes.items()}, hashes)
        )

    monkeypatch.setattr(mr, "generate_mutants", fake_generate)
    assert mr.main(["--modules", "pool", "store"]) == 2
    assert "run `make mutate` first" in capsys.readouterr().err and not generated
    assert not (tmp_path / "benchmarks").exists() and not (tmp_path / "TESTING.md").exists()
    # a clone of a tree whose verdicts were committed
    mr.main(
        ["--mutants", str(_fake_mutants(tmp_path / "elsewhere", codes, hashes)), "--modules", "pool", "store"]
        + [
            "--verdicts",
            str(tmp_path / "benchmarks" / "mutation_verdicts.json"),
            "--out",
            str(tmp_path / "x.json"),
        ]
        + ["--testing", str(tmp_path / "x.md")]
    )
    (tmp_path / "TESTING.md").write_text("# Testing\n")
    capsys.readouterr()
    assert mr.main(["--modules", "pool", "store"]) == 0
    assert generated == [tmp_path / "mutants"]
    report = json.loads((tmp_path / "benchmarks" / "out" / "mutation.json").read_text())["modules"]
    assert report["store"]["killed"] == 1 and report["store"]["crashed"] == 1
    assert (report["pool"]["killed"], report["pool"]["survived"], report["pool"]["timeout"]) == (1, 1, 1)
    assert "| store.py |" in (tmp_path / "TESTING.md").read_text()


def test_an_equivalent_entry_is_stale_only_when_its_mutant_is_gone_or_now_detected(tmp_path: Path) -> None:
    """A listed equivalent mutant that this run did not check says nothing (a fresh clone checks few); one
    that was killed, or that no longer exists (its function changed), is reported stale."""
    names = _names("pool", 4)
    results = {"pool": {names[0]: None, names[1]: 1, names[2]: 0}}
    eq = tmp_path / "eq.json"
    eq.write_text(json.dumps([{"mutant": n, "change": "x", "reason": "r"} for n in names[:2] + names[3:]]))
    stale = {e["mutant"]: e["why"] for e in mr.build(["pool"], results, eq)["stale_equivalent"]}
    assert stale == {names[1]: "killed now", names[3]: "no such mutant now (code changed)"}


def test_list_survived_leaves_out_the_listed_equivalents(tmp_path: Path, monkeypatch, capsys) -> None:
    """``--list survived`` names the mutants worth re-running: a survivor listed equivalent (its entry still
    matching the mutated line) is left out, one whose entry no longer matches is named, killed ones never."""
    names = _names("pool", 4)
    mutants = _fake_mutants(
        tmp_path / "mutants", {"pool": {names[0]: 0, names[1]: 0, names[2]: 1, names[3]: 0}}
    )
    eq = tmp_path / "eq.json"
    eq.write_text(
        json.dumps(
            [
                {"mutant": names[1], "change": "y = 2", "reason": "r"},
                {"mutant": names[3], "change": "y = 3", "reason": "an entry written for an earlier mutant"},
            ]
        )
    )
    monkeypatch.setattr(mr, "mutant_diff", lambda name, module: "--- a\n+++ b\n@@ -1 +1 @@\n-y = 1\n+y = 2\n")
    rc = mr.main(
        ["--mutants", str(mutants), "--modules", "pool", "--verdicts", str(tmp_path / "none-v.json")]
        + ["--equivalent", str(eq), "--list", "survived"]
    )
    assert rc == 0
    assert capsys.readouterr().out.split() == [names[0], names[3]]
