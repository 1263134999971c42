"""store embed: texts per second of ``seals-gpu store embed`` in this process and through Ray Data actors.

A CSV of N WordNet-style texts (``"lemma, lemma: gloss"``, 8-30 words, made here from a fixed vocabulary, seeded)
is embedded into a store with all-MiniLM-L6-v2 (the offline default model) by
:func:`seals_gpu.embed.embed_file`, end to end (staging, embedding, writing the store), once in this process and
once with ``use_ray=True`` (a local Ray started for it; Ray's start is timed separately and left out of the
rate). The model load is outside the timing for the in-process path (loaded once before) and inside it for
Ray (each actor loads its own copy: that is what a user pays). The load average is recorded before and after.

    python benchmarks/bench_embed.py                # N = 2000
    python benchmarks/bench_embed.py --quick        # N = 300
"""

from __future__ import annotations

import csv
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as cm
import numpy as np

NAME = "embed"
WORDS = (
    "dog cat oak violin bread river hammer poem stone cloud engine garden market letter island doctor "
    "window mirror candle forest harbor pencil planet signal castle needle ribbon saddle tunnel wheel"
).split()
GLOSS = (
    "a of the with used for made from small large kind any usually having or and in by that which is "
    "animal tool plant food instrument structure device place person water wood metal light part body"
).split()


def texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        lemmas = ", ".join(rng.choice(WORDS, size=int(rng.integers(1, 4)), replace=False))
        gloss = " ".join(rng.choice(GLOSS, size=int(rng.integers(6, 26))))
        out.append(f"{lemmas}: {gloss}")
    return out


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> None:
    p = cm.make_parser(NAME, __doc__)
    p.add_argument("--n", type=int, default=None, help="texts (default 2000, --quick 300)")
    p.add_argument("--batch-size", type=int, default=256)
    args = cm.parse(p, argv)
    n = args.n or (300 if args.quick else 2000)
    from seals_gpu.embed import embed_file, load_model

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "items.csv"
        with open(src, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["id", "text"])
            for i, t in enumerate(texts(n)):
                w.writerow([i * 1_000_003 - 10**9, t])
        t0 = time.perf_counter()
        load_model(batch_size=args.batch_size)
        model_s = time.perf_counter() - t0

        before = load()
        t0 = time.perf_counter()
        embed_file(src, Path(tmp) / "local", text_column="text", id_column="id", batch_size=args.batch_size)
        dt = time.perf_counter() - t0
        rows.append(
            {"path": "in-process", "texts": n, "seconds": round(dt, 2), "texts_per_s": round(n / dt, 1),
             "model_load_s": round(model_s, 2), "load_before": before, "load_after": load()}
        )  # fmt: skip

        from seals_gpu.distributed import ray_session

        t0 = time.perf_counter()
        with ray_session(None):
            ray_start = time.perf_counter() - t0
            before = load()
            t0 = time.perf_counter()
            embed_file(
                src,
                Path(tmp) / "ray",
                text_column="text",
                id_column="id",
                batch_size=args.batch_size,
                use_ray=True,
            )
            dt = time.perf_counter() - t0
        rows.append(
            {"path": "ray (actor pool)", "texts": n, "seconds": round(dt, 2), "texts_per_s": round(n / dt, 1),
             "model_load_s": None, "ray_start_s": round(ray_start, 2), "load_before": before, "load_after": load()}
        )  # fmt: skip
    cm.print_table(rows, title=f"store embed: {n} texts, all-MiniLM-L6-v2, batch {args.batch_size}")
    path = cm.write_json(args.out, NAME, args, rows)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
