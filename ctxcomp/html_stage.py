"""The pipeline's HTML stage: pages in, text documents for any method, results back in the page.

  prepare  each `format="html"` document is rendered (ctxcomp.webpage: clean, block tree, align);
           with a budget and a query, the block tree is cut coarse first: its nodes are scored by
           the relevance model's document head and the best ones are kept up to COARSE_FACTOR times
           the page's share of the budget. The method then sees each kept node as a plain text
           document of its own (HtmlRAG's blocks as passages: a method that ranks documents and
           splits its budget by relevance does so over the page's blocks), and a rate becomes a
           token budget over what the client sent (the HTML), so "5x" means 5x of the page.
  restore  the nodes' results are joined back into one result per page, where its first node
           came back (an `order` other than original moves the page with its best node), and
           mapped back: kept spans into the original HTML, tokens_before the page's, and, with
           html_output, the kept text as simplified HTML.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np

from ctxcomp import lexical, relevance, webpage
from ctxcomp.cancellation import checkpoint
from ctxcomp.errors import InvalidRequest, quoted
from ctxcomp.hub import ModelHub
from ctxcomp.method import MethodOutput
from ctxcomp.selection import render_spans
from ctxcomp.types import CompressRequest, Document, DocumentResult, Span, WordLabel

COARSE_FACTOR = 2.0  # the coarse cut keeps this many times the page's share; the method cuts the rest
LEXICAL_FACTOR = 4.0  # on pages of many nodes, BM25 hands the relevance model this many times the cut's target
MIN_RERANKED_NODES = 256  # ... and never fewer nodes than this
PART_MARK = "#html-node-"  # a node document's id: the page's id, this, the node's number


@dataclass(frozen=True)
class Part:
    """A node document: the request's document index of its page, and where its text starts in the page's text."""

    page: int
    offset: int


@dataclass(frozen=True)
class Pages:
    """The rendered pages of one request, by document index, and the node documents made of them, by id."""

    pages: dict[int, webpage.HtmlPage]
    parts: dict[str, Part] = field(default_factory=dict)


def check_formats(request: CompressRequest) -> None:
    for i, doc in enumerate(request.documents):
        if doc.format not in webpage.FORMATS:
            raise InvalidRequest(f"documents[{i}].format", f"must be one of {', '.join(webpage.FORMATS)}, got {quoted(doc.format)}")


def has_html(request: CompressRequest) -> bool:
    return any(doc.format == "html" for doc in request.documents)


def _render(index: int, raw: str) -> webpage.HtmlPage:
    try:
        return webpage.render(raw)
    except webpage.PageTooDeep as err:
        raise InvalidRequest(f"documents[{index}].text", str(err)) from None


def prepare(hub: ModelHub, request: CompressRequest, tokens_before: Sequence[int]) -> tuple[CompressRequest, tuple[int, ...], Pages]:
    """The request with its pages as text, their token counts, and the pages to restore from."""
    pages = {i: _render(i, doc.text) for i, doc in enumerate(request.documents) if doc.format == "html"}
    budget = _budget(request, tokens_before)
    if budget is not None and request.query.strip():
        shares = {i: budget * tokens_before[i] / max(1, sum(tokens_before)) for i in pages}
        pages = _coarse_cut(hub, request.query, pages, shares)
    documents, counts, parts = _node_documents(hub, request, tokens_before, pages)
    target = {"rate": None, "target_tokens": budget} if budget is not None else {}
    return replace(request, documents=documents, **target), counts, Pages(pages, parts)


def _node_documents(
    hub: ModelHub, request: CompressRequest, tokens_before: Sequence[int], pages: dict[int, webpage.HtmlPage]
) -> tuple[tuple[Document, ...], tuple[int, ...], dict[str, Part]]:
    """The request's documents with each page replaced by its nodes' (a page without text: one empty
    document), their token counts, and where each node sits in its page."""
    documents: list[Document] = []
    counts: list[int | None] = []  # None: a node, counted below
    parts: dict[str, Part] = {}
    for i, doc in enumerate(request.documents):
        if i not in pages:
            documents.append(doc)
            counts.append(tokens_before[i])
            continue
        page = pages[i]
        nodes = [(text, int(page.block_starts[members[0]])) for text, members in _nodes(page)] or [("", 0)]
        for n, (text, offset) in enumerate(nodes):
            parts[f"{doc.id}{PART_MARK}{n}"] = Part(i, offset)
            documents.append(replace(doc, id=f"{doc.id}{PART_MARK}{n}", text=text, format="text"))
            counts.append(None)
    counted = iter(hub.count_tokens([d.text for d, n in zip(documents, counts) if n is None]))
    counts = [next(counted) if n is None else n for n in counts]
    return tuple(documents), tuple(counts), parts  # type: ignore[arg-type]


def _budget(request: CompressRequest, tokens_before: Sequence[int]) -> int | None:
    if request.target_tokens is not None:
        return request.target_tokens
    if request.rate is not None:
        return max(1, round(request.rate * sum(tokens_before)))
    return None


def _coarse_cut(
    hub: ModelHub, query: str, pages: dict[int, webpage.HtmlPage], shares: dict[int, float]
) -> dict[int, webpage.HtmlPage]:
    """Each page narrowed to its most relevant block-tree nodes, about COARSE_FACTOR x its share.

    Only pages bigger than that are scored. On a page of thousands of nodes, BM25 first keeps the
    nodes that hold LEXICAL_FACTOR x the target (at least MIN_RERANKED_NODES of them), and the
    relevance model ranks those alone: retrieve, then rerank, as over a corpus."""
    nodes = {i: _nodes(page) for i, page in pages.items()}
    counts = {i: hub.count_tokens([text for text, _ in nodes[i]]) for i in pages}
    big = [i for i in pages if sum(counts[i]) > COARSE_FACTOR * shares[i]]
    checkpoint()
    candidates = {i: _lexical_candidates(query, nodes[i], counts[i], COARSE_FACTOR * shares[i]) for i in big}
    texts = [nodes[i][n][0] for i in big for n in candidates[i]]
    if not texts:
        return pages
    scored = relevance.score(hub, [CompressRequest(query, tuple(Document(str(n), t) for n, t in enumerate(texts)))])[0]
    logits = np.asarray([s.relevance for s in scored])
    out, start = dict(pages), 0
    for i in big:
        members, target = candidates[i], COARSE_FACTOR * shares[i]
        node_logits = logits[start : start + len(members)]
        start += len(members)
        kept, total = [], 0
        for n in np.argsort(-node_logits, kind="stable"):
            kept.extend(nodes[i][members[n]][1])
            total += counts[i][members[n]]
            if total >= target:
                break
        out[i] = pages[i].keep(kept)
    return out


def _lexical_candidates(query: str, nodes: list[tuple[str, list[int]]], counts: Sequence[int], target: float) -> list[int]:
    """Indices of the nodes the relevance model should rank: all of a small page's; on a page of
    more than MIN_RERANKED_NODES, the BM25 best holding LEXICAL_FACTOR x target tokens."""
    if len(nodes) <= MIN_RERANKED_NODES:
        return list(range(len(nodes)))
    order = np.argsort(-lexical.bm25(query, [text for text, _ in nodes]), kind="stable")
    held = np.cumsum(np.asarray(counts)[order])
    size = max(MIN_RERANKED_NODES, int(np.searchsorted(held, LEXICAL_FACTOR * target)) + 1)
    return sorted(order[:size].tolist())


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
    documents = []
    for result in _joined_parts(hub, pages, output.documents):
        i = pages.parts[result.id].page if result.id in pages.parts else None
        if i is None:
            documents.append(result)
        else:
            documents.append(_restored(hub, pages.pages[i], result, request.documents[i].id, tokens_before[i], request.html_output))
    return replace(output, documents=tuple(documents))


def _joined_parts(hub: ModelHub, pages: Pages, results: Sequence[DocumentResult]) -> list[DocumentResult]:
    """The results with each page's node results joined into one (still under the first node's id),
    placed where its first node came back; its text and spans are the page text's."""
    by_page: dict[int, list[DocumentResult]] = {}
    for result in results:
        if result.id in pages.parts:
            by_page.setdefault(pages.parts[result.id].page, []).append(result)
    out = []
    for result in results:
        part = pages.parts.get(result.id)
        if part is None:
            out.append(result)
        elif by_page[part.page][0] is result:
            out.append(_joined(hub, pages.pages[part.page], by_page[part.page], pages.parts))
    return out


def _joined(hub: ModelHub, page: webpage.HtmlPage, results: list[DocumentResult], parts: dict[str, Part]) -> DocumentResult:
    """Node results (any order) -> one result over the page's text, nodes in page order, their texts
    joined by a space. A space usually folds into the next word's token; where it does not, the
    least relevant node gives up its last words, so the page stays within what the method spent."""
    nodes = [_in_page(r, parts[r.id].offset) for r in sorted(results, key=lambda r: parts[r.id].offset)]
    spent = sum(r.tokens_after for r in results)
    text = " ".join(r.text for r in nodes if r.text)
    tokens = hub.count_tokens([text])[0] if text else 0
    weakest_first = sorted(range(len(nodes)), key=lambda i: (nodes[i].score, i))
    at = 0
    while tokens > spent and at < len(nodes):
        # Half the excess in words between recounts: a word is at least a token, and a page
        # has thousands of nodes, so one word per recount of the whole text is quadratic.
        for _ in range(max(1, (tokens - spent) // 2)):
            while at < len(nodes) and not nodes[weakest_first[at]].kept_spans:
                at += 1
            if at == len(nodes):
                break
            nodes[weakest_first[at]] = _without_last_word(page, nodes[weakest_first[at]])
        text = " ".join(r.text for r in nodes if r.text)
        tokens = hub.count_tokens([text])[0] if text else 0
    return replace(
        results[0],
        text=text,
        kept_spans=tuple(span for r in nodes for span in r.kept_spans),
        tokens_before=sum(r.tokens_before for r in results),
        tokens_after=tokens,
        score=max(r.score for r in results),
        word_labels=tuple(label for r in nodes for label in r.word_labels),
    )


def _in_page(result: DocumentResult, offset: int) -> DocumentResult:
    """A node's result with its spans and word labels moved into the page's text."""
    return replace(
        result,
        kept_spans=tuple(Span(s.start + offset, s.end + offset) for s in result.kept_spans),
        word_labels=tuple(replace(w, start=w.start + offset, end=w.end + offset) for w in result.word_labels),
    )


def _without_last_word(page: webpage.HtmlPage, result: DocumentResult) -> DocumentResult:
    """The node's result with the last whitespace-separated word of its kept text dropped (its text
    rendered again from the spans, its word labels there marked dropped)."""
    last = result.kept_spans[-1]
    cut = max(page.text.rfind(" ", last.start, last.end), page.text.rfind("\n", last.start, last.end))
    trimmed = page.text[last.start : cut].rstrip() if cut > last.start else ""
    spans = result.kept_spans[:-1] + ((Span(last.start, last.start + len(trimmed)),) if trimmed else ())
    end = spans[-1].end if spans and spans[-1].start == last.start else last.start
    labels = tuple(replace(w, kept=False) if w.kept and w.start >= end and w.end <= last.end else w for w in result.word_labels)
    return replace(result, text=render_spans(page.text, spans), kept_spans=spans, word_labels=labels)


def _restored(
    hub: ModelHub, page: webpage.HtmlPage, result: DocumentResult, page_id: str, tokens_before: int, as_html: bool
) -> DocumentResult:
    text, tokens_after = result.text, result.tokens_after  # the joined nodes' exact count
    if as_html:
        text = webpage.simplified_html(page, result.kept_spans)
        tokens_after = hub.count_tokens([text])[0] if text else 0
    labels = _labels(page, result.word_labels)
    return replace(
        result,
        id=page_id,
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
