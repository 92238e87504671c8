"""Realistic web pages around SQuAD paragraphs, for bench/html_pruning.py (real pages are scarce offline).

One page per question: the question's paragraph (gold) among the other paragraphs of its article,
laid out by one of four templates that differ in what a cleaner can rely on:
  semantic   HTML5 with nav/aside/footer and telling class names
  div_soup   the same furniture in <div>s with generated class names (nothing to match on)
  tables     an old table layout: menus, sidebar and content are table cells
  blog       a post with inline styles, a share bar, hidden markup and a comment thread
Every page carries what real pages carry: a navigation menu, a sidebar of related articles
(titles and first sentences of *other* articles: relevant-looking distractors), ads, a cookie
banner, scripts with JSON, inline styles, and a footer. Paragraphs are sometimes split into
<span>s, sometimes given as a list of sentences, and one other paragraph becomes a table row
block. Seeded: the same split and seed give the same pages.
"""

from __future__ import annotations

import html
import json
import random
import re
from dataclasses import dataclass

from training import squad

TEMPLATES = ("semantic", "div_soup", "tables", "blog")
AD_LINES = (
    "Limited offer: 50% off premium membership this week only!",
    "Sponsored: the best travel insurance of 2026, compared.",
    "Click here to claim your free gift card now.",
)
COOKIE = "We use cookies to improve your experience. By continuing you agree to our cookie policy."
COMMENTS = (
    "Great article, thanks for sharing!",
    "I read somewhere else that this was not quite right, but interesting anyway.",
    "Does anyone have a source for the second paragraph?",
    "First!",
)


@dataclass(frozen=True)
class Page:
    html: str
    question: str
    answers: tuple[str, ...]
    template: str
    article: str


def pages(paragraphs: list[squad.Paragraph], count: int, seed: int = 0) -> list[Page]:
    """`count` pages, each for one question, articles and questions drawn with the seed."""
    rng = random.Random(seed)
    by_article: dict[str, list[squad.Paragraph]] = {}
    for p in paragraphs:
        by_article.setdefault(p.article, []).append(p)
    titles = sorted(by_article)
    out = []
    for n in range(count):
        article = titles[n % len(titles)]
        gold = rng.choice([p for p in by_article[article] if p.questions])
        question = rng.choice(gold.questions)
        others = rng.sample([p for p in by_article[article] if p is not gold], min(4, len(by_article[article]) - 1))
        body = others[:]
        body.insert(rng.randrange(len(body) + 1), gold)
        related = [by_article[t][0] for t in rng.sample([t for t in titles if t != article], min(4, len(titles) - 1))]
        template = TEMPLATES[n % len(TEMPLATES)]
        page = render_page(template, article, body, gold, related, rng)
        out.append(Page(page, question.text, question.answers, template, article))
    return out


def render_page(
    template: str, article: str, body: list[squad.Paragraph], gold: squad.Paragraph,
    related: list[squad.Paragraph], rng: random.Random,
) -> str:
    title = html.escape(article.replace("_", " "))
    content = [f"<h1>{title}</h1>"]
    table_done = False
    for p in body:
        kind = rng.random()
        if p is not gold and not table_done and kind < 0.25:
            content.append(_table(p))
            table_done = True
        elif kind < 0.45:
            content.append("<ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in _sentences(p.context)) + "</ul>")
        elif kind < 0.7:
            content.append("<p>" + "".join(f"<span>{html.escape(s)} </span>" for s in _sentences(p.context)) + "</p>")
        else:
            content.append(f"<p>{html.escape(p.context)}</p>")
        if rng.random() < 0.3:
            content.append(f"<h2>{html.escape(_first_words(p.context, 5))}</h2>")
    nav = "".join(f'<a href="/{i}">{html.escape(r.article.replace("_", " "))}</a> ' for i, r in enumerate(related))
    side = "".join(
        f'<h3>{html.escape(r.article.replace("_", " "))}</h3><p>{html.escape(_sentences(r.context)[0])}</p>'
        for r in related
    )
    ad = html.escape(rng.choice(AD_LINES))
    script = f"<script>window.__STATE__ = {json.dumps({'article': article, 'related': [r.article for r in related]})};</script>"
    style = "<style>.c{color:#333}.x{display:flex}</style>"
    main = "".join(content)
    return {
        "semantic": _semantic, "div_soup": _div_soup, "tables": _tables, "blog": _blog,
    }[template](title, nav, side, ad, main, script, style, rng)


def _semantic(title, nav, side, ad, main, script, style, rng) -> str:
    return (
        f"<!DOCTYPE html><html><head><title>{title}</title>{style}{script}</head><body>"
        f'<div class="cookie-banner">{COOKIE} <button>OK</button></div>'
        f'<nav class="main-nav">{nav}</nav><div class="layout"><main><article>{main}</article></main>'
        f'<aside class="sidebar"><h2>Related</h2>{side}</aside></div>'
        f'<div class="ad-slot">{ad}</div><footer>Copyright 2026 Example Media. <a href="/privacy">Privacy</a></footer>'
        f"{script}</body></html>"
    )


def _div_soup(title, nav, side, ad, main, script, style, rng) -> str:
    def name() -> str:
        return "c-" + "".join(rng.choice("abcdef0123456789") for _ in range(5))

    return (
        f"<html><head><title>{title}</title>{style}</head><body>{script}"
        f'<div class="{name()}"><div class="{name()}">{COOKIE}</div></div>'
        f'<div class="{name()}"><div class="{name()}">{nav}</div></div>'
        f'<div class="{name()}"><div class="{name()}"><div class="{name()}">{main}</div></div>'
        f'<div class="{name()}">{side}</div></div>'
        f'<div class="{name()}">{ad}</div><div class="{name()}">Copyright 2026 Example Media. All rights reserved.</div>'
        "</body></html>"
    )


def _tables(title, nav, side, ad, main, script, style, rng) -> str:
    return (
        f"<html><head><title>{title}</title></head><body bgcolor=white>{script}"
        f'<table width="100%"><tr><td colspan=2>{nav}</td></tr>'
        f'<tr><td width="70%" valign=top>{main}</td><td valign=top><b>See also</b>{side}<br><font size=1>{ad}</font></td></tr>'
        f"<tr><td colspan=2><small>{COOKIE} Copyright 2026.</small></td></tr></table>"
        # unclosed tags, as old pages have them
        "<p>Last updated <b>yesterday</body></html>"
    )


def _blog(title, nav, side, ad, main, script, style, rng) -> str:
    comments = "".join(f'<div style="margin:4px"><p>{html.escape(c)}</p></div>' for c in COMMENTS)
    return (
        f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{title} | My Blog</title>{style}</head><body>"
        f'<header><div style="font-size:20px">My Blog</div>{nav}</header>'
        f'<div style="display:none">tracking pixel fallback text</div>'
        f'<div class="post" style="padding:10px">{main}</div>'
        f'<div class="share-bar">Share on Twitter Facebook LinkedIn</div>'
        f'<section><h2>Comments</h2>{comments}</section><div>{side}</div><p>{ad}</p>{script}</body></html>'
    )


def _table(p: squad.Paragraph) -> str:
    rows = "".join(f"<tr><td>{i + 1}</td><td>{html.escape(s)}</td></tr>" for i, s in enumerate(_sentences(p.context)))
    return f"<table><tr><th>#</th><th>Fact</th></tr>{rows}</table>"


def _sentences(text: str) -> list[str]:
    # at least three lower-case letters or digits before the stop, so "St. Johns" or "U.S. Army" stay whole
    return [s for s in re.split(r"(?<=[a-z0-9]{3}[.!?])\s+(?=[A-Z])", text) if s]


def _first_words(text: str, n: int) -> str:
    return " ".join(text.split()[:n])
