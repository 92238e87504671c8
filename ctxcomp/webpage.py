"""HTML documents (HtmlRAG): clean the page, cut it into a block tree, render the blocks as text,
and map what a method keeps back into the original HTML.

Stages, each a pure function:
  clean   lxml parses the page (any markup it can recover); scripts, styles, forms, comments,
          hidden elements and boilerplate (nav, footer, aside, cookie banners, ads, share bars)
          go; attributes are never read again.
  blocks  the cleaned tree, cut top-down: an element whose text fits `max_words` is one block
          (its inline content, links' text included), a bigger one splits into its children;
          wrappers with a single child are merged away. Headings, list items and table rows keep
          their kind, so the text reads as markdown ("## ", "- ", "a | b") and the simplified
          HTML output rebuilds them.
  align   the stdlib tokenizer (html.parser) gives every text character's offset in the page;
          each rendered word is found there in order, so kept words point into the original HTML.

A page is rendered once (`render`); `HtmlPage.keep` narrows it to chosen blocks (the coarse
cut), and `raw_spans` / `simplified_html` turn a method's kept text spans into the result.
"""

from __future__ import annotations

import html as html_entities
import re
from dataclasses import dataclass, replace
from html.parser import HTMLParser
from typing import Iterator, Sequence

import lxml.etree
import lxml.html
import numpy as np

from ctxcomp.cancellation import checkpoint
from ctxcomp.text import segment_words
from ctxcomp.types import Span

FORMATS = ("text", "html")
DEFAULT_BLOCK_WORDS = 96  # HtmlRAG cuts blocks by a word budget; about one paragraph
ALIGN_WINDOW = 20_000  # decoded characters searched for the next word before it counts as unaligned
# The block walk recurses per level of nesting. Deeper than this (1,100 nested divs, tag soup of
# unclosed <b>s), an element's subtree becomes its text: structure that deep is not structure.
MAX_TREE_DEPTH = 128
# libxml2 (huge_tree) stops nesting here and drops the text below: such a page is refused
# (PageTooDeep) rather than rendered without it.
PARSER_MAX_DEPTH = 2000


class PageTooDeep(ValueError):
    """The page nests elements deeper than the HTML parser keeps text (PARSER_MAX_DEPTH)."""

DROPPED_TAGS = (
    "script", "style", "noscript", "template", "iframe", "svg", "canvas", "form", "button", "input",
    "select", "textarea", "object", "embed", "head", "link", "meta", "img", "video", "audio", "map",
)
BOILERPLATE_TAGS = frozenset({"nav", "footer", "aside"})
BOILERPLATE_ROLES = frozenset({"navigation", "banner", "contentinfo", "complementary", "search", "dialog", "alert"})
# Class and id words of page furniture; matched as whole words of the attribute value.
BOILERPLATE_WORDS = frozenset({
    "cookie", "cookies", "consent", "gdpr", "advert", "advertisement", "ads", "ad", "adslot", "sponsored",
    "sponsor", "newsletter", "subscribe", "share", "sharing", "social", "breadcrumb", "breadcrumbs", "sidebar",
    "popup", "modal", "promo", "navbar", "nav", "menu", "footer", "skip", "banner",
})
HEADINGS = {f"h{n}": n for n in range(1, 7)}
BLOCK_TAGS = frozenset({
    "p", "div", "section", "article", "main", "header", "blockquote", "pre", "figure", "figcaption", "address",
    "ul", "ol", "li", "dl", "dt", "dd", "table", "thead", "tbody", "tfoot", "tr", "td", "th", "caption",
    "details", "summary", "body", "html", "title", "center", *HEADINGS,
})
# Tags the simplified HTML keeps; other block wrappers (div, section...) are merged away.
STRUCTURE_TAGS = frozenset({"table", "ul", "ol", "dl", "blockquote", "pre"})
_CLASS_PART = re.compile(r"[^a-z0-9]+")  # class and id values split at '-', '_', spaces...


@dataclass(frozen=True)
class Block:
    """One block of the page: its rendered text and where it sits."""

    kind: str  # the tag it renders as: p, h2, li, tr, dt, dd, pre, title...
    path: tuple[str, ...]  # enclosing STRUCTURE_TAGS, outermost first
    text: str
    group: int = 0  # the block-tree node (at most max_words, or one element) it belongs to: the coarse unit


@dataclass(frozen=True)
class HtmlPage:
    """A page as blocks of text, with every source word's place in the original HTML.

    text: the blocks joined by newlines; block_starts: [B + 1] offsets of each block in text
    (the last is len(text) + 1); word_text: [W, 2] spans of source words in text;
    word_raw: [W, 2] the same words in the original HTML ((-1, -1): not found)."""

    raw: str
    blocks: tuple[Block, ...]
    text: str
    block_starts: np.ndarray
    word_text: np.ndarray
    word_raw: np.ndarray

    def keep(self, indices: Sequence[int]) -> "HtmlPage":
        """The page narrowed to these blocks, in page order."""
        chosen = sorted(set(int(i) for i in indices))
        return _assemble(self.raw, [self.blocks[i] for i in chosen], [self._block_words(i) for i in chosen])

    def _block_words(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        start, end = self.block_starts[index], self.block_starts[index + 1]
        # words are in text order: a slice, not a pass over every word per block
        first = int(np.searchsorted(self.word_text[:, 0], start, side="left"))
        last = int(np.searchsorted(self.word_text[:, 1], end, side="right"))
        return self.word_text[first:last] - start, self.word_raw[first:last]


def render(raw: str, max_words: int = DEFAULT_BLOCK_WORDS) -> HtmlPage:
    """Clean, cut into blocks and align. Never raises on markup lxml can recover; a page with no
    text gives a page with no blocks."""
    root = clean(raw)
    checkpoint()
    cut = blocks(root, max_words) if root is not None else []
    decoded, raw_start, raw_end = decoded_text(raw)
    word_spans, cursor = [], 0
    for b, block in enumerate(cut):
        if b % 256 == 0:
            checkpoint()  # a page of ten thousand blocks takes a while: a place to stop or give way
        words = segment_words(block.text)
        raw_spans = np.full((len(words), 2), -1, dtype=np.int64)
        marker = len(_MARKERS.get(block.kind, ""))
        for w, word in enumerate(words.strings()):
            if words.starts[w] < marker or (block.kind == "tr" and word == "|"):
                continue  # added by the renderer: no place in the page
            found = decoded.find(word, cursor, cursor + ALIGN_WINDOW)
            if found >= 0:
                raw_spans[w] = (raw_start[found], raw_end[found + len(word) - 1])
                cursor = found + len(word)
        word_spans.append((np.stack([words.starts, words.ends], axis=1), raw_spans))
    return _assemble(raw, cut, word_spans)


def _assemble(raw: str, cut: Sequence[Block], words: Sequence[tuple[np.ndarray, np.ndarray]]) -> HtmlPage:
    starts = np.cumsum([0] + [len(b.text) + 1 for b in cut]).astype(np.int64)
    text_spans = [w + starts[i] for i, (w, _) in enumerate(words)]
    return HtmlPage(
        raw, tuple(cut), "\n".join(b.text for b in cut), starts,
        np.concatenate(text_spans).reshape(-1, 2) if text_spans else np.zeros((0, 2), np.int64),
        np.concatenate([r for _, r in words]).reshape(-1, 2) if words else np.zeros((0, 2), np.int64),
    )


# --- clean -----------------------------------------------------------------------------


def clean(raw: str) -> lxml.html.HtmlElement | None:
    """The page's element tree without scripts, styles, forms, comments, hidden elements and
    boilerplate, nested at most MAX_TREE_DEPTH deep; None when lxml finds no document in it.
    PageTooDeep when the parser dropped text below its depth limit."""
    parser = lxml.html.HTMLParser(remove_comments=True, remove_pis=True, recover=True, huge_tree=True)
    try:
        root = lxml.html.document_fromstring(raw, parser=parser)
    except (lxml.etree.ParserError, ValueError):
        return None
    title = root.findtext(".//title")
    lxml.etree.strip_elements(root, *DROPPED_TAGS, with_tail=False)
    for n, element in enumerate(list(root.iter(lxml.etree.Element))):
        if n % 2048 == 0:
            checkpoint()
        if element.getparent() is not None and _is_boilerplate(element):
            element.drop_tree()  # keeps the tail: text after the element is not the element's
    body = root.find("body")
    if body is None:
        body = root
    if tree_depth(root) >= PARSER_MAX_DEPTH:
        raise PageTooDeep(f"HTML nested {PARSER_MAX_DEPTH} or more elements deep: the parser drops text that deep")
    flatten_below(body, MAX_TREE_DEPTH)
    if title and title.strip():
        heading = lxml.html.Element("title")
        heading.text = title
        body.insert(0, heading)
    return body


def tree_depth(root: lxml.html.HtmlElement) -> int:
    """Levels of elements below `root` (iterative)."""
    deepest, stack = 0, [(root, 0)]
    while stack:
        element, level = stack.pop()
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in element if isinstance(child.tag, str))
    return deepest


def flatten_below(root: lxml.html.HtmlElement, depth: int) -> None:
    """Replace the children of every element `depth` levels below `root` by their text (tails
    included), so that no walk of the tree goes deeper. Iterative: any depth is safe."""
    stack = [(root, 0)]
    while stack:
        element, level = stack.pop()
        if level < depth:
            stack.extend((child, level + 1) for child in element if isinstance(child.tag, str))
        elif len(element):
            text = "".join(element.itertext())
            for child in list(element):
                element.remove(child)
            element.text = text


def _is_boilerplate(element: lxml.html.HtmlElement) -> bool:
    if element.tag in BOILERPLATE_TAGS or element.get("role", "").lower() in BOILERPLATE_ROLES:
        return True
    if element.get("hidden") is not None or element.get("aria-hidden", "").lower() == "true":
        return True
    style = element.get("style", "").replace(" ", "").lower()
    if "display:none" in style or "visibility:hidden" in style:
        return True
    names = f"{element.get('class', '')} {element.get('id', '')}".lower()
    # whole parts only: "ad-slot" is an ad, a generated "css-1ad2f" or "c-ad3f1" is not
    return any(part in BOILERPLATE_WORDS for part in _CLASS_PART.split(names))


# --- blocks ----------------------------------------------------------------------------


def blocks(element: lxml.html.HtmlElement, max_words: int) -> list[Block]:
    """The element's blocks in page order (see the module docstring)."""
    out: list[Block] = []
    _cut(element, max_words, (), out)
    return out


def _cut(element: lxml.html.HtmlElement, max_words: int, path: tuple[str, ...], out: list[Block]) -> None:
    """Top-down: an element within the word budget (or with no block inside) is one group of
    leaf blocks; a bigger one gives its loose text a group and cuts each block child."""
    tag = _tag(element)
    if not _block_children(element) or (tag not in ("body", "html") and _word_count(element) <= max_words):
        group = out[-1].group + 1 if out else 0
        out.extend(replace(leaf, group=group) for leaf in _leaves(element, path))
        return
    inner = path + (tag,) if tag in STRUCTURE_TAGS else path
    for piece in _pieces(element):
        if isinstance(piece, str):
            group = out[-1].group + 1 if out else 0
            out.extend(replace(leaf, group=group) for leaf in _leaf_text(piece, "p", inner))
        else:
            _cut(piece, max_words, inner, out)


def _leaves(element: lxml.html.HtmlElement, path: tuple[str, ...]) -> Iterator[Block]:
    """Structural leaves: headings, paragraphs, list items, table rows, each with its kind."""
    tag = _tag(element)
    if tag == "tr":
        cells = [" ".join(_inline_text(c).split()) for c in element if _tag(c) in ("td", "th")]
        text = " | ".join(c for c in cells if c)
        if text:
            yield Block("tr", path, text)
        return
    if tag in ("table", "thead", "tbody", "tfoot"):
        for row in element.iter("tr"):
            yield from _leaves(row, path + ("table",) if tag == "table" else path)
        return
    if not _block_children(element) or tag in ("li", "dt", "dd", "pre"):
        yield from _leaf_text(_inline_text(element), tag if tag in _KINDS else "p", path)
        return
    inner = path + (tag,) if tag in STRUCTURE_TAGS else path
    for piece in _pieces(element):
        if isinstance(piece, str):
            yield from _leaf_text(piece, "p", inner)
        else:
            yield from _leaves(piece, inner)


def _pieces(element: lxml.html.HtmlElement) -> Iterator[str | lxml.html.HtmlElement]:
    """The element's content in order: runs of loose text (inline children included) and block children."""
    pending = [element.text or ""]
    for child in element:
        if not isinstance(child.tag, str):
            pending.append(child.tail or "")
            continue
        if _tag(child) in BLOCK_TAGS:
            yield "".join(pending)
            pending = []
            yield child
        else:
            pending.append(_inline_text(child))
        pending.append(child.tail or "")
    yield "".join(pending)


def _block_children(element: lxml.html.HtmlElement) -> bool:
    return any(_tag(child) in BLOCK_TAGS for child in element)


_KINDS = frozenset({"p", "li", "dt", "dd", "pre", "title", "blockquote", "figcaption", "caption", "summary", *HEADINGS})


def _leaf_text(text: str, kind: str, path: tuple[str, ...]) -> Iterator[Block]:
    if kind != "pre":
        text = " ".join(text.split())
    if text.strip():
        yield Block(kind, path, _MARKERS.get(kind, "") + text)


_MARKERS = {"li": "- ", "title": "# ", **{h: "#" * n + " " for h, n in HEADINGS.items()}}


def _inline_text(element: lxml.html.HtmlElement) -> str:
    """All text inside the element (links' text included), <br> and blocks as line breaks."""
    parts = [element.text or ""]
    for child in element:
        if isinstance(child.tag, str):
            if _tag(child) == "br":
                parts.append("\n")
            else:
                parts.append(_inline_text(child))
                if _tag(child) in BLOCK_TAGS:
                    parts.append("\n")
        parts.append(child.tail or "")
    return "".join(parts)


def _word_count(element: lxml.html.HtmlElement) -> int:
    return len(element.text_content().split())


def _tag(element: lxml.html.HtmlElement) -> str:
    return element.tag.lower() if isinstance(element.tag, str) else ""


# --- align -----------------------------------------------------------------------------


class _TextOffsets(HTMLParser):
    """Every character of the page's text (entities decoded) with its [start, end) in the page;
    script and style content is not text."""

    def __init__(self, raw: str) -> None:
        super().__init__(convert_charrefs=False)
        self.raw = raw
        self.line_starts = np.concatenate([[0], np.flatnonzero(np.frombuffer(raw.encode("utf-32-le"), np.uint32) == 10) + 1])
        self.pieces: list[str] = []
        self.starts: list[np.ndarray] = []
        self.ends: list[np.ndarray] = []
        self.in_raw_text = 0

    def _offset(self) -> int:
        line, column = self.getpos()
        return int(self.line_starts[line - 1]) + column

    def handle_starttag(self, tag: str, attrs: object) -> None:
        self.in_raw_text += tag in ("script", "style")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self.in_raw_text = max(0, self.in_raw_text - 1)

    def handle_data(self, data: str) -> None:
        if not self.in_raw_text:
            start = self._offset()
            self._add(data, np.arange(start, start + len(data)), np.arange(start + 1, start + len(data) + 1))

    def handle_entityref(self, name: str) -> None:
        self._reference(f"&{name}")

    def handle_charref(self, name: str) -> None:
        self._reference(f"&#{name}")

    def _reference(self, written: str) -> None:
        start = self._offset()
        end = start + len(written) + (self.raw[start + len(written) : start + len(written) + 1] == ";")
        decoded = html_entities.unescape(self.raw[start:end] if end > start else written)
        self._add(decoded, np.full(len(decoded), start), np.full(len(decoded), end))

    def _add(self, text: str, starts: np.ndarray, ends: np.ndarray) -> None:
        self.pieces.append(text)
        self.starts.append(starts)
        self.ends.append(ends)


def decoded_text(raw: str) -> tuple[str, np.ndarray, np.ndarray]:
    """The page's text characters in order and each one's [start, end) in the page."""
    offsets = _TextOffsets(raw)
    offsets.feed(raw)
    offsets.close()
    if not offsets.pieces:
        return "", np.zeros(0, np.int64), np.zeros(0, np.int64)
    return "".join(offsets.pieces), np.concatenate(offsets.starts), np.concatenate(offsets.ends)


# --- results ---------------------------------------------------------------------------


def raw_spans(page: HtmlPage, kept: Sequence[Span]) -> tuple[Span, ...]:
    """The original-HTML spans of the source words inside the kept text spans; words next to
    each other in the page (only whitespace between them) merge into one span."""
    inside = np.zeros(len(page.word_text), dtype=bool)
    if kept:
        # a word is inside some kept span when, among the spans starting at or before it,
        # the furthest end reaches its end: one sorted pass, not one array pass per span
        order = sorted(kept, key=lambda s: s.start)
        starts = np.asarray([s.start for s in order], dtype=np.int64)
        reach = np.maximum.accumulate(np.asarray([s.end for s in order], dtype=np.int64))
        last = np.searchsorted(starts, page.word_text[:, 0], side="right") - 1
        inside = (last >= 0) & (reach[last.clip(min=0)] >= page.word_text[:, 1])
    out: list[Span] = []
    for start, end in page.word_raw[inside & (page.word_raw[:, 0] >= 0)].tolist():
        if out and out[-1].end <= start and not page.raw[out[-1].end : start].strip():
            out[-1] = Span(out[-1].start, end)
        else:
            out.append(Span(start, end))
    return tuple(out)


def kept_block_texts(page: HtmlPage, kept: Sequence[Span]) -> list[tuple[Block, str]]:
    """Each block that keeps something, with its kept text (kept spans joined by spaces)."""
    out = []
    for b, block in enumerate(page.blocks):
        start, end = int(page.block_starts[b]), int(page.block_starts[b + 1]) - 1
        pieces = [page.text[max(s.start, start) : min(s.end, end)] for s in kept if s.start < end and s.end > start]
        text = " ".join(p.strip() for p in pieces if p.strip())
        if text:
            out.append((block, text))
    return out


def simplified_html(page: HtmlPage, kept: Sequence[Span]) -> str:
    """The kept text as HTML that parses: each kept block in its own tag, inside the lists and
    tables it sat in; no attributes, no wrappers."""
    out: list[str] = []
    open_path: list[str] = []
    for block, text in kept_block_texts(page, kept):
        common = 0
        while common < min(len(open_path), len(block.path)) and open_path[common] == block.path[common]:
            common += 1
        out.extend(f"</{tag}>" for tag in reversed(open_path[common:]))
        out.extend(f"<{tag}>" for tag in block.path[common:])
        open_path = list(block.path)
        marker = _MARKERS.get(block.kind, "")
        body = text[len(marker):] if marker and text.startswith(marker) else text
        if block.kind == "tr":
            cells = "".join(f"<td>{html_entities.escape(c.strip())}</td>" for c in body.split(" | ") if c.strip())
            out.append(f"<tr>{cells}</tr>")
        else:
            tag = "h1" if block.kind == "title" else block.kind
            out.append(f"<{tag}>{html_entities.escape(body)}</{tag}>")
    out.extend(f"</{tag}>" for tag in reversed(open_path))
    return "".join(out)
