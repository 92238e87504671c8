"""Write the sample text the "openvino-int8" encoders calibrate their activation ranges on.

    python -m training.calibration_texts [--out ctxcomp/models/calibration/texts.json] [--count 48]

Static int8 (ctxcomp/models/openvino_int8.py) needs real inputs to measure each projection's
activation range: random token ids give ranges no text has. So a fixed sample ships with
the package: `count` paragraphs of the train articles of the SQuAD split (never dev or
test), one per article in turn, each with its first question, so that an encoder is
calibrated on plain passages and on question + passage pairs (the cross-encoder's input).
SQuAD v1.1 is CC BY-SA 4.0 (Rajpurkar et al., 2016); the file says so.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from training import squad

SEED = 5
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "calibration" / "texts.json"


def sample(paragraphs: list[squad.Paragraph], count: int) -> list[dict[str, str]]:
    """`count` paragraphs with a question each, spread over the articles (round robin, seeded)."""
    by_article: dict[str, list[squad.Paragraph]] = {}
    for p in paragraphs:
        if p.questions:
            by_article.setdefault(p.article, []).append(p)
    rng = random.Random(SEED)
    pools = [rng.sample(ps, len(ps)) for _, ps in sorted(by_article.items())]
    picked: list[squad.Paragraph] = []
    while len(picked) < count and any(pools):
        picked.extend(pool.pop() for pool in pools if pool and len(picked) < count)
    return [{"question": p.questions[0].text, "text": p.context} for p in picked]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--count", type=int, default=48)
    args = parser.parse_args()
    samples = sample(squad.split_paragraphs("train"), args.count)
    document = {
        "source": "SQuAD v1.1 dev (CC BY-SA 4.0, Rajpurkar et al., 2016), train articles of training/squad.py",
        "made_by": "python -m training.calibration_texts",
        "samples": samples,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n")
    print(f"{len(samples)} samples -> {args.out}")


if __name__ == "__main__":
    main()
