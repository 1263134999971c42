"""--oracle queue: each round's picks go to RUN/queue/round-NNNN.parquet (and a Label Studio task list), the
command exits, people answer in RUN/labels/round-NNNN.{csv,parquet,json}, and --resume continues. With
truthful answers a queue run ends with exactly the simulated run's selections and metrics; a malformed answer
file is refused in one line (exit 2) and leaves the run folder byte for byte as it was."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seals_gpu.checkpoint import CHECKPOINT, KILL_AT_ENV
from seals_gpu.cli import main
from seals_gpu.oracle import SimulatedOracle
from seals_gpu.queue import queue_files
from seals_gpu.store import Store, write_store

from .conftest import clustered

ARGS = (
    "--concepts 0,1 --strategies maxent,random --modes seals,all --k 10 --batch 10 --budget 50 "
    "--seed-positives 3 --seed-negatives 17 --seed 0 --device cpu --quiet --search flat --no-cache"
).split()
N_ROUNDS = 3  # (50 - 20) / 10
TIMING = ["seconds_fit", "seconds_search", "seconds_select", "seconds_round"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    ids, x, labels = clustered(1500, 16, seed=3)
    text = [f"item number {i}" for i in ids.tolist()]
    path = tmp_path_factory.mktemp("qstore") / "store"
    write_store(path, ids, x, labels=labels, extra={"text": text})
    return path


def _run(store: Path, out: Path, *extra: str, capsys=None) -> tuple[int, str, str]:
    code = main(["run", str(store), "--out", str(out), *ARGS, *extra])
    if capsys is None:
        return code, "", ""
    o, e = capsys.readouterr()
    return code, o, e


def _truth(store: Path) -> SimulatedOracle:
    return SimulatedOracle.from_store(Store(store), [0, 1])


def _answer(store: Path, out: Path, round_no: int, fmt: str = "csv") -> Path:
    """Answer round ``round_no``'s queue file truthfully from the store's labels, as a person would."""
    q = pq.read_table(queue_files(out, round_no)[0]).to_pydict()
    oracle = _truth(store)
    labels = [int(oracle.label(c, np.array([i]))[0]) for c, i in zip(q["concept"], q["id"], strict=True)]
    path = out / "labels" / f"round-{round_no:04d}.{fmt}"
    path.parent.mkdir(exist_ok=True)
    if fmt == "csv":
        rows = ["concept,id,label"] + [
            f"{c},{i},{y}" for c, i, y in zip(q["concept"], q["id"], labels, strict=True)
        ]
        path.write_text("\n".join(rows) + "\n")
    elif fmt == "parquet":
        pq.write_table(pa.table({"concept": q["concept"], "id": q["id"], "label": labels}), path)
    else:
        tasks = json.loads(queue_files(out, round_no)[1].read_text())
        export = []
        for n, (t, y) in enumerate(zip(tasks, labels, strict=True)):
            choice = "positive" if y else "negative"
            result = [
                {"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [choice]}}
            ]
            export.append(
                {
                    "id": 100 + n,
                    "data": t["data"],
                    "annotations": [{"result": result, "was_cancelled": False}],
                }
            )
        path.write_text(json.dumps(export))
    return path


def _tree_hash(out: Path) -> dict[str, str]:
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file()
    }


def _same_results(a: Path, b: Path) -> None:
    sa, sb = pq.read_table(a / "selections.parquet"), pq.read_table(b / "selections.parquet")
    assert sa.num_rows > 0 and sa.equals(sb)
    ma = pq.read_table(a / "metrics.parquet").drop_columns(TIMING)
    mb = pq.read_table(b / "metrics.parquet").drop_columns(TIMING)
    assert ma.num_rows > 0
    for name in ma.column_names:  # NaN == NaN here: bit for bit, column by column
        x, y = ma.column(name).to_numpy(zero_copy_only=False), mb.column(name).to_numpy(zero_copy_only=False)
        if x.dtype.kind == "f":
            assert np.array_equal(x, y, equal_nan=True), name
        else:
            assert (x == y).all(), name


def _queue_to_end(store: Path, out: Path, fmt: str = "csv", capsys=None) -> None:
    assert _run(store, out, "--oracle", "queue", capsys=capsys)[0] == 0
    for r in range(N_ROUNDS + 1):
        _answer(store, out, r, fmt if r % 2 else "csv")
        assert _run(store, out, "--oracle", "queue", "--resume", capsys=capsys)[0] == 0


@pytest.fixture(scope="module")
def simulated(store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "run"
    assert _run(store, out)[0] == 0
    return out


def test_queue_round_trip_equals_simulation(store, simulated, tmp_path, capsys):
    out = tmp_path / "q"
    code, printed, _ = _run(store, out, "--oracle", "queue", capsys=capsys)
    assert code == 0
    qpath, lspath = queue_files(out, 0)
    assert str(qpath) in printed and str(out / "labels" / "round-0000") in printed
    q = pq.read_table(qpath)
    for col in ("concept", "strategy", "mode", "round", "id", "score", "asked_by", "text"):
        assert col in q.column_names
    assert "labels" not in q.column_names and "embedding" not in q.column_names
    # the seed set of a concept is shared by its 4 units: each (concept, id) listed once, asked by all 4
    assert q.num_rows == 2 * 20 and len(set(zip(*q.select(["concept", "id"]).to_pydict().values()))) == 40
    assert all(len(a.split(",")) == 4 for a in q.column("asked_by").to_pylist())
    assert q.column("text").to_pylist()[0] == f"item number {q.column('id').to_pylist()[0]}"
    for r in range(N_ROUNDS + 1):
        _answer(store, out, r, ("csv", "parquet", "json")[r % 3])
        code, printed, _ = _run(store, out, "--oracle", "queue", "--resume", capsys=capsys)
        assert code == 0
        if r < N_ROUNDS:
            q = pq.read_table(queue_files(out, r + 1)[0])
            assert set(q.column("round").to_pylist()) == {r + 1}
            assert np.isfinite(q.column("score").to_numpy()).all()
            assert (q.column("score").to_numpy() >= 0).all() and (q.column("score").to_numpy() <= 1).all()
            pairs = list(zip(*q.select(["concept", "id"]).to_pydict().values()))
            assert len(pairs) == len(set(pairs))
    assert not queue_files(out, N_ROUNDS + 1)[0].exists()
    _same_results(simulated, out)
    # a finished queue run says so on --resume and changes nothing
    before = _tree_hash(out)
    assert _run(store, out, "--oracle", "queue", "--resume")[0] == 0
    after = _tree_hash(out)
    assert {k: v for k, v in before.items() if k not in (".lock",)} == {
        k: v for k, v in after.items() if k not in (".lock",)
    }


def test_labelstudio_tasks_carry_data_and_prediction_scores(store, tmp_path):
    out = tmp_path / "q"
    assert _run(store, out, "--oracle", "queue") == (0, "", "")
    _answer(store, out, 0)
    assert _run(store, out, "--oracle", "queue", "--resume")[0] == 0
    qpath, lspath = queue_files(out, 1)
    tasks = json.loads(lspath.read_text())
    q = pq.read_table(qpath).to_pydict()
    assert len(tasks) == len(q["id"])
    for t, i, c, s in zip(tasks, q["id"], q["concept"], q["score"], strict=True):
        assert (
            t["data"]["id"] == str(i)
            and t["data"]["concept"] == c
            and t["data"]["text"] == f"item number {i}"
        )
        (pred,) = t["predictions"]
        assert pred["score"] == s and isinstance(pred["model_version"], str)
        (res,) = pred["result"]
        assert res["type"] == "choices" and res["from_name"] == "label" and res["to_name"] == "text"
        assert res["value"]["choices"] == ["positive" if s >= 0.5 else "negative"]


def test_all_mode_and_random_alone_match_simulation(store, tmp_path):
    extra = ["--strategies", "random", "--modes", "all"]
    sim, que = tmp_path / "s", tmp_path / "q"
    assert main(["run", str(store), "--out", str(sim), *ARGS, *extra]) == 0
    assert main(["run", str(store), "--out", str(que), *ARGS, *extra, "--oracle", "queue"]) == 0
    for r in range(N_ROUNDS + 1):
        _answer(store, que, r)
        assert (
            main(["run", str(store), "--out", str(que), *ARGS, *extra, "--oracle", "queue", "--resume"]) == 0
        )
    _same_results(sim, que)


# ------------------------------------------------------------------------------------- bad answer files
def _at_round_1(store: Path, out: Path) -> list[dict]:
    """A queue run answered through round 0, awaiting round 1; round 1's truthful answers as rows."""
    assert _run(store, out, "--oracle", "queue")[0] == 0
    _answer(store, out, 0)
    assert _run(store, out, "--oracle", "queue", "--resume")[0] == 0
    good = _answer(store, out, 1, "csv")
    rows = [
        dict(zip(("concept", "id", "label"), ln.split(","), strict=True))
        for ln in good.read_text().split()[1:]
    ]
    good.unlink()
    return rows


def _csv(rows: list[dict], header: str = "concept,id,label") -> str:
    keys = header.split(",")
    return "\n".join([header] + [",".join(str(r.get(k, "")) for k in keys) for r in rows]) + "\n"


@pytest.fixture
def awaiting(store, tmp_path) -> tuple[Path, list[dict]]:
    out = tmp_path / "q"
    return out, _at_round_1(store, out)


def _refused(store: Path, out: Path, name: str, content: str | bytes, capsys, *want: str) -> None:
    path = out / "labels" / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    before = _tree_hash(out)
    code, printed, err = _run(store, out, "--oracle", "queue", "--resume", capsys=capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("seals-gpu: error:"), err
    assert str(path) in lines[0]
    for w in want:
        assert w in lines[0], lines[0]
    assert _tree_hash(out) == before
    path.unlink()


def test_unknown_id_refused(store, awaiting, capsys):
    out, rows = awaiting
    bad = [*rows[:-1], {**rows[-1], "id": 5}]
    _refused(store, out, "round-0001.csv", _csv(bad), capsys, f"line {len(rows) + 1}", "id 5 was not queued")


def test_id_queued_for_another_concept_refused(store, awaiting, capsys):
    out, rows = awaiting
    other = next(
        r
        for r in rows
        if r["concept"] != rows[0]["concept"]
        and r["id"] not in {x["id"] for x in rows if x["concept"] == rows[0]["concept"]}
    )
    bad = [*rows, {"concept": rows[0]["concept"], "id": other["id"], "label": 0}]
    _refused(store, out, "round-0001.csv", _csv(bad), capsys, "was not queued for concept")


def test_missing_row_refused(store, awaiting, capsys):
    out, rows = awaiting
    _refused(
        store, out, "round-0001.csv", _csv(rows[1:]), capsys, "no answer for concept", f"id {rows[0]['id']}"
    )


def test_label_2_refused(store, awaiting, capsys):
    out, rows = awaiting
    bad = [{**rows[0], "label": 2}, *rows[1:]]
    _refused(store, out, "round-0001.csv", _csv(bad), capsys, "line 2", "label '2' is not 0 or 1")


def test_conflicting_duplicates_refused_agreeing_merged(store, awaiting, capsys):
    out, rows = awaiting
    flip = {**rows[0], "label": 1 - int(rows[0]["label"])}
    _refused(
        store, out, "round-0001.csv", _csv([*rows, flip]), capsys, f"line {len(rows) + 2}", "keep one answer"
    )
    (out / "labels" / "round-0001.csv").write_text(_csv([*rows, rows[0]]))  # the same answer twice: merged
    assert _run(store, out, "--oracle", "queue", "--resume")[0] == 0
    assert queue_files(out, 2)[0].exists()


def test_wrong_columns_refused(store, awaiting, capsys):
    out, rows = awaiting
    renamed = [{"concept": r["concept"], "item": r["id"], "label": r["label"]} for r in rows]
    _refused(
        store, out, "round-0001.csv", _csv(renamed, "concept,item,label"), capsys, "missing column(s) id"
    )
    table = pa.table({"concept": [int(r["concept"]) for r in rows], "id": [int(r["id"]) for r in rows]})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    _refused(
        store, out, "round-0001.parquet", sink.getvalue().to_pybytes(), capsys, "missing column(s) label"
    )


def test_empty_files_refused(store, awaiting, capsys):
    out, _ = awaiting
    _refused(store, out, "round-0001.csv", "", capsys, "is empty")
    _refused(store, out, "round-0001.csv", "concept,id,label\n", capsys, "holds no answers")
    _refused(store, out, "round-0001.json", "[]", capsys, "holds no answers")
    _refused(store, out, "round-0001.parquet", b"", capsys, "not a readable Parquet file")


def test_labelstudio_unknown_choice_refused(store, awaiting, capsys):
    out, rows = awaiting
    tasks = json.loads(queue_files(out, 1)[1].read_text())
    export = []
    for n, t in enumerate(tasks):
        choice = "maybe" if n == 3 else "negative"
        result = [
            {"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [choice]}}
        ]
        export.append({"id": 7 + n, "data": t["data"], "annotations": [{"result": result}]})
    _refused(
        store, out, "round-0001.json", json.dumps(export), capsys, "task 4 (Label Studio id 10)", "'maybe'"
    )
    del export[2]["annotations"]
    export[3]["annotations"][0]["result"][0]["value"]["choices"] = ["Yes"]
    _refused(store, out, "round-0001.json", json.dumps(export), capsys, "task 3", "no annotation")


def test_no_answers_yet_or_two_files_refused(store, awaiting, capsys):
    out, rows = awaiting
    before = _tree_hash(out)
    code, _, err = _run(store, out, "--oracle", "queue", "--resume", capsys=capsys)
    assert code == 2 and "round 1 awaits answers" in err and str(out / "labels" / "round-0001") in err
    assert _tree_hash(out) == before
    (out / "labels" / "round-0001.parquet").write_bytes(b"x")
    _refused(store, out, "round-0001.csv", _csv(rows), capsys, "2 answer files")


def test_labelstudio_export_parsed(tmp_path):
    from seals_gpu.queue import read_answers

    export = [
        {
            "id": 1,
            "data": {"id": "-9223372036854775808", "concept": 3},
            "annotations": [
                {"result": [{"type": "choices", "value": {"choices": ["Positive"]}}]},
                {"result": [{"type": "choices", "value": {"choices": ["no"]}}], "was_cancelled": True},
            ],
        },
        {
            "id": 2,
            "data": {"id": 12, "concept": 3},
            "annotations": [
                {"result": [{"type": "choices", "value": {"choices": ["no"]}}]},
                {"result": [{"type": "choices", "value": {"choices": ["negative"]}}]},
            ],
        },
    ]
    path = tmp_path / "round-0002.json"
    path.write_text(json.dumps(export))
    got = read_answers(path, 2, {"3": np.array([-(2**63), 12], np.int64)})
    assert got == {("3", -(2**63)): True, ("3", 12): False}


# ------------------------------------------------------------------------------------- crash safety
@pytest.mark.kills
def test_kill_between_queue_and_checkpoint_then_resume(store, simulated, tmp_path):
    """SIGKILL after a round's queue files are written and before its checkpoint commits, at the seed round
    and at round 2: --resume (with the answers already there) redoes the round and ends as the simulation."""
    out = tmp_path / "q"
    env = {k: v for k, v in os.environ.items() if k != KILL_AT_ENV}

    def cli(*extra: str, kill_at: str | None = None) -> int:
        if kill_at is None:  # only a killed run needs a process of its own
            return _run(store, out, "--oracle", "queue", *extra)[0]
        e = env | {KILL_AT_ENV: kill_at}
        cmd = [
            sys.executable,
            "-m",
            "seals_gpu",
            "run",
            str(store),
            "--out",
            str(out),
            *ARGS,
            "--oracle",
            "queue",
        ]
        return subprocess.run([*cmd, *extra], env=e, capture_output=True, timeout=300).returncode

    assert cli(kill_at="queue:0") == -signal.SIGKILL
    assert queue_files(out, 0)[0].exists() and not (out / CHECKPOINT).exists()
    first = queue_files(out, 0)[0].read_bytes()
    assert cli("--resume") == 0  # the start, killed before its first checkpoint: begun again
    assert queue_files(out, 0)[0].read_bytes() == first
    _answer(store, out, 0)
    assert cli("--resume") == 0
    _answer(store, out, 1)
    assert cli("--resume", kill_at="queue:2") == -signal.SIGKILL
    assert queue_files(out, 2)[0].exists()
    assert cli("--resume") == 0  # round 1's answers are read again, round 2 queued again
    for r in (2, 3):
        _answer(store, out, r)
        assert cli("--resume") == 0
    _same_results(simulated, out)


def test_store_without_labels_needs_queue(tmp_path, capsys):
    ids, x, _ = clustered(300, 8, seed=0)
    s = write_store(tmp_path / "nolab", ids, x)
    code = main(["run", str(s.path), "--out", str(tmp_path / "r"), "--concepts", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "--oracle queue" in err and not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------------- --seed-ids
def _seed_file(store: Path, tmp_path: Path) -> Path:
    """Concept 0: 3 known positives and 2 known negatives; concept 1: 4 known positives (labels true)."""
    s = Store(store)
    ids, is_test = s.read_split()
    train = np.sort(ids[~is_test])
    pos = _truth(store).positives
    rows = ["concept,id,label"]
    for c, n_pos, n_neg in ((0, 3, 2), (1, 4, 0)):
        p = pos[c][np.isin(pos[c], train)][:n_pos]
        negs = train[~np.isin(train, pos[c])][:n_neg]
        rows += [f"{c},{i},1" for i in p.tolist()] + [f"{c},{i},0" for i in negs.tolist()]
    path = tmp_path / "seeds.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_seed_ids_queue_equals_simulated_and_asks_only_drawn_negatives(store, tmp_path):
    seeds = _seed_file(store, tmp_path)
    extra = ["--seed-ids", str(seeds)]
    sim, que = tmp_path / "s", tmp_path / "q"
    assert main(["run", str(store), "--out", str(sim), *ARGS, *extra]) == 0
    assert main(["run", str(store), "--out", str(que), *ARGS, *extra, "--oracle", "queue"]) == 0
    q = pq.read_table(queue_files(que, 0)[0]).to_pydict()
    known = {(int(c), int(i)) for c, i, _ in (ln.split(",") for ln in seeds.read_text().split()[1:])}
    asked = set(zip(q["concept"], q["id"], strict=True))
    assert not asked & known  # the known ids are not asked again
    # the seed negatives (17) are filled with random train ids: 17 - 2 known for concept 0, 17 for concept 1
    assert sum(c == 0 for c in q["concept"]) == 15 and sum(c == 1 for c in q["concept"]) == 17
    for r in range(N_ROUNDS + 1):
        _answer(store, que, r)
        assert (
            main(["run", str(store), "--out", str(que), *ARGS, *extra, "--oracle", "queue", "--resume"]) == 0
        )
    _same_results(sim, que)
    sel = pq.read_table(sim / "selections.parquet").to_pydict()
    round0 = {
        (c, i): y
        for c, i, r, y in zip(sel["concept"], sel["id"], sel["round"], sel["label"], strict=True)
        if r == 0
    }
    for c, i, y in (ln.split(",") for ln in seeds.read_text().split()[1:]):
        assert round0[(int(c), int(i))] == (y == "1")


def test_seed_ids_refuses_test_and_unknown_ids(store, tmp_path, capsys):
    s = Store(store)
    ids, is_test = s.read_split()
    good = _seed_file(store, tmp_path).read_text()
    for bad_id, why in ((int(ids[is_test][0]), "is in the test split"), (3, "is not in the store")):
        path = tmp_path / "bad.csv"
        path.write_text(good + f"1,{bad_id},1\n")
        out = tmp_path / "r"
        code = main(["run", str(store), "--out", str(out), *ARGS, "--seed-ids", str(path)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and why in err[0] and str(path) in err[0], err
        assert f"line {len(good.split()) + 1}" in err[0] and not out.exists()


def test_store_without_labels_runs_with_seed_ids(tmp_path, capsys):
    ids, x, labels = clustered(800, 8, seed=2)
    s = write_store(tmp_path / "nolab", ids, x)
    ids_all, is_test = s.read_split()
    train = np.sort(ids_all[~is_test])
    members = [i for i, lab in zip(ids.tolist(), labels, strict=True) if 0 in lab]
    known = [i for i in members if np.isin(i, train)][:3]
    seeds = tmp_path / "seeds.parquet"
    pq.write_table(pa.table({"concept": ["whales"] * 3, "id": known}), seeds)
    out = tmp_path / "r"
    args = [
        "run",
        str(s.path),
        "--out",
        str(out),
        "--concepts",
        "whales",
        "--strategies",
        "maxent",
        "--modes",
        "seals",
        "--k",
        "5",
        "--batch",
        "5",
        "--budget",
        "18",
        "--seed-negatives",
        "5",
        "--device",
        "cpu",
        "--quiet",
        "--search",
        "flat",
        "--oracle",
        "queue",
        "--seed-ids",
        str(seeds),
    ]
    assert main(args) == 0
    truth = set(members)
    for r in range(3):
        q = pq.read_table(queue_files(out, r)[0]).to_pydict()
        assert len(q["id"]) == 5 and set(q["concept"]) == {"whales"}
        (out / "labels").mkdir(exist_ok=True)
        rows = ["concept,id,label"] + [f"whales,{i},{int(i in truth)}" for i in q["id"]]
        (out / "labels" / f"round-{r:04d}.csv").write_text("\n".join(rows) + "\n")
        assert main([*args, "--resume"]) == 0
    m = pq.read_table(out / "metrics.parquet").to_pydict()
    assert m["n_labeled"][-1] == 18 and m["round"][-1] == 2
    assert all(np.isnan(m["test_ap"])) and all(np.isnan(m["recall"]))
    # issue #14's hunt, end to end: three known whales, a script labeling the queue, then the final model
    # ranks the whole store into a list of likely positives
    assert main(["retrieve", str(out), "--top", "100", "--device", "cpu", "--quiet"]) == 0
    got = pq.read_table(out / "retrieved.parquet").to_pydict()
    assert got["rank"] == list(range(1, 101)) and set(got["concept"]) == {"whales"}
    labeled = set(pq.read_table(out / "selections.parquet").column("id").to_pylist())
    assert not labeled & set(got["id"])  # already labeled items are left out by default
    hits = len(truth & set(got["id"]))
    left = truth - labeled  # the whales still to be found, among the 800 - 18 unlabeled items
    chance = 100 * len(left) / (800 - len(labeled))  # whales in a random 100 of them
    assert hits >= 3 * chance, f"{hits} whales in the top 100; chance gives {chance:.1f}"
    capsys.readouterr()
    code = main([a for a in args if a not in ("--seed-ids", str(seeds))] + ["--out", str(tmp_path / "r2")])
    assert code == 2 and "--seed-ids" in capsys.readouterr().err


def test_format_1_checkpoint_still_read(store, simulated, tmp_path):
    """A checkpoint written before format 2 (no version, no pending_* keys, plain pools) resumes: nothing
    pending."""
    import shutil

    from seals_gpu.checkpoint import decode_sorted_ids

    out = tmp_path / "old"
    shutil.copytree(simulated, out)
    with np.load(out / CHECKPOINT) as z:
        arrays = {k: z[k] for k in z.files if k != "version" and not k.startswith("pending_")}
    for k in [k for k in arrays if k.endswith("_pool_gaps")]:  # format 1 stored pools as plain sorted ids
        pool = k[: -len("_gaps")]
        arrays[pool] = decode_sorted_ids(arrays[pool], arrays.pop(k))
    with open(out / CHECKPOINT, "wb") as f:
        np.savez(f, **arrays)
    assert _run(store, out, "--resume")[0] == 0
    assert pq.read_table(out / "selections.parquet").equals(pq.read_table(simulated / "selections.parquet"))
