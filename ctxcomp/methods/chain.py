"""Methods run one after another: "exit>llmlingua2" = EXIT, then LLMLingua-2 on what it kept.

A chain is an ordinary method. Per request: `method` names the stages joined
by ">"; `options` holds one object per stage name ({"exit": {...},
"llmlingua2": {...}}), and the chain's config holds one config per stage, so
requests batched together each keep their own. Earlier stages run on their own
presets (adaptive ones decide how much to keep); the request's rate or
target_tokens is the budget of the whole chain, measured against the original
input, and binds the last stage. Kept spans of the result point into the
original documents. Each stage runs once over all items (its own batching).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from ctxcomp.errors import InvalidRequest
from ctxcomp.hub import ModelHub
from ctxcomp.method import Method, MethodItem, MethodOutput, SelectiveOptions
from ctxcomp.methods import CHAIN_SEPARATOR
from ctxcomp.selection import token_budget
from ctxcomp.types import CompressRequest, Document, DocumentResult, Span

SEPARATOR = CHAIN_SEPARATOR


@dataclass(frozen=True)
class ChainConfig(SelectiveOptions):
    """One config per stage; the chain is selective when any stage is (the strictest threshold wins)."""

    stages: tuple[Any, ...] = ()


def chain_config(stages: Sequence[Any]) -> ChainConfig:
    selective = [s for s in stages if s.selective]
    threshold = max((s.relevance_threshold for s in selective), default=-1.0)
    return ChainConfig(selective=bool(selective), relevance_threshold=threshold, stages=tuple(stages))


class Chain:
    def __init__(self, stages: Sequence[Method]) -> None:
        self.stages = tuple(stages)
        self.name = SEPARATOR.join(s.name for s in self.stages)
        self.description = " then ".join(s.name for s in self.stages)
        self.requires = tuple(dict.fromkeys(r for s in self.stages for r in s.requires))
        self.needs_query = any(s.needs_query for s in self.stages)
        self.output = self.stages[-1].output
        self.presets = {"default": chain_config([s.presets["default"] for s in self.stages])}

    @classmethod
    def parse(cls, name: str, lookup: Callable[[str], Method]) -> Chain:
        """The chain `a>b>c`; each name once, only the last stage may return vectors."""
        names = name.split(SEPARATOR)
        if len(set(names)) != len(names) or "" in names:
            raise InvalidRequest("method", f"a chain names each method once, separated by '{SEPARATOR}'")
        stages = [lookup(n) for n in names]
        for stage in stages[:-1]:
            if stage.output != "text":
                raise InvalidRequest("method", f"{stage.name} returns vectors, not text: it can only end a chain")
        return cls(stages)

    def configure(self, options: Mapping[str, Any], prefix: str = "options") -> ChainConfig:
        names = [s.name for s in self.stages]
        for key, value in options.items():
            if key not in names:
                raise InvalidRequest(f"{prefix}.{key}", f"a chained request takes one options object per stage: {', '.join(names)}")
            if not isinstance(value, Mapping):
                raise InvalidRequest(f"{prefix}.{key}", "must be an object of that stage's options")
        return chain_config([s.configure(options.get(s.name, {}), f"{prefix}.{s.name}") for s in self.stages])

    def check(self, hub: ModelHub) -> list[str]:
        return list(dict.fromkeys(reason for s in self.stages for reason in s.check(hub)))

    def compress_many(self, items: Sequence[MethodItem]) -> list[MethodOutput]:
        current = [item.request for item in items]
        before = [list(item.tokens_before) for item in items]
        budgets = [whole_chain_budget(item) for item in items]
        history: list[list[tuple[DocumentResult, ...]]] = [[] for _ in items]
        notes: list[list[str]] = [[] for _ in items]
        for position, stage in enumerate(self.stages):
            last = position == len(self.stages) - 1
            staged = [  # the first stage sees the documents as sent, which the pipeline's relevance scores are of
                MethodItem(dataclasses.replace(r, rate=None, target_tokens=b if last else None), item.config.stages[position],
                           tuple(t), item.relevance if position == 0 else None)
                for r, b, item, t in zip(current, budgets, items, before)
            ]
            outputs = stage.compress_many(staged)
            for i, output in enumerate(outputs):
                history[i].append(output.documents)
                notes[i] += [f"{stage.name}: {output.note}"] if output.note else []
                given, kept = sum(before[i]), sum(r.tokens_after for r in output.documents)
                if given and not kept:
                    later = ", ".join(s.name for s in self.stages[position + 1 :])
                    notes[i].append(
                        f"{stage.name} kept none of the {given} tokens it was given (a stage applies its own rate "
                        f"to what the stage before kept)" + (f", so {later} had no text" if later else "")
                    )
                current[i] = with_texts(current[i], output.documents)
                before[i] = [r.tokens_after for r in output.documents]
        return [
            MethodOutput(final_documents(item, steps), "; ".join(n), output.soft)  # a vector method may end the chain
            for item, steps, n, output in zip(items, history, notes, outputs)
        ]


def whole_chain_budget(item: MethodItem) -> int | None:
    """The request's own target binds the whole chain; without one, each stage's preset decides."""
    request = item.request
    if request.rate is None and request.target_tokens is None:
        return None
    return token_budget(request, 1.0, item.tokens_before)


def with_texts(request: CompressRequest, documents: Sequence[DocumentResult]) -> CompressRequest:
    """The request a next stage sees: each document's text replaced by what this stage kept."""
    return dataclasses.replace(
        request, documents=tuple(Document(d.id, r.text, d.metadata) for d, r in zip(request.documents, documents))
    )


def final_documents(item: MethodItem, steps: Sequence[tuple[DocumentResult, ...]]) -> tuple[DocumentResult, ...]:
    """The last stage's results with the original token counts and spans into the original text."""
    return tuple(
        dataclasses.replace(
            last,
            tokens_before=original_before,
            kept_spans=compose_history([s[d] for s in steps], item.request.documents[d].text),
        )
        for d, (last, original_before) in enumerate(zip(steps[-1], item.tokens_before))
    )


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
