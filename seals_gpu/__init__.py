"""seals_gpu: GPU-accelerated, billion-scale SEALS (similarity search for active learning of rare concepts)."""

__version__ = "0.1.0"
