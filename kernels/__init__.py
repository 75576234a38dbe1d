"""Numeric primitives. Each op has a readable PyTorch reference; where it pays on CUDA a Triton
version with the same signature sits beside it and `dispatch` picks it only where it runs.
Installed as `minift.kernels` (see setup.cfg)."""
