"""The pipeline's HTML stage on real models: pages in, any method, results pointing into the page."""

from __future__ import annotations

from dataclasses import replace

import lxml.html
import pytest

from ctxcomp import webpage
from ctxcomp.errors import InvalidRequest
from ctxcomp.types import CompressRequest, Document

QUERY = "Why did the Vasa sink?"
ARTICLE = (
    "<h1>The Vasa</h1>"
    "<p>The Vasa was a Swedish warship built between 1626 and 1628 for King Gustavus Adolphus.</p>"
    "<p>The Vasa sank on her maiden voyage in 1628 because she was top-heavy, with too much weight above the "
    "waterline and a hull that was too narrow.</p>"
    "<table><tr><td>1961</td><td>salvaged from Stockholm harbour</td></tr></table>"
)
FURNITURE = (
    '<nav class="site-nav"><a href="/">Home</a> <a href="/shop">Shop our winter sale</a></nav>'
    '<div class="cookie-notice">This site uses cookies for analytics.</div>'
)


def page(article: str = ARTICLE, filler: int = 0) -> str:
    sidebar = "".join(
        f"<div class='c{i}'><h3>Other story {i}</h3><p>Football results from the weekend league number {i}, "
        f"with goals, cards and a late penalty that decided the match.</p></div>" for i in range(filler)
    )
    return f"<html><head><title>Ships</title><script>var x = 1;</script></head><body>{FURNITURE}" \
           f"<div><main>{article}</main><div>{sidebar}</div></div><footer>Contact us</footer></body></html>"


def test_a_page_compresses_with_spans_into_the_html(compressor, hub) -> None:
    raw = page()
    result = compressor.compress(CompressRequest(QUERY, (Document("p", raw, format="html"),), rate=0.2))
    doc = result.documents[0]
    assert "top-heavy" in doc.text
    assert not any(word in doc.text for word in ("cookies", "winter sale", "var x", "Contact us"))
    assert doc.tokens_before == hub.count_tokens([raw])[0]  # the page as sent
    assert doc.tokens_after <= round(0.2 * doc.tokens_before)  # a rate is a share of the page
    kept_text = " ".join(raw[s.start:s.end] for s in doc.kept_spans)
    assert "top-heavy" in kept_text and all(s.end <= len(raw) for s in doc.kept_spans)
    assert result.timings_ms["html"] > 0


def test_html_output_is_simplified_html_that_parses(compressor) -> None:
    request = CompressRequest(QUERY, (Document("p", page(), format="html"),), rate=0.3, html_output=True)
    doc = compressor.compress(request).documents[0]
    tree = lxml.html.fragment_fromstring(doc.text, create_parent="div")
    assert "top-heavy" in tree.text_content()
    assert not any(element.attrib for element in tree.iter())
    assert {element.tag for element in tree.iter()} <= {"div", "h1", "p", "table", "tr", "td", "ul", "li"}


def test_the_coarse_cut_drops_irrelevant_block_tree_nodes(compressor, monkeypatch) -> None:
    from ctxcomp import html_stage

    seen = []
    original_keep = webpage.HtmlPage.keep
    monkeypatch.setattr(webpage.HtmlPage, "keep", lambda self, blocks: seen.append(blocks) or original_keep(self, blocks))
    raw = page(filler=12)
    doc = compressor.compress(CompressRequest(QUERY, (Document("p", raw, format="html"),), rate=0.05)).documents[0]
    assert seen, "a page far over its budget is cut coarse first"
    rendered = webpage.render(raw)
    kept_texts = [rendered.blocks[b].text for b in seen[0]]
    assert any("top-heavy" in t for t in kept_texts)
    assert sum("Football" in t for t in kept_texts) < 12
    assert "top-heavy" in doc.text
    assert html_stage.COARSE_FACTOR > 1


def test_the_method_ranks_a_pages_nodes_as_documents_and_the_page_comes_back_whole(compressor, hub, monkeypatch) -> None:
    from ctxcomp import html_stage
    from ctxcomp.methods.cascade import Cascade

    seen = []
    original = Cascade.compress_many
    monkeypatch.setattr(Cascade, "compress_many", lambda self, items: seen.extend(items) or original(self, items))
    raw = page(filler=3)
    documents = (Document("t", "Stockholm is cold in winter."), Document("p", raw, format="html"))
    result = compressor.compress(CompressRequest(QUERY, documents, method="cascade", target_tokens=60))
    sent = seen[0].request.documents
    assert len(sent) > 3 and sent[0].id == "t"
    assert all(d.id.startswith("p" + html_stage.PART_MARK) and d.format == "text" for d in sent[1:])
    assert any("top-heavy" in d.text for d in sent[1:]) and not any("Football" in d.text and "Vasa" in d.text for d in sent)
    assert [d.id for d in result.documents] == ["t", "p"]
    whole = result.documents[1]
    assert "top-heavy" in whole.text and whole.tokens_before == hub.count_tokens([raw])[0]
    assert whole.tokens_after == hub.count_tokens([whole.text])[0]
    assert "top-heavy" in " ".join(raw[s.start:s.end] for s in whole.kept_spans)


def test_joined_nodes_stay_within_what_the_method_spent(hub) -> None:
    """Where the spaces between node texts cost tokens, the least relevant node gives up its last words."""
    from ctxcomp import html_stage
    from ctxcomp.types import DocumentResult, Span, WordLabel

    rendered = webpage.render(page())
    nodes = html_stage._nodes(rendered)
    parts, results = {}, []
    for n, (text, members) in enumerate(nodes):
        parts[f"p#{n}"] = html_stage.Part(0, int(rendered.block_starts[members[0]]))
        labels = (WordLabel(0, len(text.split()[0]), 1.0, True),)
        results.append(DocumentResult(f"p#{n}", text, (Span(0, len(text)),), 0, hub.count_tokens([text])[0], float(n), word_labels=labels))
    whole = html_stage._joined(hub, rendered, results, parts)
    assert whole.text == " ".join(r.text for r in results) and whole.tokens_after <= sum(r.tokens_after for r in results)
    squeezed = [replace(r, tokens_after=r.tokens_after - 1) if n == 1 else r for n, r in enumerate(results)]
    fitted = html_stage._joined(hub, rendered, squeezed, parts)
    assert fitted.tokens_after <= sum(r.tokens_after for r in squeezed) < whole.tokens_after
    assert fitted.text.startswith(whole.text[: len(nodes[0][0]) - 5])  # node 0, the least relevant, lost words...
    assert fitted.text.endswith(whole.text[-20:])  # ...the others kept theirs
    assert all(fitted.text.count(rendered.text[s.start : s.end]) for s in fitted.kept_spans)
    inside = [any(s.start <= w.start and w.end <= s.end for s in fitted.kept_spans) for w in fitted.word_labels]
    assert [w.kept for w in fitted.word_labels] == inside  # a word given up is labelled dropped


@pytest.mark.parametrize("method", ["llmlingua2", "exit", "recomp_extractive", "exit>llmlingua2"])
def test_every_text_method_takes_pages(compressor, method: str) -> None:
    documents = (Document("p", page(), format="html"), Document("t", "Stockholm is cold in winter."))
    result = compressor.compress(CompressRequest(QUERY, documents, method=method, target_tokens=40, order="relevance"))
    by_id = {d.id: d for d in result.documents}
    assert by_id["p"].tokens_after > 0 and "winter sale" not in by_id["p"].text
    assert result.documents[0].id == "p"  # order="relevance" ranks the page's text
    assert all(0 <= s.start < s.end <= len(page()) for s in by_id["p"].kept_spans)


def test_word_labels_point_into_the_page(compressor) -> None:
    raw = page()
    request = CompressRequest(QUERY, (Document("p", raw, format="html"),), method="llmlingua2", rate=0.3,
                              return_word_labels=True)
    labels = compressor.compress(request).documents[0].word_labels
    assert labels and all(raw[label.start:label.end].strip() for label in labels)
    assert any(raw[label.start:label.end] == "top-heavy," for label in labels)


def test_pages_without_text_and_unknown_formats(compressor) -> None:
    empty = compressor.compress(CompressRequest(QUERY, (Document("p", "<script>x()</script>", format="html"),), rate=0.5))
    assert empty.documents[0].text == "" and empty.documents[0].kept_spans == ()
    with pytest.raises(InvalidRequest) as caught:
        compressor.compress(CompressRequest(QUERY, (Document("p", "x"), Document("q", "y", format="pdf"))))
    assert caught.value.field == "documents[1].format"
