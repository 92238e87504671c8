"""Methods run one after another: "exit>llmlingua2" = EXIT, then LLMLingua-2 on what it kept.

Per request: `method` names the stages joined by ">"; `options` holds one
object per stage name ({"exit": {...}, "llmlingua2": {...}}). Earlier stages
run on their own presets (adaptive ones decide how much to keep); the
request's rate or target_tokens is the budget of the whole chain, measured
against the original input, and binds the last stage. Kept spans of the
result point into the original documents.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from ctxcomp.methods import MethodOutput, token_budget
from ctxcomp.types import CompressRequest, Document, DocumentResult, Span


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    method: Any  # a Method
    config: Any


class Chain:
    def __init__(self, stages: Sequence[Stage]) -> None:
        self.stages = tuple(stages)

    def compress(self, request: CompressRequest, tokens_before: Sequence[int]) -> MethodOutput:
        # The request's own target binds the whole chain; without one, each stage's preset decides.
        has_target = request.rate is not None or request.target_tokens is not None
        budget = token_budget(request, 1.0, tokens_before) if has_target else None
        current, before, history, notes = request, list(tokens_before), [], []
        for i, stage in enumerate(self.stages):
            last = i == len(self.stages) - 1
            staged = dataclasses.replace(current, rate=None, target_tokens=budget if last else None)
            output = stage.method.compress(staged, stage.config, before)
            history.append(output.documents)
            if output.note:
                notes.append(f"{stage.name}: {output.note}")
            current = dataclasses.replace(
                current,
                documents=tuple(Document(d.id, r.text, d.metadata) for d, r in zip(current.documents, output.documents)),
            )
            before = [r.tokens_after for r in output.documents]
        final = tuple(
            dataclasses.replace(
                last_result,
                tokens_before=original_before,
                kept_spans=compose_history([h[d] for h in history], request.documents[d].text),
            )
            for d, (last_result, original_before) in enumerate(zip(history[-1], tokens_before))
        )
        return MethodOutput(final, "; ".join(notes), output.soft)  # a vector method may end the chain


def compose_history(results: Sequence[DocumentResult], original: str) -> tuple[Span, ...]:
    """Kept spans of the original text after several stages, each stage's spans indexing
    the previous stage's text. An abstractive stage (no spans but text) ends the mapping."""
    spans = (Span(0, len(original)),)
    text = original
    for result in results:
        if result.text and not result.kept_spans:
            return ()
        spans = compose(spans, text, original, result.kept_spans)
        text = result.text
    return spans


def compose(outer: Sequence[Span], outer_text: str, original: str, inner: Sequence[Span]) -> tuple[Span, ...]:
    """Map spans of `outer_text` (the outer spans of `original`, joined by separators)
    back to spans of `original`; parts that fall on separators are skipped."""
    pieces = []  # (start in outer_text, start in original, length)
    at = 0
    for span in outer:
        piece = original[span.start : span.end]
        found = outer_text.find(piece, at)
        if found < 0:
            continue
        pieces.append((found, span.start, len(piece)))
        at = found + len(piece)
    mapped: list[Span] = []
    for span in inner:
        for text_start, orig_start, length in pieces:
            lo, hi = max(span.start, text_start), min(span.end, text_start + length)
            if lo < hi:
                start, end = orig_start + lo - text_start, orig_start + hi - text_start
                if mapped and mapped[-1].end == start:
                    mapped[-1] = Span(mapped[-1].start, end)
                else:
                    mapped.append(Span(start, end))
    return tuple(mapped)
