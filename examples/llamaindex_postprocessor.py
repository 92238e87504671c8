"""LlamaIndex: a node postprocessor that compresses retrieved nodes (pip install -e ".[llamaindex]").

    python examples/llamaindex_postprocessor.py [127.0.0.1:50051]
"""

import sys

from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from ctxcomp.llamaindex import CtxcompNodePostprocessor

address = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051"
nodes = [
    NodeWithScore(node=TextNode(text="The Vasa sank in 1628 because it was top-heavy and unstable.", id_="vasa"), score=0.9),
    NodeWithScore(node=TextNode(text="Stockholm has cold winters and mild summers.", id_="weather"), score=0.4),
]
postprocessor = CtxcompNodePostprocessor(address=address, rate=0.5, order="relevance")
for kept in postprocessor.postprocess_nodes(nodes, query_bundle=QueryBundle("Why did the Vasa sink?")):
    print(kept.node.node_id, "|", kept.node.get_content())
