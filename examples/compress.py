"""Compress a query's documents on a running ctxcomp server and print what the LLM gets.

    ctxcomp serve --port 50051 &
    python examples/compress.py [127.0.0.1:50051]
"""

import sys

from ctxcomp import Document
from ctxcomp.client import CtxcompClient
from ctxcomp.errors import InvalidRequest

address = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051"
documents = [
    Document("vasa", "The Vasa sank in 1628 because it was top-heavy and unstable. It was built in Stockholm.",
             {"url": "https://example.org/vasa"}),
    Document("weather", "Stockholm has cold winters. Summers are mild and the days are long."),
]

with CtxcompClient(address) as client:
    result = client.compress("Why did the Vasa sink?", documents, rate=0.33)
    print(result.context)
    print(f"{result.tokens_before} -> {result.tokens_after} tokens ({result.ratio:.1f}x)")
    for doc in result.documents:
        print(f"  {doc.id}: {doc.tokens_after} tokens kept, relevance {doc.score:.2f}, {doc.metadata}")

    try:  # a bad request raises the exception the in-process call raises, naming the field
        client.compress("Why did the Vasa sink?", documents, rate=2.0)
    except InvalidRequest as err:
        print(f"refused: {err.field}: {err.message}")
