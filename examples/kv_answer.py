"""Compress, receive the downstream LLM's KV cache for the compressed context, and answer
from it without prefilling the context again.

    ctxcomp serve --port 50051 &
    python examples/kv_answer.py [127.0.0.1:50051]
"""

import sys

from ctxcomp import models
from ctxcomp.client import CtxcompClient
from ctxcomp.kv.handoff import generate_from_blob

address = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051"
question = "When did the Vasa sink?"
documents = ["The Vasa was a Swedish warship that sank on her maiden voyage in 1628.", "She was raised in 1961."]

llm = models.load_llm()  # the server's LLM (CTXCOMP_LLM); the blob refuses any other
with CtxcompClient(address) as client:
    result, blob = client.compress_with_kv(question, documents, rate=0.8, kv_codec="int8")
print(f"context ({result.tokens_after} tokens, KV blob {len(blob)} bytes): {result.context}")
print("answer:", generate_from_blob(llm, blob, result.context, question, max_new_tokens=16))
