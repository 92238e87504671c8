"""LLMLingua-2 on the shipped classifier: budgets, forced words, text integrity."""

from __future__ import annotations

import numpy as np
import pytest

from ctxcomp.errors import InvalidRequest
from ctxcomp.types import CompressRequest, Document

PARAGRAPH = (
    "Super Bowl 50 was an American football game to determine the champion of the National Football "
    "League (NFL) for the 2015 season. The American Football Conference (AFC) champion Denver Broncos "
    "defeated the National Football Conference (NFC) champion Carolina Panthers 24-10 to earn their third "
    "Super Bowl title. The game was played on February 7, 2016, at Levi's Stadium in the San Francisco Bay "
    "Area at Santa Clara, California."
)


def request(*texts: str, **kwargs) -> CompressRequest:
    docs = tuple(Document(f"d{i}", t, {"n": str(i)}) for i, t in enumerate(texts))
    return CompressRequest(query="", documents=docs, **{"method": "llmlingua2", **kwargs})


@pytest.mark.parametrize("target", [10, 25, 40, 77])
def test_target_tokens_is_never_exceeded_and_nearly_met(compressor, hub, target) -> None:
    result = compressor.compress(request(PARAGRAPH, PARAGRAPH.upper(), target_tokens=target))
    counted = sum(hub.count_tokens([d.text for d in result.documents]))
    assert result.tokens_after == counted <= target
    assert counted >= target - 3


def test_rate_sets_the_budget_over_all_documents(compressor) -> None:
    result = compressor.compress(request(PARAGRAPH, "A short second document about football.", rate=0.5))
    assert result.tokens_after <= int(result.tokens_before * 0.5)
    assert 1.9 <= result.ratio <= 2.2
    assert [d.id for d in result.documents] == ["d0", "d1"]
    assert result.documents[0].metadata == {"n": "0"}


def test_kept_spans_are_the_original_text(compressor) -> None:
    result = compressor.compress(request(PARAGRAPH, rate=0.4))
    doc = result.documents[0]
    pieces = [PARAGRAPH[s.start : s.end] for s in doc.kept_spans]
    assert " ".join(pieces) == doc.text
    assert all(a.end < b.start for a, b in zip(doc.kept_spans, doc.kept_spans[1:]))


def test_force_tokens_and_digits_are_kept(compressor) -> None:
    options = {"force_tokens": ["Panthers", "Stadium"], "force_reserve_digit": True}
    result = compressor.compress(request(PARAGRAPH, rate=0.5, options=options))
    text = result.documents[0].text
    for word in ["Panthers", "Stadium", "50", "2015", "24-10", "7,", "2016,"]:
        assert word in text.split(), word


def test_drop_consecutive_keeps_one_of_a_run(compressor) -> None:
    text = "Alpha beta , , , gamma delta ! ! epsilon"
    options = {"force_tokens": [",", "!"], "drop_consecutive": True}
    result = compressor.compress(request(text, rate=1.0, options=options))
    assert result.documents[0].text.split().count(",") == 1
    assert result.documents[0].text.split().count("!") == 1


def test_empty_and_whitespace_documents(compressor) -> None:
    result = compressor.compress(request("", "   \n\t ", PARAGRAPH, rate=0.5))
    assert [d.text for d in result.documents[:2]] == ["", ""]
    assert result.documents[0].tokens_before == 0
    assert [d.tokens_after for d in result.documents[:2]] == [0, 0]
    assert result.documents[2].text


def test_non_english_text_round_trips(compressor) -> None:
    cjk = "東京は日本の首都であり、世界最大の都市圏の一つである。人口は約千四百万人。"
    accented = "Le château de Versailles, résidence des rois de France, fut agrandi sous Louis XIV à partir de 1661."
    result = compressor.compress(request(cjk, accented, rate=1.0))
    assert result.documents[0].text == cjk
    assert result.documents[1].text == accented
    half = compressor.compress(request(cjk, accented, rate=0.5))
    for doc, original in zip(half.documents, (cjk, accented)):
        assert "\ufffd" not in doc.text
        assert all(original[s.start : s.end] in doc.text for s in doc.kept_spans)


def test_word_labels_match_the_decision(compressor) -> None:
    result = compressor.compress(request(PARAGRAPH, rate=0.3, return_word_labels=True))
    doc = result.documents[0]
    kept = [PARAGRAPH[w.start : w.end] for w in doc.word_labels if w.kept]
    assert " ".join(kept) == doc.text
    assert all(0.0 <= w.score <= 1.0 for w in doc.word_labels)


def test_long_document_is_chunked_not_truncated(compressor, hub) -> None:
    from ctxcomp import text, wordscore

    long_text = " ".join([PARAGRAPH] * 12)  # ~1,000 encoder tokens
    result = compressor.compress(request(long_text, rate=1.0))
    assert result.documents[0].text == long_text
    classifier = hub.get("token_classifier")
    words = text.segment_words(long_text).strings()
    chunks = wordscore.chunk_words(classifier.tokenizer, words, 0, classifier.max_length)
    assert len(chunks) >= 2
    assert all(len(c.input_ids) <= classifier.max_length for c in chunks)
    covered = [w for c in chunks for w in dict.fromkeys(o for o in c.word_of_token if o >= 0)]
    assert covered == list(range(len(words)))  # every word, once, in order
    assert all(words[c.first_word - 1].endswith(".") for c in chunks[1:])  # cut at sentence ends


@pytest.mark.parametrize("role", ["token_classifier", "token_classifier_fast"])
def test_trained_classifier_prefers_answer_words(hub, squad_held_out, role) -> None:
    """On held-out articles, gold-answer words score higher than the rest (a random head would not);
    the distilled three-layer student too."""
    from ctxcomp import text, wordscore
    from training.train_token_classifier import word_labels

    paragraphs = squad_held_out[:40]
    words = [text.segment_words(p.context) for p in paragraphs]
    scores = wordscore.score_documents(hub.get(role), [w.strings() for w in words])
    labels = np.concatenate([word_labels(p, w) for p, w in zip(paragraphs, words)]).astype(bool)
    flat = np.concatenate(scores)
    assert flat[labels].mean() > flat[~labels].mean() + 0.15


def test_bad_rate_option_is_rejected(compressor) -> None:
    with pytest.raises(InvalidRequest) as caught:
        compressor.compress(request(PARAGRAPH, options={"rate": 1.5}))
    assert caught.value.field == "options.rate"


STRUCTURED = """Install the client first:
```bash
pip install ctxcomp --upgrade
export CTXCOMP_PORT=50051
```
Then send {"query": "capital of France", "rate": 0.33, "documents": [{"id": "a"}]} to the server.
Read [the deployment guide](https://docs.example.com/deploy#grpc) or https://example.com/faq?topic=limits first.
- The default port is 50051 and the limit is 64 MiB.
- Health turns SERVING after 12.5 seconds on 2 cores.
1. Start the server.
2. Check `grpc_health_probe -addr=:50051` before sending traffic.
"""


@pytest.mark.parametrize("rate", [0.2, 0.4, 0.6])
def test_structure_is_kept_or_dropped_whole(compressor, rate) -> None:
    from ctxcomp import text, wordscore

    result = compressor.compress(request(STRUCTURED, rate=rate, return_word_labels=True))
    doc = result.documents[0]
    kept = {(w.start, w.end): w.kept for w in doc.word_labels}
    words = text.segment_words(STRUCTURED)
    for start, end in text.structure_spans(STRUCTURED):
        inside = {kept[(s, e)] for s, e in zip(words.starts.tolist(), words.ends.tolist()) if start <= s < end}
        assert len(inside) == 1, f"cut inside {STRUCTURED[start:end]!r}"
        assert (STRUCTURED[start:end] in doc.text) == inside.pop()
    for unit in ["https://docs.example.com/deploy#grpc)", "https://example.com/faq?topic=limits", "12.5", "64"]:
        assert unit in doc.text or not any(unit[:5] in piece for piece in doc.text.split()), unit
    assert result.tokens_after <= int(result.tokens_before * rate)


def test_structure_spans_cover_code_json_links_and_lists() -> None:
    from ctxcomp import text, wordscore

    found = [STRUCTURED[s:e] for s, e in text.structure_spans(STRUCTURED)]
    assert found[0].startswith("```bash") and found[0].endswith("```")
    assert '{"query": "capital of France", "rate": 0.33, "documents": [{"id": "a"}]}' in found
    assert "[the deployment guide](https://docs.example.com/deploy#grpc)" in found
    assert "- The" in found and "1. Start" in found
    assert "`grpc_health_probe -addr=:50051`" in found


def test_compat_mode_thresholds_each_chunk_by_percentile(compressor, hub) -> None:
    """Compat keeps about `rate` of each chunk's LLM tokens, like the reference, words being encoder words."""
    long_text = " ".join([PARAGRAPH] * 8)
    result = compressor.compress(request(PARAGRAPH, long_text, rate=0.33, options={"mode": "compat"}, return_word_labels=True))
    for doc in result.documents:
        assert 0.2 <= doc.tokens_after / doc.tokens_before <= 0.45
    # Encoder words: "24-10" is three words for a BERT tokenizer, so it can be cut.
    labels = result.documents[0].word_labels
    assert [PARAGRAPH[w.start : w.end] for w in labels][:4] == ["Super", "Bowl", "50", "was"]


def test_bf16_scores_agree_with_fp32(compressor) -> None:
    fp32 = compressor.compress(request(PARAGRAPH, rate=0.4, return_word_labels=True))
    bf16 = compressor.compress(request(PARAGRAPH, rate=0.4, options={"precision": "bf16"}, return_word_labels=True))
    a = np.array([w.score for w in fp32.documents[0].word_labels])
    b = np.array([w.score for w in bf16.documents[0].word_labels])
    assert np.abs(a - b).max() < 0.05
    agree = np.mean([x.kept == y.kept for x, y in zip(fp32.documents[0].word_labels, bf16.documents[0].word_labels)])
    assert agree >= 0.9


def test_coarse_filter_drops_whole_documents(compressor) -> None:
    docs = [PARAGRAPH, "Bananas are yellow.", "The weather was fine and people walked along the river."]
    result = compressor.compress(request(*docs, rate=0.9, options={"coarse_rate": 0.3}))
    kept = [d for d in result.documents if d.text]
    assert len(kept) == 1


def test_a_query_moves_the_budget_to_relevant_documents(compressor) -> None:
    """With a query, words are scored by the relevance model's query-aware token head;
    query_weight adds the relevance of each word's sentence on top."""
    docs = (
        Document("bowl", PARAGRAPH),
        Document("bananas", "Bananas are berries that grow in tropical regions; they are rich in potassium and "
                 "are one of the most widely traded fruits, shipped green and ripened in warehouses."),
    )

    def run(**options):
        return compressor.compress(CompressRequest("Who won Super Bowl 50?", docs, method="llmlingua2", rate=0.3, options=options))

    agnostic, aware, guided = run(query_aware=False), run(), run(query_weight=2.0)
    share = lambda r: r.documents[0].tokens_after / max(r.tokens_after, 1)  # noqa: E731
    assert share(aware) > share(agnostic)
    assert share(guided) >= share(aware)
    assert "Broncos" in aware.documents[0].text
    assert aware.documents[0].score > aware.documents[1].score  # a document's score is its relevance


def test_fast_classifier_is_a_shallow_student_that_ranks_like_its_teacher(compressor, hub, squad_held_out) -> None:
    """classifier "fast" runs the distilled student: fewer layers, nearly the teacher's word ranking."""
    from scipy.stats import spearmanr

    from ctxcomp import text, wordscore

    full, fast = hub.get("token_classifier", "fp32"), hub.get("token_classifier_fast", "fp32")
    assert fast.model.config.num_hidden_layers < full.model.config.num_hidden_layers
    words = [text.segment_words(p.context).strings() for p in squad_held_out[:20]]
    teacher = np.concatenate(wordscore.score_documents(full, words))
    student = np.concatenate(wordscore.score_documents(fast, words))
    assert spearmanr(teacher, student).statistic > 0.8
    result = compressor.compress(request(PARAGRAPH, rate=0.33, options={"classifier": "fast"}, return_word_labels=True))
    expected = wordscore.score_documents(fast, [text.segment_words(PARAGRAPH).strings()])[0]
    np.testing.assert_allclose([w.score for w in result.documents[0].word_labels], expected, atol=1e-5)


@pytest.mark.parametrize("mode", ["budget", "compat"])
def test_batch_of_requests_equals_one_by_one(compressor, mode) -> None:
    """Requests with different scoring settings (the fast classifier among them) share a batch
    and get what each gets alone."""
    texts = [PARAGRAPH, STRUCTURED, "Short one.", PARAGRAPH.lower(), PARAGRAPH]
    classifiers = ["full", "full", "fast", "full", "fast"]
    requests = [
        CompressRequest("", (Document("x", t),), method="llmlingua2", rate=r, options={"mode": mode, "classifier": c})
        for t, r, c in zip(texts, [0.3, 0.5, 0.9, 0.4, 0.3], classifiers)
    ]
    together = compressor.compress_batch(requests)
    alone = [compressor.compress(r) for r in requests]
    assert [r.context for r in together] == [r.context for r in alone]
    assert [r.tokens_after for r in together] == [r.tokens_after for r in alone]


def test_compat_word_spellings_are_the_tokenizers_decode(hub) -> None:
    """Memoised spellings (what the reference counts LLM tokens of) equal decoding each word afresh,
    on a first and a repeated call, for words split into several pieces too."""
    from ctxcomp.methods import llmlingua2_compat as compat

    tokenizer = hub.get("token_classifier").tokenizer
    doc = compat.encode(tokenizer, PARAGRAPH + " Antidisestablishmentarianism, naïve café 24-10!")
    bounds = np.flatnonzero(np.diff(doc.word_of_token)) + 1
    fresh = [tokenizer.decode(ids.tolist()) for ids in np.split(doc.token_ids, bounds)]
    assert doc.word_strings(tokenizer) == fresh
    assert doc.word_strings(tokenizer) == fresh
    assert any(len(ids) > 1 for ids in np.split(doc.token_ids, bounds))
