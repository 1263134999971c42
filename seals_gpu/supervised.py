"""Full-supervision reference: each concept's test AP with a model fit on every train label."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from .atomic import write_parquet
from .checkpoint import tables
from .learner import fit_logistic
from .metrics import average_precision


def full_supervision_ap(run: Any) -> dict[Any, float]:
    """Fit one logistic model per concept on the whole train split (the ceiling active learning aims at).
    Holds every row's vector here: a reference for collections that fit one process."""
    dev = run.device.torch_device
    train_ids, test_ids = run.split.train.all(), run.split.test.all()
    x_train = torch.from_numpy(run.backend.vectors(train_ids)).to(dev)
    x_test = torch.from_numpy(run.backend.vectors(test_ids)).to(dev)
    out: dict[Any, float] = {}
    for c in run.config.concepts:
        y = torch.from_numpy(np.isin(train_ids, run.positives[c]).astype(np.float32)).to(dev)
        mask = torch.ones_like(y, dtype=torch.bool)
        model = fit_logistic(
            x_train[None], y[None], mask[None], C=run.config.C, class_weight=run.config.class_weight
        )
        logits = (x_test @ model.W[0].to(x_test.dtype) + model.b[0].to(x_test.dtype)).float().cpu().numpy()
        out[c] = float(average_precision(np.isin(test_ids, run._test_pos[c]), logits))
    return out


def record_full_supervision(run: Any) -> None:
    """Append one row per concept (strategy 'full', mode 'supervised') to RUN_DIR/metrics.parquet."""
    t0 = time.perf_counter()
    aps = full_supervision_ap(run)
    secs = (time.perf_counter() - t0) / max(1, len(aps))
    metrics, _ = tables(run)
    n_train = int(run.split.train.size)
    rows = []
    for c, ap in aps.items():
        n_pos = int(run._train_pos[c].size)
        rows.append(
            {
                "concept": c if metrics.schema.field("concept").type == pa.int64() else str(c),
                "strategy": "full",
                "mode": "supervised",
                "round": int(run.round),
                "n_labeled": n_train,
                "n_positives": n_pos,
                "pool_size": n_train,
                "pool_fraction": 1.0,
                "test_ap": ap,
                "recall": 1.0,
                "seconds_fit": secs,
                "seconds_search": 0.0,
                "seconds_select": 0.0,
                "seconds_round": secs,
            }
        )
    extra = pa.Table.from_pylist(rows, schema=metrics.schema)
    write_parquet(run.out / "metrics.parquet", pa.concat_tables([metrics, extra]))
