"""Oracles: who answers ``label(concept, ids) -> labels``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import numpy as np

from .pool import isin_sorted
from .store import Store


class Oracle(Protocol):
    """Anything that labels ids for a concept: a simulation, or a queue to human labelers."""

    def label(self, concept: Any, ids: np.ndarray) -> np.ndarray:
        """Return a bool array, True where ``ids[i]`` belongs to ``concept``."""
        ...


def _sorted(p: np.ndarray) -> np.ndarray:
    """``p`` as sorted int64: the same array when it already is (a run's positives are not copied)."""
    p = np.asarray(p, dtype=np.int64)
    return p if p.size < 2 or bool((p[1:] >= p[:-1]).all()) else np.sort(p)


class SimulatedOracle:
    """Answers from the store's ``labels`` column (the ground truth of a benchmark).

    Example:
        >>> oracle = SimulatedOracle.from_store(store, [2084071])   # doctest: +SKIP
        >>> oracle.label(2084071, np.array([2084071, 1740]))         # doctest: +SKIP
        array([ True, False])
    """

    def __init__(self, positives: dict[Any, np.ndarray]):
        self.positives = {c: _sorted(p) for c, p in positives.items()}

    @classmethod
    def from_store(cls, store: Store, concepts: Iterable[Any]) -> SimulatedOracle:
        return cls(store.concept_positives(concepts))

    def label(self, concept: Any, ids: np.ndarray) -> np.ndarray:
        if concept not in self.positives:
            raise KeyError(f"the oracle knows no concept {concept!r}")
        return isin_sorted(np.asarray(ids, dtype=np.int64).ravel(), self.positives[concept]).reshape(
            np.shape(ids)
        )
