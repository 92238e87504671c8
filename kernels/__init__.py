"""Attention kernels (imported as ``ctxcomp.kernels``).

The Triton fused prefill kernel and its PyTorch reference land here with the
KV-blob work (issue "KV blobs"); until then the service refuses `return_kv`
with UNIMPLEMENTED.
"""
