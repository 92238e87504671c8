"""The pipeline's HTML stage: pages in, text documents for any method, results back in the page.

  prepare  each `format="html"` document is rendered (ctxcomp.webpage: clean, block tree, align);
           with a budget and a query, the block tree is cut coarse first: its nodes are scored by
           the relevance model's document head and the best ones are kept up to COARSE_FACTOR times
           the page's share of the budget. The method then sees plain text documents, and a rate
           becomes a token budget over what the client sent (the HTML), so "5x" means 5x of the page.
  restore  each method result is mapped back: kept spans into the original HTML, tokens_before
           the page's, and, with html_output, the kept text as simplified HTML.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np

from ctxcomp import relevance, webpage
from ctxcomp.errors import InvalidRequest
from ctxcomp.hub import ModelHub
from ctxcomp.method import MethodOutput
from ctxcomp.types import CompressRequest, Document, DocumentResult, Span, WordLabel

COARSE_FACTOR = 2.0  # the coarse cut keeps this many times the page's share; the method cuts the rest


@dataclass(frozen=True)
class Pages:
    """The rendered pages of one request, by document index."""

    pages: dict[int, webpage.HtmlPage]


def check_formats(request: CompressRequest) -> None:
    for i, doc in enumerate(request.documents):
        if doc.format not in webpage.FORMATS:
            raise InvalidRequest(f"documents[{i}].format", f"must be one of {', '.join(webpage.FORMATS)}, got {doc.format!r}")


def has_html(request: CompressRequest) -> bool:
    return any(doc.format == "html" for doc in request.documents)


def prepare(hub: ModelHub, request: CompressRequest, tokens_before: Sequence[int]) -> tuple[CompressRequest, tuple[int, ...], Pages]:
    """The request with its pages as text, their token counts, and the pages to restore from."""
    pages = {i: webpage.render(doc.text) for i, doc in enumerate(request.documents) if doc.format == "html"}
    budget = _budget(request, tokens_before)
    if budget is not None and request.query.strip():
        shares = {i: budget * tokens_before[i] / max(1, sum(tokens_before)) for i in pages}
        pages = _coarse_cut(hub, request.query, pages, shares)
    counted = dict(zip(pages, hub.count_tokens([page.text for page in pages.values()])))
    documents = tuple(
        replace(doc, text=pages[i].text, format="text") if i in pages else doc for i, doc in enumerate(request.documents)
    )
    counts = tuple(counted.get(i, n) for i, n in enumerate(tokens_before))
    target = {"rate": None, "target_tokens": budget} if budget is not None else {}
    return replace(request, documents=documents, **target), counts, Pages(pages)


def _budget(request: CompressRequest, tokens_before: Sequence[int]) -> int | None:
    if request.target_tokens is not None:
        return request.target_tokens
    if request.rate is not None:
        return max(1, round(request.rate * sum(tokens_before)))
    return None


def _coarse_cut(
    hub: ModelHub, query: str, pages: dict[int, webpage.HtmlPage], shares: dict[int, float]
) -> dict[int, webpage.HtmlPage]:
    """Each page narrowed to its most relevant block-tree nodes, about COARSE_FACTOR x its share."""
    nodes = {i: _nodes(page) for i, page in pages.items()}
    texts = [text for i in pages for text, _ in nodes[i]]
    if not texts:
        return pages
    scored = relevance.score(hub, [CompressRequest(query, tuple(Document(str(n), t) for n, t in enumerate(texts)))])[0]
    logits, counts = np.asarray([s.relevance for s in scored]), hub.count_tokens(texts)
    out, start = {}, 0
    for i, page in pages.items():
        members = nodes[i]
        node_logits, node_tokens = logits[start : start + len(members)], counts[start : start + len(members)]
        start += len(members)
        if sum(node_tokens) <= COARSE_FACTOR * shares[i]:
            out[i] = page
            continue
        kept, total = [], 0
        for n in np.argsort(-node_logits, kind="stable"):
            kept.extend(members[n][1])
            total += node_tokens[n]
            if total >= COARSE_FACTOR * shares[i]:
                break
        out[i] = page.keep(kept)
    return out


def _nodes(page: webpage.HtmlPage) -> list[tuple[str, list[int]]]:
    """The block-tree nodes of a page: (their text, their block indices)."""
    groups: dict[int, list[int]] = {}
    for b, block in enumerate(page.blocks):
        groups.setdefault(block.group, []).append(b)
    return [("\n".join(page.blocks[b].text for b in members), members) for members in groups.values()]


def restore(
    hub: ModelHub, request: CompressRequest, tokens_before: Sequence[int], pages: Pages, output: MethodOutput
) -> MethodOutput:
    """The method's results with each page's spans, token count and (html_output) HTML."""
    if not pages.pages:
        return output
    by_id = {doc.id: i for i, doc in enumerate(request.documents)}
    documents = []
    for result in output.documents:
        i = by_id[result.id]
        if i not in pages.pages:
            documents.append(result)
            continue
        documents.append(_restored(hub, pages.pages[i], result, tokens_before[i], request.html_output))
    return replace(output, documents=tuple(documents))


def _restored(hub: ModelHub, page: webpage.HtmlPage, result: DocumentResult, tokens_before: int, as_html: bool) -> DocumentResult:
    text, tokens_after = result.text, result.tokens_after
    if as_html:
        text = webpage.simplified_html(page, result.kept_spans)
        tokens_after = hub.count_tokens([text])[0] if text else 0
    labels = _labels(page, result.word_labels)
    return replace(
        result,
        text=text,
        kept_spans=webpage.raw_spans(page, result.kept_spans),
        tokens_before=tokens_before,
        tokens_after=tokens_after,
        word_labels=tuple(label for label in labels if label is not None),
    )


def _labels(page: webpage.HtmlPage, labels: Sequence[WordLabel]) -> tuple[WordLabel | None, ...]:
    """Word labels moved into the page; None for words the renderer added (markers). A label on
    one of the page's words maps through that word (a lookup, not a pass over the page each)."""
    by_word = {(a, b): (c, d) for (a, b), (c, d) in zip(page.word_text.tolist(), page.word_raw.tolist())}
    out = []
    for label in labels:
        raw = by_word.get((label.start, label.end))
        if raw is None:
            spans = webpage.raw_spans(page, (Span(label.start, label.end),))
            raw = (spans[0].start, spans[-1].end) if spans else (-1, -1)
        out.append(replace(label, start=raw[0], end=raw[1]) if raw[0] >= 0 else None)
    return tuple(out)


def prepare_all(hub: ModelHub, plans: Sequence[Any]) -> tuple[list[Any], list[Pages]]:
    """prepare for every plan that holds HTML; the others pass unchanged."""
    prepared, pages = [], []
    for plan in plans:
        if has_html(plan.request):
            request, counts, rendered = prepare(hub, plan.request, plan.tokens_before)
            prepared.append(replace(plan, request=request, tokens_before=counts))
            pages.append(rendered)
        else:
            prepared.append(plan)
            pages.append(Pages({}))
    return prepared, pages
