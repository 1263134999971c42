"""The embedding store: a folder of Parquet files with global int64 ids.

Schema (see ARCHITECTURE.md):

- ``id: int64`` unique across the store (other integer types are widened on read);
- ``embedding: fixed_size_list<float32>[d]`` (``float16`` and ``list<float>`` accepted on read);
- optional ``labels: list<int64>`` or ``list<string>``: the concepts each item belongs to (multi-label);
- optional ``split: string`` with values ``train`` / ``test``; without it the test split is a deterministic
  hash of the id (:func:`hash_test_mask`);
- any other column passes through untouched (text, uri, ...).

Data files are ``*.parquet`` directly in the folder; names starting with ``_`` or ``.`` are side files
(``_concepts.parquet`` maps concept ids to human names). Reads stream record batches, so memory stays
bounded by the batch size whatever the store's size.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .atomic import atomic_dir, check_output_dir
from .errors import StoreError

TEST_FRACTION = 0.2
CONCEPTS_FILE = "_concepts.parquet"
DEFAULT_BATCH_ROWS = 65_536

__all__ = [
    "Store",
    "StoreWriter",
    "Batch",
    "write_store",
    "hash_test_mask",
    "l2_normalize",
    "TEST_FRACTION",
]


@dataclass(frozen=True)
class Batch:
    """One streamed slice of the store. ``embeddings`` is float32 (n, d), C-contiguous."""

    ids: np.ndarray
    embeddings: np.ndarray | None
    labels: list[list[Any]] | None
    split: np.ndarray | None  # bool: True where the row is in the test split
    file: str
    row_offset: int  # index of the first row of this batch within its file


def hash_test_mask(ids: np.ndarray, fraction: float = TEST_FRACTION) -> np.ndarray:
    """Deterministic test split from ids alone: splitmix64(id) mapped to [0, 1) and compared to ``fraction``.

    The same id is in the same split on every machine, whatever the order or sharding of the store.
    """
    x = np.asarray(ids, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    u = (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return u < fraction


_F32_TINY = float(np.finfo(np.float32).tiny)  # smallest normal float32: below it a row is denormal
_SUMSQ_SAFE = 2.0**-100  # a float32 sum of squares at least this (and finite) lost nothing to underflow


def l2_normalize(x: np.ndarray, *, where: str = "embeddings") -> np.ndarray:
    """Return float32 rows of unit length; zero and denormal rows are an error (they have no direction).

    Finite rows of any size are normalised correctly: a row whose float32 sum of squares overflows (values
    near 3e38, or a row scaled by 1e30) or underflows is first scaled by a power of two that brings its
    largest value into [0.5, 1), which is exact, so it normalises to the same vector as the row unscaled.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    # row norms by einsum: the same float32 sum of squares as np.linalg.norm, ~3x faster (no temporaries)
    with np.errstate(over="ignore", under="ignore"):
        sumsq = np.einsum("ij,ij->i", x, x)
    rescale = np.flatnonzero((sumsq == np.inf) | (sumsq < _SUMSQ_SAFE))
    if rescale.size:
        rows = x[rescale]
        peak = np.abs(rows).max(axis=1) if rows.shape[1] else np.zeros(rows.shape[0], np.float32)
        zero = np.flatnonzero(peak == 0)
        if zero.size:
            raise StoreError(
                f"{where}: row {int(rescale[zero[0]])} is an all-zero vector, which cannot be l2-normalised; "
                "drop it or give it a real embedding"
            )
        tiny = np.flatnonzero(peak < _F32_TINY)
        if tiny.size:
            raise StoreError(
                f"{where}: row {int(rescale[tiny[0]])} is a denormal vector (every value below "
                f"{_F32_TINY:.3g} in absolute value), too close to zero to l2-normalise reliably; "
                "drop it or give it a real embedding"
            )
        _, exp = np.frexp(peak)  # peak = m * 2**exp, 0.5 <= m < 1 (for inf: exp 0, left to the caller)
        x = x.copy()
        x[rescale] = np.ldexp(rows, -exp[:, None].astype(np.int32))
        with np.errstate(over="ignore", under="ignore"):
            sumsq[rescale] = np.einsum("ij,ij->i", x[rescale], x[rescale])
    norms = np.sqrt(sumsq)[:, None]
    return np.ascontiguousarray(x / norms, dtype=np.float32)


def rescaled_rows(x: np.ndarray) -> int:
    """How many rows of ``x`` (float32) :func:`l2_normalize` rescales first: their sum of squares is out of
    float32's range (finite values of huge or tiny magnitude)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    with np.errstate(over="ignore", under="ignore"):
        sumsq = np.einsum("ij,ij->i", x, x)
    return int(np.count_nonzero((sumsq == np.inf) | (sumsq < _SUMSQ_SAFE)))


def _check_finite(emb: np.ndarray, ids: np.ndarray, where: str) -> None:
    finite = np.isfinite(emb).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise StoreError(
            f"{where}: embedding of id {int(ids[row])} contains NaN or inf; "
            "fix or drop that row before writing the store"
        )


def _embedding_dim(field: pa.Field, file: str) -> int | None:
    t = field.type
    if pa.types.is_fixed_size_list(t):
        value = t.value_type
        if not (pa.types.is_floating(value)):
            raise StoreError(
                f"{file}: column 'embedding' holds {value}, expected float32 or float16 values; "
                "write embeddings as fixed_size_list<float32>[d]"
            )
        return t.list_size
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        if not pa.types.is_floating(t.value_type):
            raise StoreError(
                f"{file}: column 'embedding' holds {t.value_type}, expected float values; "
                "write embeddings as fixed_size_list<float32>[d]"
            )
        return None
    raise StoreError(
        f"{file}: column 'embedding' has type {t}, expected fixed_size_list<float32>[d] "
        "(float16 and list<float> are accepted too)"
    )


def _embeddings_to_numpy(col: pa.Array, dim: int, file: str, row0: int) -> np.ndarray:
    """A record batch's embedding column as (n, dim) values, refusing nulls and rows of another length."""
    if col.null_count:
        raise StoreError(
            f"{file}: column 'embedding' has a null at row {row0 + int(np.flatnonzero(col.is_null())[0])}; "
            "every row needs an embedding"
        )
    t = col.type
    if pa.types.is_fixed_size_list(t):
        values = col.flatten()
        n = len(col)
    else:
        lengths = np.asarray(col.value_lengths())
        wrong = np.flatnonzero(lengths != dim)
        if wrong.size:
            raise StoreError(
                f"{file}: row {row0 + int(wrong[0])} has an embedding of length {int(lengths[wrong[0]])}, "
                f"expected {dim} like the rest of the store; all embeddings need one dimension"
            )
        values = col.flatten()
        n = len(col)
    arr = values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return arr.reshape(n, dim)


def _ids_to_numpy(col: pa.Array, file: str) -> np.ndarray:
    """A record batch's id column as int64, refusing what is not a global int64 id."""
    if not pa.types.is_integer(col.type):
        raise StoreError(
            f"{file}: column 'id' has type {col.type}, expected int64; ids are global integers "
            "(cast them, or map your keys to int64 and keep the key in another column)"
        )
    if col.null_count:
        raise StoreError(f"{file}: column 'id' has {col.null_count} null(s); every row needs an int64 id")
    ids = col.to_numpy(zero_copy_only=False)
    if ids.dtype == np.uint64 and ids.size and ids.max() > np.iinfo(np.int64).max:
        raise StoreError(f"{file}: column 'id' has values above the int64 range; ids must fit in int64")
    return ids.astype(np.int64, copy=False)


class Store:
    """A read-only view of a store folder. Opening it checks every file's schema (cheap, metadata only);
    :meth:`validate` scans the data too (NaN/inf, duplicate ids, zero vectors).

    Example:
        >>> store = Store("data/wordnet")              # doctest: +SKIP
        >>> for batch in store.iter_batches():         # doctest: +SKIP
        ...     batch.ids, batch.embeddings.shape
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        if not self.path.exists():
            raise StoreError(
                f"store {self.path} does not exist; create one with `seals-gpu store synth` or write_store()"
            )
        if self.path.is_file():
            raise StoreError(f"store {self.path} is a file; a store is a folder of Parquet files")
        self.files: list[Path] = sorted(
            p for p in self.path.iterdir() if p.suffix == ".parquet" and not p.name.startswith(("_", "."))
        )
        if not self.files:
            raise StoreError(f"store {self.path} holds no .parquet files; it is empty")
        self._meta: list[pq.FileMetaData] = []
        dim: int | None = None
        dim_file: Path | None = None
        self.label_kind: str | None = None
        self.has_split = True
        self.has_labels = True
        schema0: pa.Schema | None = None
        for f in self.files:
            try:
                pf = pq.ParquetFile(f)
            except Exception as e:  # pyarrow raises several types for corrupt files
                raise StoreError(f"{f}: not a readable Parquet file ({e}); rewrite or remove it") from None
            schema = pf.schema_arrow
            self._meta.append(pf.metadata)
            for col in ("id", "embedding"):
                if col not in schema.names:
                    raise StoreError(
                        f"{f}: missing column {col!r} (found {schema.names}); a store needs 'id' (int64) "
                        "and 'embedding' (fixed_size_list<float32>[d])"
                    )
            if not pa.types.is_integer(schema.field("id").type):
                raise StoreError(
                    f"{f}: column 'id' has type {schema.field('id').type}, expected int64; "
                    "map your keys to int64 ids"
                )
            d = _embedding_dim(schema.field("embedding"), str(f))
            if d is None:
                d = self._first_list_len(pf, f)
            if dim is None:
                dim, dim_file = d, f
            elif d != dim:
                raise StoreError(
                    f"{f}: embeddings have dimension {d}, but {dim_file} has {dim}; "
                    "all files of a store need the same dimension"
                )
            has_labels = "labels" in schema.names
            if has_labels:
                lt = schema.field("labels").type
                if not (pa.types.is_list(lt) or pa.types.is_large_list(lt)):
                    raise StoreError(
                        f"{f}: column 'labels' has type {lt}, expected list<int64> or list<string> "
                        "(the concepts each item belongs to)"
                    )
                if pa.types.is_integer(lt.value_type):
                    kind = "int"
                elif pa.types.is_string(lt.value_type) or pa.types.is_large_string(lt.value_type):
                    kind = "str"
                else:
                    raise StoreError(
                        f"{f}: column 'labels' holds {lt.value_type}, expected int64 or string concept ids"
                    )
                if self.label_kind is not None and kind != self.label_kind:
                    raise StoreError(
                        f"{f}: 'labels' are {kind} here but {self.label_kind} in other files; "
                        "use one kind of concept id (int64 or string) in every file"
                    )
                self.label_kind = kind
            if "split" in schema.names:
                st = schema.field("split").type
                if not (pa.types.is_string(st) or pa.types.is_large_string(st) or pa.types.is_dictionary(st)):
                    raise StoreError(f"{f}: column 'split' has type {st}, expected string ('train'/'test')")
            if schema0 is None:
                schema0 = schema
                self.has_labels = has_labels
                self.has_split = "split" in schema.names
            else:
                if has_labels != self.has_labels:
                    raise StoreError(
                        f"{f}: has{'' if has_labels else ' no'} 'labels' column, unlike {self.files[0]}"
                    )
                if ("split" in schema.names) != self.has_split:
                    raise StoreError(f"{f}: 'split' column present in some files only; add it to all or none")
        assert dim is not None
        if dim < 1:
            raise StoreError(f"store {self.path}: embedding dimension is {dim}; it must be at least 1")
        self.dim: int = int(dim)
        self.num_rows: int = int(sum(m.num_rows for m in self._meta))
        if self.num_rows == 0:
            raise StoreError(f"store {self.path}: its files hold no rows; it is empty")
        self.schema: pa.Schema = schema0  # type: ignore[assignment]
        self._fingerprint: str | None = None

    @staticmethod
    def _first_list_len(pf: pq.ParquetFile, f: Path) -> int:
        for rb in pf.iter_batches(batch_size=1, columns=["embedding"]):
            if len(rb) and rb.column(0)[0].is_valid:
                return len(rb.column(0)[0])
        raise StoreError(f"{f}: no embedding to read a dimension from")

    # ------------------------------------------------------------------ identity
    @property
    def fingerprint(self) -> str:
        """A content fingerprint: file names, sizes, row counts and each file's Parquet footer.

        The footer holds every row group's statistics, so rewriting data changes it; it costs one small
        read per file, not a scan.
        """
        if self._fingerprint is None:
            h = hashlib.sha256()
            for f, m in zip(self.files, self._meta):
                size = f.stat().st_size
                h.update(f"{f.name}\0{size}\0{m.num_rows}\0".encode())
                with open(f, "rb") as fh:
                    fh.seek(max(0, size - 65536))
                    h.update(fh.read())
            self._fingerprint = h.hexdigest()[:32]
        return self._fingerprint

    # ------------------------------------------------------------------ streaming
    def iter_batches(
        self,
        *,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        embeddings: bool = True,
        labels: bool = False,
        split: bool = False,
        normalize: bool = True,
        columns: Sequence[str] = (),
        labels_arrow: bool = False,
    ) -> Iterator[Batch]:
        """Stream the store in batches of at most ``batch_rows`` rows (bounded memory).

        Embeddings come back float32, l2-normalised unless ``normalize=False``; NaN or inf raises.
        """
        if labels and not self.has_labels:
            raise StoreError(f"store {self.path} has no 'labels' column; it cannot simulate an oracle")
        cols = ["id"]
        if embeddings:
            cols.append("embedding")
        if labels:
            cols.append("labels")
        if split and self.has_split:
            cols.append("split")
        cols += [c for c in columns if c not in cols]
        for f in self.files:
            try:
                # no pre-buffering: it reads a whole file's column chunks up front (~ a file's worth of memory)
                pf = pq.ParquetFile(f, pre_buffer=False)
                row0 = 0
                for rb in pf.iter_batches(batch_size=batch_rows, columns=cols):
                    yield self._convert(rb, f, row0, embeddings, labels, split, normalize, labels_arrow)
                    row0 += len(rb)
            except StoreError:
                raise
            except (OSError, pa.ArrowException) as e:
                raise StoreError(f"{f}: could not be read ({e}); the file is corrupt or truncated") from None

    def _convert(
        self,
        rb: pa.RecordBatch,
        f: Path,
        row0: int,
        emb: bool,
        labels: bool,
        split: bool,
        normalize: bool,
        labels_arrow: bool = False,
    ) -> Batch:
        ids = _ids_to_numpy(rb.column("id"), str(f))
        x = None
        if emb:
            x = _embeddings_to_numpy(rb.column("embedding"), self.dim, str(f), row0)
            _check_finite(x, ids, str(f))
            if normalize:
                x = l2_normalize(x, where=f"{f} (id {int(ids[0]) if ids.size else '?'}...)")
        lab = None
        if labels and labels_arrow:
            lab = rb.column("labels")  # a ListArray: see _flat_labels
        elif labels:  # each concept once per row (a store written elsewhere may repeat one)
            lab = [list(dict.fromkeys(v)) if v is not None else [] for v in rb.column("labels").to_pylist()]
        sp = None
        if split:
            if self.has_split:
                s = np.asarray(rb.column("split").cast(pa.string()).to_pylist(), dtype=object)
                bad = ~np.isin(s, ["train", "test"])
                if bad.any():
                    r = int(np.flatnonzero(bad)[0])
                    raise StoreError(f"{f}: row {row0 + r} has split {s[r]!r}; expected 'train' or 'test'")
                sp = s == "test"
            else:
                sp = hash_test_mask(ids)
        return Batch(ids=ids, embeddings=x, labels=lab, split=sp, file=f.name, row_offset=row0)

    def read_ids(self) -> np.ndarray:
        """All ids in store order, int64. Costs 8 bytes per row."""
        out = np.empty(self.num_rows, dtype=np.int64)
        pos = 0
        for b in self.iter_batches(embeddings=False):
            out[pos : pos + b.ids.size] = b.ids
            pos += b.ids.size
        return out

    def read_split(self) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, is_test)`` for every row, in store order."""
        ids = np.empty(self.num_rows, dtype=np.int64)
        test = np.empty(self.num_rows, dtype=bool)
        pos = 0
        for b in self.iter_batches(embeddings=False, split=True):
            ids[pos : pos + b.ids.size] = b.ids
            test[pos : pos + b.ids.size] = b.split
            pos += b.ids.size
        return ids, test

    def id_ranges(self, file: int) -> list[tuple[int, int]]:
        """``(min id, max id)`` of each row group of file number ``file``, from the Parquet statistics (the
        whole int64 range where a row group has none): which row groups may hold an id, without reading."""
        meta = self._meta[file]
        col = meta.schema.to_arrow_schema().get_field_index("id")
        lo, hi = -(2**63), 2**63 - 1
        out = []
        for g in range(meta.num_row_groups):
            st = meta.row_group(g).column(col).statistics
            ok = st is not None and st.has_min_max
            out.append((int(st.min), int(st.max)) if ok else (lo, hi))
        return out

    def row_groups_with(self, file: int, ids: np.ndarray) -> list[int]:
        """Row groups of file number ``file`` whose id range holds at least one of the sorted ``ids``."""
        ids = np.asarray(ids, dtype=np.int64)
        return [
            g
            for g, (a, z) in enumerate(self.id_ranges(file))
            if np.searchsorted(ids, z, side="right") > np.searchsorted(ids, a, side="left")
        ]

    def test_ids_between(self, lo: int, hi: int, *, batch_rows: int = DEFAULT_BATCH_ROWS) -> np.ndarray:
        """Sorted ids of the test split within ``[lo, hi]``: what one shard of an index needs to know of the
        split. Row groups whose id statistics fall outside the range are skipped, so a store written in id
        order is read only around the range; memory is one batch plus the ids returned."""
        out: list[np.ndarray] = []
        for fi, f in enumerate(self.files):
            groups = [g for g, (a, z) in enumerate(self.id_ranges(fi)) if not (z < lo or a > hi)]
            if not groups:
                continue
            cols = ["id", "split"] if self.has_split else ["id"]
            try:
                pf = pq.ParquetFile(f, pre_buffer=False)
                row0 = 0
                for rb in pf.iter_batches(batch_size=batch_rows, columns=cols, row_groups=groups):
                    b = self._convert(rb, f, row0, False, False, True, False)
                    row0 += len(rb)
                    keep = b.split & (b.ids >= lo) & (b.ids <= hi)
                    if keep.any():
                        out.append(b.ids[keep])
            except (OSError, pa.ArrowException) as e:
                raise StoreError(f"{f}: could not be read ({e}); the file is corrupt or truncated") from None
        return np.sort(np.concatenate(out)) if out else np.empty(0, np.int64)

    def take(self, ids: Iterable[int] | np.ndarray, *, normalize: bool = True) -> np.ndarray:
        """Embeddings of ``ids`` in the order given, float32 (len(ids), d). One streaming pass.

        Raises if any id is not in the store.
        """
        want = np.asarray(ids, dtype=np.int64).ravel()
        out = np.empty((want.size, self.dim), dtype=np.float32)
        if want.size == 0:
            return out
        order = np.argsort(want, kind="stable")
        sorted_want = want[order]
        found = np.zeros(want.size, dtype=bool)
        for b in self.iter_batches(normalize=normalize):
            pos = np.searchsorted(sorted_want, b.ids)
            pos_c = np.minimum(pos, sorted_want.size - 1)
            hit = sorted_want[pos_c] == b.ids
            if not hit.any():
                continue
            rows = np.flatnonzero(hit)
            # an id requested several times fills every slot that asked for it
            lo = np.searchsorted(sorted_want, b.ids[rows], side="left")
            n_slots = np.searchsorted(sorted_want, b.ids[rows], side="right") - lo
            first = np.repeat(lo - (np.cumsum(n_slots) - n_slots), n_slots)
            slots = order[np.arange(int(n_slots.sum())) + first]
            out[slots] = b.embeddings[np.repeat(rows, n_slots)]
            found[slots] = True
        if not found.all():
            missing = want[~found][:5].tolist()
            raise StoreError(f"ids not in store {self.path}: {missing}; pass ids that the store holds")
        return out

    # ------------------------------------------------------------------ concepts
    def _flat_labels(
        self, *, split: bool = False
    ) -> Iterator[tuple[np.ndarray, pa.Array, np.ndarray, Batch]]:
        """Per batch: ``(ids, flat label values, row index of each value, batch)`` without Python loops.

        A concept listed more than once in one row's ``labels`` counts once: repeats are dropped here, so
        counts, prevalence, concept samples and the oracle all see each (row, concept) pair once."""
        import pyarrow.compute as pc

        for b in self.iter_batches(embeddings=False, labels=True, split=split, labels_arrow=True):
            col = b.labels
            flat = pc.list_flatten(col)
            parents = np.asarray(pc.list_parent_indices(col), dtype=np.int64)
            if parents.size > 1:
                codes = np.asarray(pc.dictionary_encode(flat).indices.fill_null(-1), dtype=np.int64)
                order = np.lexsort((codes, parents))  # stable: a repeat's first occurrence comes first
                sp, sc = parents[order], codes[order]
                rep = np.zeros(parents.size, dtype=bool)
                rep[order[1:]] = (sp[1:] == sp[:-1]) & (sc[1:] == sc[:-1])
                if rep.any():
                    flat, parents = flat.filter(pa.array(~rep)), parents[~rep]
            yield b.ids, flat, parents, b

    def concept_counts(self, *, split: str | None = None) -> dict[Any, int]:
        """Number of items per concept (optionally within one split: 'train' or 'test')."""
        import pyarrow.compute as pc

        if split not in (None, "train", "test"):
            raise StoreError(f"split={split!r}; use 'train', 'test' or None")
        counts: dict[Any, int] = {}
        for _, flat, parents, b in self._flat_labels(split=split is not None):
            if split is not None:
                keep = b.split if split == "test" else ~b.split
                flat = flat.filter(pa.array(keep[parents]))
            vc = pc.value_counts(flat)
            for v, n in zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist()):
                counts[v] = counts.get(v, 0) + n
        return counts

    def concept_positives(self, concepts: Iterable[Any]) -> dict[Any, np.ndarray]:
        """Sorted int64 ids of the items that belong to each concept (all splits)."""
        import pyarrow.compute as pc

        want = list(concepts)
        pos: dict[Any, list[np.ndarray]] = {c: [] for c in want}
        if not want:
            return {}
        value_set = pa.array(want, type=pa.int64() if self.label_kind == "int" else pa.string())
        for ids, flat, parents, _ in self._flat_labels():
            # index of each label value in the wanted list (-1: another concept): no Python object per value
            which = np.asarray(pc.index_in(flat, value_set=value_set).fill_null(-1), dtype=np.int64)
            hit = np.flatnonzero(which >= 0)
            if not hit.size:
                continue
            which, rows = which[hit], parents[hit]
            for j in np.unique(which).tolist():
                pos[want[j]].append(ids[rows[which == j]])
        return {c: np.unique(np.concatenate(v)) if v else np.empty(0, dtype=np.int64) for c, v in pos.items()}

    def concept_names(self) -> dict[Any, str]:
        """Human names of concepts from ``_concepts.parquet`` when the store has one, else empty."""
        f = self.path / CONCEPTS_FILE
        if not os.path.lexists(f):
            return {}
        fix = "rewrite it, or remove it (the store works without names)"
        if not f.is_file():
            raise StoreError(f"{f} is not a file (the concept-names side file); {fix}")
        try:
            t = pq.read_table(f)
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types for unreadable files
            raise StoreError(
                f"{f}: not a readable Parquet file ({' '.join(str(e).split())}); {fix}"
            ) from None
        key = "concept_id" if "concept_id" in t.column_names else "concept"
        if key not in t.column_names or "name" not in t.column_names:
            raise StoreError(
                f"{f}: expected columns 'concept_id' (or 'concept') and 'name', found {t.column_names}; {fix}"
            )
        kt = t.schema.field(key).type
        is_str = pa.types.is_string(kt) or pa.types.is_large_string(kt)
        if (self.label_kind == "int" and not pa.types.is_integer(kt)) or (
            self.label_kind == "str" and not is_str
        ):
            raise StoreError(
                f"{f}: column {key!r} holds {kt}, but the store's labels are "
                f"{'int64' if self.label_kind == 'int' else 'string'} concept ids; {fix}"
            )
        return dict(zip(t.column(key).to_pylist(), t.column("name").to_pylist()))

    def resolve_concepts(self, tokens: Sequence[str]) -> list[Any]:
        """Turn CLI tokens into concept keys: an int (for int labels), a string label, or a name from
        ``_concepts.parquet``. Unknown tokens raise with a hint."""
        names = self.concept_names()
        by_name: dict[str, list[Any]] = {}
        for k, v in names.items():
            by_name.setdefault(str(v).lower(), []).append(k)
        out: list[Any] = []
        for tok in tokens:
            tok = tok.strip()
            if not tok:
                continue
            key: Any = None
            if self.label_kind == "int":
                try:
                    key = int(tok[1:]) if tok[:1] == "n" and tok[1:].isdigit() else int(tok)  # WordNet wnid
                except ValueError:
                    cands = by_name.get(tok.lower(), [])
                    if len(cands) > 1:
                        raise StoreError(
                            f"concept name {tok!r} is ambiguous ({len(cands)} concepts: {cands[:5]}); "
                            "pass the concept id instead"
                        ) from None
                    key = cands[0] if cands else None
            else:
                key = tok
            if key is None or (isinstance(key, int) and not -(2**63) <= key < 2**63):  # labels are int64
                raise StoreError(
                    f"unknown concept {tok!r}; list the store's concepts with `seals-gpu store info {self.path}`"
                )
            out.append(key)
        if len(set(out)) != len(out):
            dup = [c for c in out if out.count(c) > 1][0]
            raise StoreError(f"concept {dup!r} is listed twice; list each concept once")
        return out

    # ------------------------------------------------------------------ checks and summaries
    def validate(self) -> int:
        """Full scan: NaN/inf, zero and denormal vectors (raised while streaming) and duplicate ids.

        Returns how many rows hold finite values so large or small that their float32 sum of squares
        overflows or underflows (one value near 3e38, a row scaled by 1e30): not an error, since
        :func:`l2_normalize` rescales them exactly first, but worth knowing."""
        ids = np.empty(self.num_rows, dtype=np.int64)
        pos = 0
        rescaled = 0
        for b in self.iter_batches(batch_rows=DEFAULT_BATCH_ROWS, split=True, normalize=False):
            assert b.embeddings is not None
            l2_normalize(
                b.embeddings, where=f"{self.path / b.file} (id {int(b.ids[0]) if b.ids.size else '?'}...)"
            )
            rescaled += rescaled_rows(b.embeddings)
            ids[pos : pos + b.ids.size] = b.ids
            pos += b.ids.size
        check_unique_ids(ids, where=f"store {self.path}")
        return rescaled

    def info(self) -> dict[str, Any]:
        """Rows, dimension, split sizes, concept counts and a prevalence histogram."""
        n_test = 0
        for b in self.iter_batches(embeddings=False, split=True):
            n_test += int(b.split.sum())
        counts = self.concept_counts() if self.has_labels else {}
        edges = [0.0, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 1e-1, 1.0]
        hist = [0] * (len(edges) - 1)
        for c in counts.values():
            p = c / self.num_rows
            for i in range(len(edges) - 1):
                if edges[i] <= p < edges[i + 1] or (i == len(edges) - 2 and p == 1.0):
                    hist[i] += 1
                    break
        return {
            "path": str(self.path),
            "rows": self.num_rows,
            "dim": self.dim,
            "files": len(self.files),
            "fingerprint": self.fingerprint,
            "split": {
                "source": "column" if self.has_split else "hash(id)",
                "train": self.num_rows - n_test,
                "test": n_test,
            },
            "concepts": len(counts),
            "label_kind": self.label_kind,
            "prevalence_histogram": [
                {"min": edges[i], "max": edges[i + 1], "concepts": hist[i]} for i in range(len(hist))
            ],
            "top_concepts": sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))[:10],
            "counts": counts,
        }


def check_unique_ids(ids: np.ndarray, *, where: str) -> None:
    s = np.sort(ids, kind="stable")
    dup = np.flatnonzero(s[1:] == s[:-1])
    if dup.size:
        raise StoreError(
            f"{where}: id {int(s[dup[0]])} appears more than once ({dup.size} duplicate(s) in all); ids must be unique"
        )


def _embedding_array(x: np.ndarray) -> pa.FixedSizeListArray:
    n, d = x.shape
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), type=pa.float32()), d)


def _labels_array(labels: Sequence[Sequence[Any]]) -> pa.Array:
    kinds = {type(v) for row in labels for v in row}
    # a concept listed twice in one row is written once (dict.fromkeys: the first occurrence, in order)
    if kinds and all(issubclass(k, (int, np.integer)) for k in kinds):
        return pa.array(
            [list(dict.fromkeys(int(v) for v in row)) for row in labels], type=pa.list_(pa.int64())
        )
    if kinds and all(issubclass(k, str) for k in kinds):
        return pa.array([list(dict.fromkeys(row)) for row in labels], type=pa.list_(pa.string()))
    if not kinds:
        return pa.array([[] for _ in labels], type=pa.list_(pa.int64()))
    raise StoreError(f"labels mix types {sorted(k.__name__ for k in kinds)}; use all int64 or all strings")


def store_problem(path: Path) -> str | None:
    """Why the existing folder ``path`` is not recognisably a store (None when it is one): a store holds
    only Parquet files, at least one of them data (not ``_``-prefixed) with ``id`` and ``embedding``
    columns. Reads only the file names and the data files' footers."""
    entries = sorted(path.iterdir())
    for p in entries:
        if p.suffix != ".parquet" or p.is_symlink() or not p.is_file():
            return f"it holds {p.name}, which is not a store's Parquet file"
    data = [p for p in entries if not p.name.startswith(("_", "."))]
    if not data:
        return "it holds no Parquet data files"
    for p in data:
        try:
            names = pq.read_schema(p).names
        except Exception:  # noqa: BLE001 - pyarrow raises several types for unreadable files
            return f"its {p.name} is not a readable Parquet file"
        if "id" not in names or "embedding" not in names:
            return f"its {p.name} has no 'id' and 'embedding' columns"
    return None


def check_store_out(
    path: str | os.PathLike[str],
    *,
    overwrite: bool,
    inputs: Iterable[tuple[str, str | os.PathLike[str] | None]] = (),
) -> None:
    """Refuse (one line, nothing changed) a store output that overlaps an input, is a file or a symlink, or
    exists non-empty without ``overwrite`` or as anything but a store: ``--force`` only replaces a store."""
    check_output_dir(
        path,
        kind="store",
        problem=store_problem,
        overwrite=overwrite,
        label="store",
        error=StoreError,
        inputs=inputs,
        force_flag="overwrite / --force",
    )


class StoreWriter:
    """Write a store batch by batch in bounded memory; the folder appears only when :meth:`close` succeeds.

    Ids must be unique across all batches (checked on close). Embeddings are l2-normalised unless
    ``normalize=False``.

    Example:
        >>> with StoreWriter("out/store", dim=128) as w:        # doctest: +SKIP
        ...     w.write(ids, emb, labels=labels)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        dim: int,
        normalize: bool = True,
        rows_per_file: int = 1_000_000,
        overwrite: bool = False,
    ):
        self.path = Path(path)
        check_store_out(self.path, overwrite=overwrite)
        if dim < 1:
            raise StoreError(f"dim={dim}; the embedding dimension must be at least 1")
        self.dim = int(dim)
        self.normalize = normalize
        self.rows_per_file = int(rows_per_file)
        self._ctx = atomic_dir(self.path)
        self._tmp = self._ctx.__enter__()
        self._writer: pq.ParquetWriter | None = None
        self._schema: pa.Schema | None = None
        self._file_rows = 0
        self._file_no = 0
        self._ids: list[np.ndarray] = []
        self._extra_files: dict[str, pa.Table] = {}
        self.rows = 0

    def write(
        self,
        ids: np.ndarray,
        embeddings: np.ndarray,
        *,
        labels: Sequence[Sequence[Any]] | None = None,
        split: Sequence[str] | np.ndarray | None = None,
        extra: dict[str, Sequence[Any]] | None = None,
    ) -> None:
        ids = np.asarray(ids)
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise StoreError(f"ids must be a 1-D integer array, got shape {ids.shape} dtype {ids.dtype}")
        ids = ids.astype(np.int64)
        x = np.asarray(embeddings)
        if x.ndim != 2 or x.shape[0] != ids.size:
            raise StoreError(f"embeddings must have shape ({ids.size}, {self.dim}), got {x.shape}")
        if x.shape[1] != self.dim:
            raise StoreError(f"embeddings have dimension {x.shape[1]}, but this store has dim={self.dim}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        _check_finite(x, ids, "write")
        if self.normalize:
            x = l2_normalize(x, where="write")
        cols: dict[str, pa.Array] = {"id": pa.array(ids, type=pa.int64()), "embedding": _embedding_array(x)}
        if labels is not None:
            if len(labels) != ids.size:
                raise StoreError(f"labels has {len(labels)} rows, expected {ids.size}")
            cols["labels"] = _labels_array(labels)
        if split is not None:
            s = np.asarray(split, dtype=object)
            if s.shape != (ids.size,):
                raise StoreError(
                    f"split has shape {s.shape}, expected ({ids.size},): one of 'train'/'test' per row"
                )
            bad = np.flatnonzero(~np.isin(s, ["train", "test"]))
            if bad.size:
                raise StoreError(
                    f"split holds {s[bad[0]]!r} at row {int(bad[0])}; each row's split must be 'train' or 'test'"
                )
            cols["split"] = pa.array(s.tolist(), type=pa.string())
        for k, v in (extra or {}).items():  # Arrow arrays keep their type; anything else is inferred
            cols[k] = v if isinstance(v, (pa.Array, pa.ChunkedArray)) else pa.array(list(v))
        table = pa.table(cols)
        if self._schema is None:
            self._schema = table.schema
        elif table.schema != self._schema:
            if table.schema.names != self._schema.names:
                raise StoreError(
                    f"batch columns {table.schema.names} differ from the first batch's {self._schema.names}"
                )
            table = table.cast(self._schema)
        start = 0
        while start < table.num_rows:
            if self._writer is None:
                name = self._tmp / f"part-{self._file_no:05d}.parquet"
                self._writer = pq.ParquetWriter(name, self._schema)
                self._file_rows = 0
            take = min(table.num_rows - start, self.rows_per_file - self._file_rows)
            self._writer.write_table(table.slice(start, take), row_group_size=65_536)
            self._file_rows += take
            start += take
            if self._file_rows >= self.rows_per_file:
                self._writer.close()
                self._writer = None
                self._file_no += 1
        self._ids.append(ids)
        self.rows += int(ids.size)

    def add_side_table(self, name: str, table: pa.Table) -> None:
        """A side file such as ``_concepts.parquet`` (name must start with '_')."""
        if not name.startswith("_"):
            raise StoreError(f"side file {name!r} must start with '_' so readers skip it as data")
        self._extra_files[name] = table

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self.rows == 0:
            self.abort()
            raise StoreError(f"{self.path}: nothing was written; a store needs at least one row")
        try:
            check_unique_ids(np.concatenate(self._ids), where=f"store {self.path}")
            for name, t in self._extra_files.items():
                pq.write_table(t, self._tmp / name)
        except BaseException as e:
            self._ctx.__exit__(type(e), e, e.__traceback__)
            raise
        self._ctx.__exit__(None, None, None)

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        err = RuntimeError("aborted")
        try:
            self._ctx.__exit__(RuntimeError, err, None)
        except RuntimeError:
            pass

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_store(
    path: str | os.PathLike[str],
    ids: np.ndarray,
    embeddings: np.ndarray,
    *,
    labels: Sequence[Sequence[Any]] | None = None,
    split: Sequence[str] | np.ndarray | None = None,
    extra: dict[str, Sequence[Any]] | None = None,
    normalize: bool = True,
    rows_per_file: int = 1_000_000,
    overwrite: bool = False,
) -> Store:
    """Write an in-memory store atomically and return it opened.

    Args:
        path: the folder to create.
        ids: int64 (n,), unique.
        embeddings: (n, d) float; l2-normalised on write unless ``normalize=False``.
        labels: per row, the concepts the item belongs to (ints or strings).
        split: per row 'train' or 'test'; omit for the hash split.
        extra: other columns passed through.

    Example:
        >>> store = write_store("tiny", np.arange(3), np.eye(3), labels=[[1], [], [1, 2]])  # doctest: +SKIP
    """
    x = np.asarray(embeddings)
    if x.ndim != 2:
        raise StoreError(f"embeddings must be 2-D (n, d), got shape {x.shape}; reshape your data")
    with StoreWriter(
        path, dim=x.shape[1], normalize=normalize, rows_per_file=rows_per_file, overwrite=overwrite
    ) as w:
        step = 262_144
        n = x.shape[0]
        if n == 0:
            raise StoreError("no rows to write; a store needs at least one row")
        for s in range(0, n, step):
            e = min(n, s + step)
            w.write(
                np.asarray(ids)[s:e],
                x[s:e],
                labels=None if labels is None else labels[s:e],
                split=None if split is None else np.asarray(split, dtype=object)[s:e],
                extra=None if extra is None else {k: list(v)[s:e] for k, v in extra.items()},
            )
    return Store(path)


def prevalence_range(text: str) -> tuple[float, float]:
    """Parse 'MIN:MAX' (fractions, e.g. 0.001:0.01)."""
    try:
        lo_s, hi_s = text.split(":")
        lo, hi = float(lo_s), float(hi_s)
    except ValueError:
        raise StoreError(f"prevalence {text!r} is not MIN:MAX, e.g. 0.001:0.01") from None
    if not (0 < lo <= hi < 1):  # NaN fails every comparison, so it is refused here too
        raise StoreError(f"prevalence {text!r}: need 0 < MIN <= MAX < 1, e.g. 0.001:0.01")
    return lo, hi
