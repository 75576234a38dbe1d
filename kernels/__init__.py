"""Numeric primitives. Each op has a readable PyTorch reference; where it pays on CUDA a Triton
version with the same signature sits beside it and `dispatch` picks it only where it runs. One op
pays on CPU instead: matvec.py, the decode step's matrix-vector product as a TorchInductor-compiled
loop (dispatch.linear, inside minift.generate). Installed as `minift.kernels` (see setup.cfg)."""
