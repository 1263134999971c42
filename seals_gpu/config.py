"""Run configuration: a frozen, JSON-serialisable dataclass, validated once at the boundary."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ConfigError, SealsError

VALID_STRATEGIES = ("maxent", "mlp", "id", "id-knn", "id-pairwise", "random")
VALID_MODES = ("seals", "all")
INT64_MAX = 2**63 - 1  # ids, counts and seeds travel as int64 (numpy, Parquet, torch)


def fmt_bytes(n: float) -> str:
    """``n`` bytes for a message: ``1.5 GiB``."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB"):
        if abs(n) < 1024 or unit == "ZiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def machine_memory() -> int:
    """Physical memory of this machine in bytes (0 when the OS does not say)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return 0


def check_fits_memory(nbytes: float, *, what: str, fix: str, error: type[SealsError] = ConfigError) -> None:
    """Refuse, before anything is allocated or written, a setting whose smallest allocation (``nbytes``, a
    lower bound of what the command will need) is more than the machine's physical memory."""
    ram = machine_memory()
    if ram and nbytes > ram:
        raise error(
            f"{what} needs at least {fmt_bytes(nbytes)} of memory, but this machine has {fmt_bytes(ram)}; {fix}"
        )


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run's selections (and so must match on ``--resume``).

    Paper defaults (Coleman et al.): seed set of 5 positives + 95 negatives, b=100, T=2,000, k=100.
    """

    store: str
    store_fingerprint: str
    concepts: tuple[Any, ...]
    strategies: tuple[str, ...] = ("maxent", "mlp", "id", "random")
    modes: tuple[str, ...] = ("seals", "all")
    k: int = 100
    batch: int = 100
    budget: int = 2000
    seed_positives: int = 5
    seed_negatives: int = 95
    seed: int = 0
    C: float = 1.0
    beta: float = 1.0
    index: str | None = None
    graph: str | None = None
    full_supervision: bool = False
    search: str = "auto"
    search_recall: float = 0.95
    class_weight: str = "none"
    expand: str = "batch"
    oracle: str = "simulated"  # or "queue": people answer each round's queue file (seals_gpu.queue)
    seed_ids: str | None = None  # --seed-ids FILE: known positives (and negatives) per concept
    seed_ids_sha256: str | None = None  # its content: a resume with another file is refused
    # --probe B: each round each SEALS unit labels B random items from outside its pool (seals_gpu.probe)
    probe: int = 0
    # --seed-text CONCEPT=TEXT: per concept key, the text whose nearest train items are the seed round
    seed_text: dict[str, str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "concepts", tuple(self.concepts))
        object.__setattr__(self, "strategies", tuple(self.strategies))
        object.__setattr__(self, "modes", tuple(self.modes))
        self.validate()

    def validate(self) -> None:
        if not self.concepts:
            raise ConfigError("no concepts to run; pass --concepts A,B or --concepts-sample N")
        for s in self.strategies:
            if s not in VALID_STRATEGIES:
                raise ConfigError(f"unknown strategy {s!r}; choose from {', '.join(VALID_STRATEGIES)}")
        if not self.strategies:
            raise ConfigError(f"no strategies; choose from {', '.join(VALID_STRATEGIES)}")
        if len(set(self.strategies)) != len(self.strategies):
            raise ConfigError(f"strategies {list(self.strategies)} list one twice; list each once")
        for m in self.modes:
            if m not in VALID_MODES:
                raise ConfigError(f"unknown mode {m!r}; choose from {', '.join(VALID_MODES)}")
        if not self.modes or len(set(self.modes)) != len(self.modes):
            raise ConfigError(f"modes {list(self.modes)}: give seals, all or both, each once")
        for name in ("k", "batch", "budget", "seed_positives", "seed_negatives", "seed", "probe"):
            # integers within int64 (numpy and torch overflow past it); the lower bounds follow
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ConfigError(f"--{name.replace('_', '-')} {v!r} must be an integer")
            if v > INT64_MAX:
                raise ConfigError(
                    f"--{name.replace('_', '-')} {v} is too large: it must be at most 2**63 - 1"
                )
        for name in ("C", "beta", "search_recall"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
                raise ConfigError(f"--{name.replace('_', '-')} {v!r} must be a number")
        if self.seed < 0:
            raise ConfigError(f"--seed {self.seed}: the seed must be 0 or more (up to 2**63 - 1)")
        if self.k < 1:
            raise ConfigError(f"--k {self.k}: the number of neighbours must be at least 1")
        if self.batch < 1:
            raise ConfigError(f"--batch {self.batch}: at least one label per round")
        if self.seed_positives < 1:
            raise ConfigError(
                f"--seed-positives {self.seed_positives}: the seed set needs at least one positive"
            )
        if self.seed_negatives < 0:
            raise ConfigError(f"--seed-negatives {self.seed_negatives} must be 0 or more")
        if self.budget < self.seed_size:
            raise ConfigError(
                f"--budget {self.budget} is below the seed set's {self.seed_size} labels "
                f"({self.seed_positives} positives + {self.seed_negatives} negatives); raise --budget"
            )
        if not (self.C > 0 and math.isfinite(self.C)):
            raise ConfigError(f"--C {self.C} must be positive and finite (the default is 1.0)")
        if self.search not in ("auto", "flat", "ivf"):
            raise ConfigError(f"--search {self.search!r}: choose auto, flat or ivf")
        if not (0.0 < self.search_recall <= 1.0):
            raise ConfigError(
                f"--search-recall {self.search_recall}: must be in (0, 1]; 0.95 is a good default"
            )
        if self.expand not in ("batch", "each"):
            raise ConfigError(f"--expand {self.expand!r}: choose batch or each")
        if self.expand == "each":
            bad = [s for s in self.strategies if s in ("id-knn", "id-pairwise")]
            if bad and "seals" in self.modes:
                raise ConfigError(
                    f"--expand each scores candidates one pool at a time: strategies {bad} are not "
                    "supported there; use maxent, mlp, id or random, or --expand batch"
                )
        if self.probe < 0:
            raise ConfigError(f"--probe {self.probe} must be 0 (off) or more")
        if self.probe and self.probe >= self.batch:
            raise ConfigError(
                f"--probe {self.probe} leaves no pick to the model in rounds of --batch {self.batch}; "
                f"give --probe below {self.batch}"
            )
        if self.probe and "seals" not in self.modes:
            raise ConfigError(
                f"--probe {self.probe} probes outside SEALS pools, but --modes {','.join(self.modes)} runs no "
                "SEALS unit (All units score every row); add seals to --modes or drop --probe"
            )
        if self.seed_text is not None:
            if self.seed_ids is not None:
                raise ConfigError("--seed-text and --seed-ids both give the seed round; pass only one")
            missing = [str(c) for c in self.concepts if str(c) not in self.seed_text]
            if missing:
                raise ConfigError(
                    f"--seed-text: no text for concept {missing[0]} of --concepts; give one "
                    "--seed-text CONCEPT=TEXT per concept"
                )
            extra = sorted(set(self.seed_text) - {str(c) for c in self.concepts})
            if extra:
                raise ConfigError(
                    f"--seed-text names concept {extra[0]}, which is not one of --concepts; list it or drop it"
                )
        if self.oracle not in ("simulated", "queue"):
            raise ConfigError(f"--oracle {self.oracle!r}: choose simulated or queue")
        if self.class_weight not in ("none", "balanced"):
            raise ConfigError(f"--class-weight {self.class_weight!r}: choose none or balanced")
        if not (self.beta >= 0 and math.isfinite(self.beta)):
            raise ConfigError(f"--beta {self.beta} must be 0 or more and finite (the default is 1.0)")

    @property
    def seed_size(self) -> int:
        return self.seed_positives + self.seed_negatives

    @property
    def n_rounds(self) -> int:
        """Selection rounds after the seed round (round 0)."""
        return -(-(self.budget - self.seed_size) // self.batch)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["concepts"] = list(self.concepts)
        d["strategies"] = list(self.strategies)
        d["modes"] = list(self.modes)
        # settings added later are written only when used: a run without them keeps today's config.json
        if d["probe"] == 0:
            del d["probe"]
        if d["seed_text"] is None:
            del d["seed_text"]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RunConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(
                f"config has unknown keys {sorted(unknown)}; was it written by another version?"
            )
        return cls(**d)

    def same_selections_as(self, other: RunConfig) -> list[str]:
        """Names of fields that differ (``extra`` aside: it holds non-binding notes such as the device)."""
        a, b = self.to_json(), other.to_json()
        return [k for k in a if k != "extra" and json.dumps(a[k]) != json.dumps(b[k])]


def parse_list(text: str, *, what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ConfigError(f"--{what} is empty; give a comma-separated list")
    return items
