"""Haystack: BM25 retrieval, then ctxcomp, in one pipeline (pip install -e ".[haystack]").

    python examples/haystack_pipeline.py [127.0.0.1:50051]
"""

import sys

from haystack import Document, Pipeline
from haystack.components.retrievers.in_memory import InMemoryBM25Retriever
from haystack.document_stores.in_memory import InMemoryDocumentStore

from ctxcomp.haystack import CtxcompDocumentCompressor

address = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051"
store = InMemoryDocumentStore()
store.write_documents([
    Document(content="The Vasa sank in 1628 because it was top-heavy and unstable."),
    Document(content="Stockholm has cold winters and mild summers."),
])
pipeline = Pipeline()
pipeline.add_component("retriever", InMemoryBM25Retriever(document_store=store))
pipeline.add_component("compressor", CtxcompDocumentCompressor(address=address, rate=0.5))
pipeline.connect("retriever.documents", "compressor.documents")
query = "Why did the Vasa sink?"
for doc in pipeline.run({"retriever": {"query": query}, "compressor": {"query": query}})["compressor"]["documents"]:
    print(doc.content)
