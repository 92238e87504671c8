"""The downstream LLM's KV cache for a compressed context: prefill with our kernel
(prefill.py) and hand-over to transformers (to_dynamic_cache)."""
