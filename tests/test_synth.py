"""The synthetic store generator: determinism, exact prevalences, streaming, argument checks, learnability."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from seals_gpu.errors import ConfigError, SealsError, StoreError
from seals_gpu.store import Store
from seals_gpu.synth import CHUNK_ROWS, make_synthetic_store

BASE = dict(n=3000, dim=16, concepts=4, prevalence=(0.005, 0.02), seed=7)


def _read(store: Store):
    ids, emb, labels, split = [], [], [], []
    for f in store.files:
        t = pq.read_table(f)
        ids.append(t.column("id").to_numpy())
        emb.append(np.stack(t.column("embedding").to_numpy(zero_copy_only=False)))
        labels += t.column("labels").to_pylist()
        split += t.column("split").to_pylist()
    return np.concatenate(ids), np.concatenate(emb), labels, split


def test_same_arguments_give_identical_data(tmp_path):
    a = make_synthetic_store(tmp_path / "a", **BASE)
    b = make_synthetic_store(tmp_path / "b", **BASE)
    ia, ea, la, sa = _read(a)
    ib, eb, lb, sb = _read(b)
    assert np.array_equal(ia, ib)
    assert ea.tobytes() == eb.tobytes()
    assert la == lb and sa == sb
    assert pq.read_table(tmp_path / "a" / "_concepts.parquet").equals(
        pq.read_table(tmp_path / "b" / "_concepts.parquet")
    )
    c = make_synthetic_store(tmp_path / "c", **{**BASE, "seed": 8})
    assert not np.array_equal(_read(c)[1], ea)


def test_small_batches_equal_one_big_batch(tmp_path):
    args = {**BASE, "n": 2 * CHUNK_ROWS + 123}
    big = _read(make_synthetic_store(tmp_path / "big", **args, batch_rows=10**6))
    small_store = make_synthetic_store(tmp_path / "small", **args, batch_rows=1000)
    small = _read(small_store)
    assert np.array_equal(big[0], small[0])
    assert big[1].tobytes() == small[1].tobytes()
    assert big[2] == small[2] and big[3] == small[3]
    # the small batches really were written separately (several row groups)
    assert sum(pq.ParquetFile(f).metadata.num_row_groups for f in small_store.files) > 3


def test_schema_ids_split_and_exact_prevalence(tmp_path):
    n, lo, hi = 20_000, 0.002, 0.01
    store = make_synthetic_store(tmp_path / "s", n=n, dim=8, concepts=12, prevalence=(lo, hi), seed=3)
    assert store.num_rows == n and store.dim == 8
    assert store.label_kind == "int" and store.has_split
    ids, emb, labels, split = _read(store)
    # unique ids that are not row positions
    assert np.unique(ids).size == n
    assert not np.array_equal(np.sort(ids), np.arange(n))
    assert ids.max() > n and ids.min() >= 0
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    test_frac = np.mean(np.asarray(split) == "test")
    assert 0.18 < test_frac < 0.22
    assert set(split) == {"train", "test"}

    concepts = pq.read_table(tmp_path / "s" / "_concepts.parquet").to_pydict()
    assert concepts["concept_id"] == list(range(12))
    assert concepts["name"][7] == "synth-007"
    counts = store.concept_counts()
    for cid, npos, prev in zip(
        concepts["concept_id"], concepts["n_positive"], concepts["prevalence"], strict=True
    ):
        assert counts[cid] == npos
        assert prev == pytest.approx(npos / n)
        assert lo - 0.5 / n <= prev <= hi + 0.5 / n
    assert sorted(counts) == list(range(12))
    assert all(lab == sorted(set(lab)) for lab in labels)
    assert Store(tmp_path / "s").concept_names()[3] == "synth-003"


def test_tiny_and_conceptless_stores(tmp_path):
    one = make_synthetic_store(tmp_path / "one", n=1, dim=2, concepts=1, prevalence=(0.1, 0.2), seed=0)
    assert one.num_rows == 1
    assert one.concept_counts() == {0: 1}  # at least one positive per concept
    none = make_synthetic_store(tmp_path / "none", n=50, dim=3, concepts=0, prevalence=(0.1, 0.2), seed=0)
    assert none.concept_counts() == {}
    assert none.has_labels


def test_existing_output_needs_overwrite(tmp_path):
    make_synthetic_store(tmp_path / "s", **BASE)
    with pytest.raises(StoreError, match="already exists"):
        make_synthetic_store(tmp_path / "s", **BASE)
    make_synthetic_store(tmp_path / "s", **{**BASE, "seed": 1}, overwrite=True, progress=True)
    assert Store(tmp_path / "s").num_rows == BASE["n"]


@pytest.mark.parametrize(
    "bad, err, needle",
    [
        ({"n": 0}, StoreError, "n=0"),
        ({"dim": 1}, StoreError, "dim=1"),
        ({"concepts": -1}, ConfigError, "concepts=-1"),
        ({"prevalence": (0.0, 0.1)}, ConfigError, "prevalence"),
        ({"prevalence": (0.01, 1.0)}, ConfigError, "prevalence"),
        ({"prevalence": (0.2, 0.1)}, ConfigError, "MIN 0.2 is above MAX 0.1"),
        ({"prevalence": (float("nan"), 0.1)}, ConfigError, "prevalence"),
        ({"prevalence": (0.1,)}, ConfigError, "prevalence"),
        ({"concepts": 20, "prevalence": (0.01, 0.1)}, ConfigError, "concepts x MAX"),
        ({"seed": -3}, ConfigError, "seed=-3"),
        ({"batch_rows": 0}, ConfigError, "batch_rows=0"),
        ({"n": 10.5}, ConfigError, "n=10.5"),
    ],
)
def test_bad_arguments_name_the_value(tmp_path, bad, err, needle):
    with pytest.raises(err, match=needle.replace("(", r"\(").replace(")", r"\)")) as e:
        make_synthetic_store(tmp_path / "s", **{**BASE, **bad})
    assert isinstance(e.value, SealsError)
    assert not (tmp_path / "s").exists()


def test_concepts_are_learnable_but_not_trivial(tmp_path):
    sklearn = pytest.importorskip("sklearn")
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score

    assert sklearn
    n = 20_000
    store = make_synthetic_store(tmp_path / "s", n=n, dim=32, concepts=3, prevalence=(0.01, 0.02), seed=0)
    x, labels, test = [], [], []
    for b in store.iter_batches(labels=True, split=True):
        x.append(b.embeddings)
        labels += b.labels
        test.append(b.split)
    x, test = np.concatenate(x), np.concatenate(test)
    aps = []
    for c in range(3):
        y = np.array([c in lab for lab in labels])
        model = LogisticRegression(C=10.0, max_iter=1000).fit(x[~test], y[~test])
        ap = average_precision_score(y[test], model.decision_function(x[test]))
        aps.append(ap)
        assert ap > 5 * y.mean(), (c, ap, y.mean())
        assert ap < 0.99, (c, ap)
        # positives cluster: their nearest neighbours are positives far more often than the base rate
        pos = x[y][:100]
        nn = np.argsort(-(pos @ x.T), axis=1)[:, 1:11]
        assert y[nn].mean() > 5 * y.mean()
    assert 0.3 < np.mean(aps) < 0.95
