"""Property-based hostile input (issue #13), next to the named cases of ``test_bad_input.py`` and
``test_boundary.py``: hypothesis draws CLI settings and corruptions of stores, indexes and checkpoints, and
every draw must keep the invariants a user relies on:

- the command either succeeds (exit 0) or says what is wrong in ONE line on stderr with exit 2: never a
  traceback, never exit 1 (a bug);
- a refused command creates nothing (a new --out does not exist afterwards) and changes nothing (an existing
  run folder, store or index is the same byte for byte);
- a run that succeeds wrote every unit's rows, with ids from the store and no more labels than the budget.

Each example runs the real CLI in-process on a tiny store, so the example counts are small; the draws are
deterministic (``derandomize``) so a failure in CI reproduces locally.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seals_gpu.checkpoint import CHECKPOINT
from seals_gpu.cli import main
from seals_gpu.index import IndexSpec, build_index
from seals_gpu.synth import make_synthetic_store

SETTINGS = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
I64 = 2**63 - 1
OUTCOMES: dict[str, list[int]] = {"run": [], "synth": []}  # exit codes seen, checked by the test below


def _snapshot(path: Path) -> dict[str, bytes | None] | None:
    if not path.exists():
        return None
    return {
        str(p.relative_to(path)): (p.read_bytes() if p.is_file() else None) for p in sorted(path.rglob("*"))
    }


def _cli(args: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:  # argparse's own refusals (exit 2, usage + one error line)
        code = int(e.code) if e.code is not None else 0
    return code, capsys.readouterr().err


def _lines(err: str) -> list[str]:
    """What a terminal shows: carriage returns overwrite (progress bars), empty lines dropped."""
    return [ln.split("\r")[-1] for ln in err.splitlines() if ln.split("\r")[-1].strip()]


def _refused_cleanly(code: int, err: str, *, argparse_ok: bool = False) -> None:
    """Exit 2 and one line: ``seals-gpu: error: ...`` (or, for values the argument parser refuses,
    ``seals-gpu CMD: error: ...``)."""
    assert code == 2, f"exit {code}:\n{err}"
    assert "Traceback" not in err, err
    shown = _lines(err)
    assert len(shown) == 1, err
    ok = shown[0].startswith("seals-gpu: error: ")
    if argparse_ok:
        ok = ok or (shown[0].startswith("seals-gpu ") and ": error: " in shown[0])
    assert ok, err


def _opts(**values: object) -> list[str]:
    """``--name=value`` (the ``=`` form: a value like ``-1e+16`` would otherwise read as an option)."""
    return [f"--{k.replace('_', '-')}={v}" for k, v in values.items()]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("props")
    store = make_synthetic_store(base / "store", n=600, dim=8, concepts=2, prevalence=(0.03, 0.05), seed=3)
    index = build_index(store, base / "index", IndexSpec(kind="flat"))
    return {"base": base, "store": store.path, "index": index.path}


# ------------------------------------------------------------------------------------------- CLI settings
NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, 2, 5, 50, 100, 10**6, I64, I64 + 1, -1]),
)
FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 1e-300, 1.0, 1e300, -1.0]),
)


@SETTINGS
@given(
    k=NUMBERS,
    budget=NUMBERS,
    batch=NUMBERS,
    seed=NUMBERS,
    seed_pos=NUMBERS,
    seed_neg=NUMBERS,
    C=FLOATS,
    beta=FLOATS,
    small=st.booleans(),
)
def test_any_run_settings_succeed_or_are_refused_in_one_line(
    tiny, tmp_path_factory, capsys, k, budget, batch, seed, seed_pos, seed_neg, C, beta, small
) -> None:
    if small:  # half the draws near the values that run, so that successes are exercised too
        k, budget, batch = abs(k) % 12, abs(budget) % 160 + 20, abs(batch) % 30 + 1
        seed, seed_pos, seed_neg = abs(seed) % 1000, abs(seed_pos) % 6, abs(seed_neg) % 40
        C = 1.0 if not math.isfinite(C) else C
    out = tmp_path_factory.mktemp("run") / "out"
    args = [
        "run", tiny["store"], "--out", out, "--concepts", "0", "--strategies", "maxent,id",
        "--modes", "seals,all", "--device", "cpu", "--quiet", "--no-cache",
        *_opts(k=k, budget=budget, batch=batch, seed=seed, seed_positives=seed_pos, seed_negatives=seed_neg,
               C=repr(C), beta=repr(beta)),
    ]  # fmt: skip
    code, err = _cli(args, capsys)
    OUTCOMES["run"].append(code)
    if code == 0:
        m = pq.read_table(out / "metrics.parquet").to_pylist()
        sel = pq.read_table(out / "selections.parquet")
        assert {(r["strategy"], r["mode"]) for r in m} == {
            (s, md) for s in ("maxent", "id") for md in ("seals", "all")
        }
        assert max(r["n_labeled"] for r in m) <= int(budget)
        store_ids = np.concatenate([pq.read_table(f, columns=["id"])["id"].to_numpy() for f in _parts(tiny)])
        assert np.isin(sel["id"].to_numpy(), store_ids).all()
    else:
        _refused_cleanly(code, err, argparse_ok=True)
        assert not out.exists(), f"a refused run left {out}"


def _parts(tiny: dict[str, Path]) -> list[Path]:
    return sorted(p for p in tiny["store"].glob("*.parquet") if not p.name.startswith("_"))


@SETTINGS
@given(n=NUMBERS, dim=NUMBERS, concepts=NUMBERS, seed=NUMBERS)
def test_any_synth_settings_succeed_or_are_refused_in_one_line(
    tmp_path_factory, capsys, n, dim, concepts, seed
) -> None:
    n, dim = (n if abs(n) > 5000 else abs(n) % 3000), (dim if abs(dim) > 64 else abs(dim) % 64)
    out = tmp_path_factory.mktemp("synth") / "out"
    args = ["store", "synth", out, *_opts(n=n, dim=dim, concepts=concepts, seed=seed)]
    code, err = _cli(args, capsys)
    OUTCOMES["synth"].append(code)
    if code != 0:
        _refused_cleanly(code, err, argparse_ok=True)
        assert not out.exists(), f"a refused store synth left {out}"


def test_the_drawn_settings_exercised_both_outcomes() -> None:
    """The draws above are not all refusals (or all successes): both branches of each property ran."""
    for name, codes in OUTCOMES.items():
        if not codes:
            pytest.skip(f"run the whole module: the {name} property did not run first")
        assert 0 in codes and 2 in codes, f"{name}: exit codes seen {sorted(set(codes))}"


# ------------------------------------------------------------------------------------------ corruptions
@SETTINGS
@given(data=st.data())
def test_a_corrupted_store_file_is_read_or_refused_in_one_line(tiny, tmp_path_factory, capsys, data) -> None:
    """Truncate or overwrite bytes of one of the store's Parquet files: `store info`, `store validate` and
    `run` read it (the damage missed what they read) or refuse it in one line; a refused run creates no
    folder."""
    base = tmp_path_factory.mktemp("bad_store")
    store = Path(shutil.copytree(tiny["store"], base / "store"))
    part = data.draw(st.sampled_from(sorted(store.glob("*.parquet"))), label="file")
    raw = bytearray(part.read_bytes())
    how = data.draw(st.sampled_from(["truncate", "overwrite", "empty"]), label="how")
    if how == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1), label="keep")]
    elif how == "overwrite":
        at = data.draw(st.integers(0, len(raw) - 1), label="at")
        junk = data.draw(st.binary(min_size=1, max_size=64), label="junk")
        raw[at : at + len(junk)] = junk
    else:
        raw = bytearray()
    part.write_bytes(bytes(raw))
    for args in (["store", "info", store], ["store", "validate", store]):
        code, err = _cli(args, capsys)
        if code != 0:
            _refused_cleanly(code, err)
    out = base / "run"
    _small_run_or_clean_refusal(capsys, store, out)


def _small_run_or_clean_refusal(capsys, store: Path, out: Path, *extra: object) -> None:
    """A small run on ``store`` succeeds, or is refused in one line without creating ``out``."""
    args = ["run", store, "--out", out, "--concepts", "0", *extra, "--device", "cpu", "--quiet", "--no-cache"]
    code, err = _cli([*args, *_opts(k=5, budget=120, batch=20)], capsys)
    if code != 0:
        _refused_cleanly(code, err)
        assert not out.exists()


MANIFEST_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**65), 2**65), st.text(max_size=8), st.just([]), st.just({})
)


@SETTINGS
@given(data=st.data())
def test_a_corrupted_index_manifest_is_refused_in_one_line(tiny, tmp_path_factory, capsys, data) -> None:
    """Drop a key of manifest.json, or give a key (top level or a shard's) a value of another type: `index
    info` and `run --index` work (the change did not matter) or refuse in one line; nothing is created."""
    base = tmp_path_factory.mktemp("bad_index")
    idx = Path(shutil.copytree(tiny["index"], base / "index"))
    mf = idx / "manifest.json"
    m = json.loads(mf.read_text())
    target = m
    if data.draw(st.booleans(), label="in a shard") and m.get("shards"):
        target = m["shards"][0]
    key = data.draw(st.sampled_from(sorted(target)), label="key")
    if data.draw(st.booleans(), label="drop"):
        del target[key]
    else:
        target[key] = data.draw(MANIFEST_VALUES, label="value")
    mf.write_text(json.dumps(m))
    code, err = _cli(["index", "info", idx], capsys)
    if code != 0:
        _refused_cleanly(code, err)
    out = base / "run"
    _small_run_or_clean_refusal(capsys, tiny["store"], out, "--index", idx)


@pytest.fixture(scope="module")
def finished_run(tiny) -> Path:
    out = tiny["base"] / "finished"
    assert main([str(a) for a in _ckpt_run_args(tiny, out)]) == 0
    return out


def _ckpt_run_args(tiny: dict[str, Path], out: Path) -> list:
    return [
        "run", tiny["store"], "--out", out, "--concepts", "0,1", "--strategies", "maxent,id", "--k", "5",
        "--budget", "140", "--batch", "20", "--device", "cpu", "--quiet", "--no-cache",
    ]  # fmt: skip


@SETTINGS
@given(data=st.data())
def test_a_corrupted_checkpoint_is_refused_and_nothing_changes(
    tiny, finished_run, tmp_path_factory, capsys, data
) -> None:
    """Delete an array of the checkpoint, give it another shape, or cut the file: `run --resume` refuses in
    one line and the folder is the same byte for byte (never reported as a finished run)."""
    run = Path(shutil.copytree(finished_run, tmp_path_factory.mktemp("ckpt") / "run"))
    path = run / CHECKPOINT
    how = data.draw(st.sampled_from(["delete", "reshape", "truncate"]), label="how")
    if how == "truncate":
        raw = path.read_bytes()
        path.write_bytes(raw[: data.draw(st.integers(0, len(raw) - 1), label="keep")])
    else:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        key = data.draw(st.sampled_from(sorted(k for k in arrays if k != "config_json")), label="key")
        if how == "delete":
            del arrays[key]
        else:
            a = arrays[key]
            arrays[key] = (
                np.concatenate([a.reshape(-1), a.reshape(-1)[:1]]) if a.size else np.zeros(3, a.dtype)
            )
        with open(path, "wb") as f:
            np.savez(f, **arrays)
    before = _snapshot(run)
    code, err = _cli([*_ckpt_run_args(tiny, run), "--resume"], capsys)
    _refused_cleanly(code, err)
    assert "already finished" not in err
    assert _snapshot(run) == before, "a refused resume changed the run folder"


# ------------------------------------------------------------------------------------------------ ids
@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    ids=st.lists(st.integers(-(2**63), 2**63 - 1), min_size=2, max_size=40, unique=True),
    data=st.data(),
)
def test_neighbour_merge_keeps_any_int64_id(ids, data) -> None:
    """Merging per-shard neighbour lists keeps every real entry, whatever its id (negative, -1, the int64
    extremes), ordered by similarity then id, with missing slots (similarity -inf) last."""
    from seals_gpu.index.merge import merge_neighbors

    k = data.draw(st.integers(1, 6), label="k")
    ids = np.asarray(ids, dtype=np.int64)
    sims = np.asarray(
        data.draw(st.lists(st.sampled_from([0.5, 0.25, -0.75, 1.0]), min_size=ids.size, max_size=ids.size)),
        dtype=np.float32,
    )
    half = ids.size // 2
    parts = []
    for part_ids, part_sims in ((ids[:half], sims[:half]), (ids[half:], sims[half:])):
        order = np.lexsort((part_ids, -part_sims))[:k]
        D = np.full((1, k), -np.inf, np.float32)
        I = np.full((1, k), -1, np.int64)
        D[0, : order.size], I[0, : order.size] = part_sims[order], part_ids[order]
        parts.append((D, I))
    D, I = merge_neighbors(parts, k)
    want = np.lexsort((ids, -sims))[:k]
    n = min(k, ids.size)
    assert I[0, :n].tolist() == ids[want].tolist()
    assert D[0, :n].tolist() == sims[want].tolist()
    assert np.isneginf(D[0, n:]).all()
