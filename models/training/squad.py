"""SQuAD v1.1 dev as training and evaluation data, split by article.

The file is squad_dev_v1.1.json.gz (CC BY-SA 4.0, Rajpurkar et al., 2016):
CTXCOMP_SQUAD names it; otherwise it is looked for as shared/data/ beside the
working directory or one of its parents (a checkout sits next to shared/). No
path is derived from where the package is installed. Splitting by article
keeps every paragraph of an evaluation article unseen in training.
"""

from __future__ import annotations

import gzip
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

FILE_NAME = "squad_dev_v1.1.json.gz"
HELD_OUT_SHARE = 0.25
SPLIT_SEED = 13


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


def split_articles(paragraphs: list[Paragraph]) -> tuple[list[Paragraph], list[Paragraph]]:
    """(train, held_out) by article title, a fixed seeded quarter of articles held out."""
    titles = sorted({p.article for p in paragraphs})
    random.Random(SPLIT_SEED).shuffle(titles)
    held = set(titles[: max(1, round(len(titles) * HELD_OUT_SHARE))])
    return [p for p in paragraphs if p.article not in held], [p for p in paragraphs if p.article in held]
