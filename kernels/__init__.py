"""CUDA kernels (CuPy RawModule), importable as ``seals_gpu.kernels``."""
