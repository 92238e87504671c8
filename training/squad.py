"""SQuAD v1.1 dev as training and evaluation data, split by article.

The file is squad_dev_v1.1.json.gz (CC BY-SA 4.0, Rajpurkar et al., 2016):
CTXCOMP_SQUAD names it; otherwise it is looked for as shared/data/ beside the
working directory or one of its parents (a checkout sits next to shared/). No
path is derived from where the package is installed.

Three splits by article (`splits()`), so no paragraph of an article used for a
choice or a report was seen in training:
- test: a fixed seeded quarter of the articles (12 of 48). Benches report on it;
  nothing trains or tunes on it.
- dev: 4 of the remaining articles. Every choice (epochs, thresholds, codec
  steps, input lengths) is made on it.
- train: the other 32 articles.
"""

from __future__ import annotations

import gzip
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

FILE_NAME = "squad_dev_v1.1.json.gz"
TEST_SHARE = 0.25
SPLIT_SEED = 13
DEV_ARTICLES = 4
DEV_SEED = 1234
SPLIT_NAMES = ("train", "dev", "test")


@dataclass(frozen=True)
class Question:
    id: str
    text: str
    answers: tuple[str, ...]
    answer_starts: tuple[int, ...]


@dataclass(frozen=True)
class Paragraph:
    article: str
    index: int
    context: str
    questions: tuple[Question, ...]


def squad_path() -> Path:
    if "CTXCOMP_SQUAD" in os.environ:
        path = Path(os.environ["CTXCOMP_SQUAD"]).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"SQuAD dev not found at CTXCOMP_SQUAD={path}")
        return path
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "shared" / "data" / FILE_NAME).exists():
            return folder / "shared" / "data" / FILE_NAME
    raise FileNotFoundError(f"SQuAD dev ({FILE_NAME}) not found under shared/data/ beside {here} or its parents; "
                            "set CTXCOMP_SQUAD to squad_dev_v1.1.json(.gz)")


def load_paragraphs(path: Path | None = None) -> list[Paragraph]:
    path = path or squad_path()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        data = json.load(handle)["data"]
    paragraphs = []
    for article in data:
        for index, para in enumerate(article["paragraphs"]):
            questions = tuple(
                Question(
                    qa["id"],
                    qa["question"],
                    tuple(a["text"] for a in qa["answers"]),
                    tuple(a["answer_start"] for a in qa["answers"]),
                )
                for qa in para["qas"]
            )
            paragraphs.append(Paragraph(article["title"], index, para["context"], questions))
    return paragraphs


@dataclass(frozen=True)
class Splits:
    train: list[Paragraph]
    dev: list[Paragraph]
    test: list[Paragraph]

    def named(self, name: str) -> list[Paragraph]:
        if name not in SPLIT_NAMES:
            raise ValueError(f"split must be one of {', '.join(SPLIT_NAMES)}, got {name!r}")
        return getattr(self, name)


def splits(paragraphs: list[Paragraph] | None = None) -> Splits:
    """train / dev / test by article title: test a seeded quarter of the articles,
    dev DEV_ARTICLES of the rest (a second seeded shuffle), train the remainder."""
    paragraphs = load_paragraphs() if paragraphs is None else paragraphs
    titles = sorted({p.article for p in paragraphs})
    random.Random(SPLIT_SEED).shuffle(titles)
    test = set(titles[: max(1, round(len(titles) * TEST_SHARE))])
    rest = sorted(set(titles) - test)
    random.Random(DEV_SEED).shuffle(rest)
    dev = set(rest[:DEV_ARTICLES])
    return Splits(
        train=[p for p in paragraphs if p.article not in test and p.article not in dev],
        dev=[p for p in paragraphs if p.article in dev],
        test=[p for p in paragraphs if p.article in test],
    )


def split_paragraphs(name: str) -> list[Paragraph]:
    """The paragraphs of one split by name ("train", "dev" or "test")."""
    return splits().named(name)
