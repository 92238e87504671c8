"""Attention kernels (imported as ``ctxcomp.kernels``): a Triton fused prefill
attention with RoPE inside, its PyTorch reference, and the capability check
that picks between them (see attention.py)."""
