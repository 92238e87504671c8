"""ctxcomp.webpage: cleaning, the block tree, alignment into the original page, simplified HTML."""

from __future__ import annotations

import re

import lxml.html
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pathlib import Path

import pytest

from ctxcomp import webpage
from ctxcomp.types import Span

REAL_PAGES = sorted((Path(__file__).parent / "data" / "pages").glob("*.html"))

def text_reader(raw: str):
    """text(start, end): the page's text (entities decoded, markup left out) inside raw[start:end]."""
    decoded, starts, ends = webpage.decoded_text(raw)  # both ascend through the page
    return lambda start, end: decoded[np.searchsorted(starts, start) : np.searchsorted(ends, end, side="right")]


PAGE = """<!DOCTYPE html><html><head><title>The Vasa &amp; its fate</title>
<style>p { color: red }</style><script>var text = "The Vasa sank because of the wind";</script></head>
<body><nav class="top"><a href="/">Home</a> <a href="/news">News</a></nav>
<div id="cookie-consent">We use cookies. <button>Accept</button></div>
<div class="wrapper"><div class="content"><article>
<h2>History</h2>
<p>The <b>Vasa</b> was a Swedish warship. She sank in 1628 because she was top&#8209;heavy &mdash; too much
weight above the <a href="/w">waterline</a>.</p>
<!-- an editor's comment about the Vasa -->
<table><tr><th>Year</th><th>Event</th></tr><tr><td>1628</td><td>Sank</td></tr><tr><td>1961</td><td>Salvaged</td></tr></table>
<ul><li>Length: 69 m</li><li>Crew: 145</li></ul>
<div style="display: none">hidden tracking text</div>
</article></div><aside>Related: the Titanic</aside></div>
<div class="ad-slot">Buy now!</div><footer>Copyright 2026</footer></body></html>"""


def test_cleaning_drops_furniture_and_keeps_structure() -> None:
    page = webpage.render(PAGE)
    for gone in ("Home", "cookies", "Accept", "Titanic", "Buy now", "Copyright", "color: red", "var text",
                 "editor's comment", "tracking"):
        assert gone not in page.text, gone
    assert [b.kind for b in page.blocks] == ["title", "h2", "p", "tr", "tr", "tr", "li", "li"]
    assert page.text.splitlines() == [
        "# The Vasa & its fate",
        "## History",
        "The Vasa was a Swedish warship. She sank in 1628 because she was top\u2011heavy \u2014 too much weight above"
        " the waterline.",
        "Year | Event", "1628 | Sank", "1961 | Salvaged",
        "- Length: 69 m", "- Crew: 145",
    ]
    assert [b.path for b in page.blocks if b.kind in ("tr", "li")] == [("table",)] * 3 + [("ul",)] * 2


def test_every_aligned_word_points_at_itself_in_the_page() -> None:
    page, text = webpage.render(PAGE), text_reader(PAGE)
    aligned = page.word_raw[:, 0] >= 0
    # only the markers the renderer adds have no place in the page
    assert {page.text[a:b] for a, b in page.word_text[~aligned].tolist()} == {"#", "##", "|", "-"}
    for (a, b), (start, end) in zip(page.word_text[aligned].tolist(), page.word_raw[aligned].tolist()):
        assert text(start, end) == page.text[a:b]
    script = PAGE.index("<script>")
    assert not any(script <= s < PAGE.index("</script>") for s in page.word_raw[aligned, 0].tolist())


def test_kept_spans_map_into_the_page_and_merge() -> None:
    page = webpage.render(PAGE)
    start = page.text.index("She sank")
    kept = (Span(start, start + len("She sank in 1628")),)
    assert [PAGE[s.start:s.end] for s in webpage.raw_spans(page, kept)] == ["She sank in 1628"]
    whole = webpage.raw_spans(page, (Span(0, len(page.text)),))
    assert any("top&#8209;heavy &mdash; too much\nweight above the" in PAGE[s.start:s.end] for s in whole)


def test_simplified_html_parses_and_keeps_only_the_kept_blocks() -> None:
    page = webpage.render(PAGE)
    start = page.text.index("1961")
    out = webpage.simplified_html(page, (Span(page.text.index("She sank"), page.text.index("She sank") + 8),
                                      Span(start, len(page.text))))
    assert out == ("<p>She sank</p><table><tr><td>1961</td><td>Salvaged</td></tr></table>"
                   "<ul><li>Length: 69 m</li><li>Crew: 145</li></ul>")
    tree = lxml.html.fragment_fromstring(out, create_parent="div")
    assert tree.text_content() == "She sank1961SalvagedLength: 69 mCrew: 145"
    escaped = webpage.simplified_html(page, (Span(0, len(page.blocks[0].text)),))
    assert escaped == "<h1>The Vasa &amp; its fate</h1>"


def test_keep_narrows_to_blocks_with_alignment_intact() -> None:
    page = webpage.render(PAGE)
    narrowed, text = page.keep([2, 5]), text_reader(PAGE)
    assert narrowed.text.splitlines() == [page.blocks[2].text, page.blocks[5].text]
    aligned = narrowed.word_raw[:, 0] >= 0
    for (a, b), (start, end) in zip(narrowed.word_text[aligned].tolist(), narrowed.word_raw[aligned].tolist()):
        assert text(start, end) == narrowed.text[a:b]


def test_big_elements_split_into_block_tree_nodes() -> None:
    paragraphs = "".join(f"<p>Paragraph {i} " + "word " * 60 + "</p>" for i in range(4))
    page = webpage.render(f"<html><body><div><div>{paragraphs}</div></div><p>tail</p></body></html>", max_words=96)
    assert [b.group for b in page.blocks] == [0, 1, 2, 3, 4]  # each paragraph is its own node
    small = webpage.render(f"<html><body><div>{paragraphs}</div></body></html>", max_words=1000)
    assert {b.group for b in small.blocks} == {0}


def test_malformed_pages_and_pages_without_text() -> None:
    for raw in ("", "   ", "<html>", "<script>x</script>", "<<<>>>", "</div></div><p>a<p>b<td>c", "<p>a &bogus; b &#xZZ;",
                "\x00\x01<p>nul</p>", "<p>" * 5000 + "deep"):
        page = webpage.render(raw)
        assert all(b.text.strip() for b in page.blocks)
        assert len(page.word_text) == len(page.word_raw)
    assert webpage.render("</div></div><p>a<p>b<td>c").text.split() == ["a", "b", "c"]
    assert webpage.render("<p>" * 5000 + "deep").text == "deep"


@pytest.mark.parametrize("raw", [
    "<div>" * 1100 + "deep words here",
    "<html><body>" + "<p>soup <b>bold <i>italic " * 3000 + "deep words here",
], ids=["1100 divs", "unclosed tag soup"])
def test_pages_nested_deeper_than_python_recurses_render_with_their_text(raw: str) -> None:
    """Below MAX_TREE_DEPTH levels an element's subtree is its text: no RecursionError, no word lost."""
    page = webpage.render(raw)
    assert page.text.split()[-3:] == ["deep", "words", "here"]
    assert page.text.split() == re.sub(r"<[^>]*>", " ", raw).split()
    assert (page.word_raw[:, 0] >= 0).all()


def test_a_page_deeper_than_the_parser_keeps_text_is_refused_not_cut() -> None:
    with pytest.raises(webpage.PageTooDeep):
        webpage.render("<b>" * 100_000 + "deep words here")


def test_a_page_decoded_from_another_charset_keeps_its_characters() -> None:
    raw = b'<html><head><meta charset="windows-1252"></head><body><p>Caf\xe9 \x93quoted\x94</p></body></html>'
    page = webpage.render(raw.decode("windows-1252"))  # a string is already text: the declared charset is not applied again
    assert page.text == "Caf\u00e9 \u201cquoted\u201d"


def test_a_huge_page_renders() -> None:
    raw = "<html><body>" + "".join(f"<div><p>Paragraph {i} has some words.</p></div>" for i in range(20_000)) + "</body></html>"
    page = webpage.render(raw)
    assert len(page.blocks) == 20_000 and (page.word_raw[:, 0] >= 0).all()


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(["<p>", "</p>", "<div>", "</div>", "<li>", "<table>", "<td>", "<br>", "&amp;", "&",
                                 "<script>", "</script>", "<!--", "-->", "word", " ", "caf\u00e9", "<", ">", "\n"]),
                max_size=40))
def test_any_markup_renders_with_consistent_alignment(pieces: list[str]) -> None:
    raw = "".join(pieces)
    page, text = webpage.render(raw), text_reader(raw)
    aligned = page.word_raw[:, 0] >= 0
    for (a, b), (start, end) in zip(page.word_text[aligned].tolist(), page.word_raw[aligned].tolist()):
        assert text(start, end) == page.text[a:b]
    lxml.html.fragment_fromstring(webpage.simplified_html(page, (Span(0, len(page.text)),)) or "<p></p>", create_parent="div")


@pytest.mark.parametrize("path", REAL_PAGES, ids=lambda p: p.name)
def test_real_pages_render_with_every_source_word_aligned(path: Path) -> None:
    raw = path.read_text(encoding="utf-8")
    page, text = webpage.render(raw), text_reader(raw)
    assert page.blocks
    aligned = page.word_raw[:, 0] >= 0
    unaligned = {page.text[a:b] for a, b in page.word_text[~aligned].tolist()}
    assert unaligned <= {"#" * n for n in range(1, 7)} | {"-", "|"}, unaligned
    for (a, b), (start, end) in zip(page.word_text[aligned].tolist(), page.word_raw[aligned].tolist()):
        assert text(start, end) == page.text[a:b]
    lxml.html.fragment_fromstring(webpage.simplified_html(page, (Span(0, len(page.text)),)), create_parent="div")


def test_generated_class_names_are_not_taken_for_furniture() -> None:
    page = webpage.render('<div class="c-ad3f1"><p>Content in a hashed class.</p></div><div class="ad-slot">Buy</div>'
                       '<div id="main_menu">Home</div><div class="css-1ad2f sidebar-x">Side</div>')
    assert page.text == "Content in a hashed class."
