"""Nearest-neighbour indexes over a store: in-process shards (FAISS flat / IVF-PQ) and their merge."""

from .build import IndexSpec, LocalIndex, build_index, open_index, read_manifest
from .merge import merge_neighbors, sort_neighbors
from .shard import IndexShard, SearchParams

__all__ = [
    "IndexShard",
    "IndexSpec",
    "LocalIndex",
    "SearchParams",
    "build_index",
    "merge_neighbors",
    "open_index",
    "read_manifest",
    "sort_neighbors",
]
