"""LangChain: a retriever whose documents come back compressed (pip install -e ".[langchain]").

    python examples/langchain_retriever.py [127.0.0.1:50051]
"""

import re
import sys

from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever

from ctxcomp.langchain import CtxcompRetriever

address = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051"


class KeywordRetriever(BaseRetriever):
    """Stands for your retriever: documents ranked by words shared with the query."""

    documents: list[Document]

    def _get_relevant_documents(self, query, *, run_manager):
        words = set(re.findall(r"\w+", query.lower()))
        return sorted(self.documents, key=lambda d: -len(words & set(re.findall(r"\w+", d.page_content.lower()))))


corpus = [
    Document("The Vasa sank in 1628 because it was top-heavy and unstable.", metadata={"source": "vasa"}),
    Document("Stockholm has cold winters and mild summers.", metadata={"source": "weather"}),
    Document("The Vasa museum opened in 1990 and is the most visited museum in Scandinavia.", metadata={"source": "museum"}),
]
retriever = CtxcompRetriever(base_retriever=KeywordRetriever(documents=corpus), address=address, k=2, rate=0.5)
for doc in retriever.invoke("Why did the Vasa sink?"):
    print(doc.metadata["source"], "|", doc.page_content)
