"""The request path: plan once, run planned requests together, stage by stage."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ctxcomp import methods
from ctxcomp.errors import InvalidRequest
from ctxcomp.pipeline import Compressor, Limits, Plan, join_order
from ctxcomp.types import CompressRequest, Document

TEXT = (
    "The Vasa was a Swedish warship built between 1626 and 1628. She sank on her maiden voyage in 1628 "
    "because she was top-heavy: too little ballast for her two gun decks. She was raised in 1961."
)


def request(**kwargs) -> CompressRequest:
    return CompressRequest("Why did the Vasa sink?", (Document("vasa", TEXT),), **kwargs)


def test_plan_resolves_method_config_and_codec(compressor) -> None:
    plan = compressor.plan(request(method="exit", options={"min_sentences": 2}))
    assert isinstance(plan, Plan) and plan.name == "exit" and plan.kv_codec == ""
    assert plan.config.min_sentences == 2


def test_an_empty_method_name_is_the_default_method(compressor) -> None:
    assert CompressRequest("q", ()).method == ""
    assert compressor.plan(request()).name == compressor.default_method == methods.DEFAULT_METHOD


def test_run_uses_the_plans_it_is_given(compressor) -> None:
    plans = [compressor.plan(request(method="recomp_extractive", rate=r)) for r in (0.9, 0.3)]
    loose, tight = compressor.run(plans)
    assert tight.tokens_after < loose.tokens_after <= loose.tokens_before
    assert set(loose.timings_ms) >= {"validate", "compress", "join"}


def test_methods_of_one_batch_run_once_each_with_their_own_config(compressor) -> None:
    mixed = [request(method="llmlingua2", rate=0.5), request(method="exit"), request(method="llmlingua2", rate=0.2)]
    together = compressor.compress_batch(mixed)
    assert [r.context for r in together] == [compressor.compress(r).context for r in mixed]


def test_limits_are_enforced_by_field() -> None:
    small = Compressor(limits=Limits(max_documents=1))
    with pytest.raises(InvalidRequest) as err:
        small.plan(CompressRequest("q", (Document("a", "x"), Document("b", "y"))))
    assert err.value.field == "documents"


def test_describe_methods_reports_what_each_method_lacks(compressor) -> None:
    rows = {row["name"]: row for row in compressor.describe_methods()}
    assert set(rows) == set(methods.method_names())
    assert all(row["unavailable"] == [] for row in rows.values())  # everything ships offline
    assert {o["name"] for o in rows["llmlingua2"]["options"]} >= {"rate", "selective", "mode"}


def test_a_method_missing_its_model_says_why(tmp_path) -> None:
    from ctxcomp.hub import ModelHub

    missing = Compressor(ModelHub({"xrag_projector": str(tmp_path)}))
    rows = {row["name"]: row for row in missing.describe_methods()}
    assert rows["xrag"]["unavailable"] and "xrag_projector" in rows["xrag"]["unavailable"][0]
    assert rows["llmlingua2"]["unavailable"] == []


def test_join_orders_are_pinned() -> None:
    relevances = np.array([0.1, 0.9, 0.5, 0.7, 0.3])
    assert join_order(relevances, "original") == [0, 1, 2, 3, 4]
    assert join_order(relevances, "relevance") == [1, 3, 2, 4, 0]
    assert join_order(relevances, "edges") == [1, 2, 0, 4, 3]  # best first, second best last, worst mid
    assert join_order(np.array([0.5, 0.5, 0.5]), "relevance") == [0, 1, 2]  # ties keep the sent order
    assert join_order(np.array([]), "edges") == []


ORDER_DOCUMENTS = (
    Document("weather", "Stockholm will be cloudy tomorrow with light rain in the afternoon."),
    Document("vasa", TEXT),
    Document("museum", "The Vasa Museum in Stockholm shows the ship, which was raised from the harbour."),
    Document("tax", "Swedish income tax is withheld by employers each month."),
)


@pytest.mark.parametrize("method", ["llmlingua2", "exit>llmlingua2", "cascade"])
def test_order_sets_the_documents_and_the_context(compressor, hub, method) -> None:
    from ctxcomp import relevance

    base = CompressRequest("Why did the Vasa sink?", ORDER_DOCUMENTS, method=method, rate=0.8)
    scores = [d.relevance for d in relevance.score(hub, [base])[0]]
    by_relevance = [ORDER_DOCUMENTS[i].id for i in sorted(range(4), key=lambda i: -scores[i])]
    assert by_relevance[0] == "vasa" and by_relevance[-1] in ("weather", "tax")
    expected = {
        "original": [d.id for d in ORDER_DOCUMENTS],
        "relevance": by_relevance,
        "edges": [by_relevance[0], by_relevance[2], by_relevance[3], by_relevance[1]],
    }
    for order, ids in expected.items():
        result = compressor.compress(dataclasses.replace(base, order=order))
        assert [d.id for d in result.documents] == ids, order
        kept = [d.text for d in result.documents if d.text]
        assert result.context == "\n\n".join(kept)
        assert ("order" in result.timings_ms) == (order != "original")


@pytest.mark.parametrize("request_, problem", [
    (CompressRequest("q", ORDER_DOCUMENTS, order="random"), "must be one of original, relevance, edges"),
    (CompressRequest("  ", ORDER_DOCUMENTS, method="llmlingua2", order="edges"), "must not be empty"),
    (CompressRequest("q", ORDER_DOCUMENTS, method="xrag", order="relevance"), "returns vectors"),
    (CompressRequest("q", ORDER_DOCUMENTS, method="exit>xrag", order="relevance"), "returns vectors"),
])
def test_a_bad_order_names_the_field(compressor, request_, problem) -> None:
    with pytest.raises(InvalidRequest) as caught:
        compressor.plan(request_)
    assert caught.value.field == "order" and problem in str(caught.value)


def test_warm_up_runs_real_passages_through_each_method(hub) -> None:
    """A server warms each preloaded method on the embedded sample and on requests of the shipped
    calibration passages: requests a client could send, which every text method plans."""
    from ctxcomp.pipeline import Compressor, Limits, warm_up_requests

    requests = warm_up_requests()
    assert len(requests) == 10 and all(1 <= len(r.documents) <= 5 and r.query for r in requests)
    compressor = Compressor(hub)
    for request in requests:
        compressor.plan(dataclasses.replace(request, method="cascade"), Limits())
    seconds = compressor.warm_up(["cascade"])
    assert set(seconds) == {"cascade"} and seconds["cascade"] > 0


SCORED_DOCUMENTS = (
    Document("kiln", "The kiln at Hollow Farm cracked in 1911 because its clay bricks were fired too fast. "
                     "Rain then seeped into the cracks."),
    Document("mill", "The mill at Hollow Farm ground oats for the village. It closed when the river moved."),
    Document("fair", "The county fair is held each August. Its pie contest is famous."),
)


def test_a_document_scores_the_same_whatever_the_method(compressor, hub) -> None:
    """score is the relevance model's probability for every method; the method's own is method_score."""
    from ctxcomp import relevance

    query = "Why did the kiln at Hollow Farm crack?"
    expected = [d.probability for d in relevance.score(hub, [CompressRequest(query, SCORED_DOCUMENTS)])[0]]
    own = {}
    for method in ("cascade", "recomp_extractive", "llmlingua2:query_agnostic", "recomp_extractive>llmlingua2"):
        name, _, option = method.partition(":")
        options = {"query_aware": False} if option else {}
        result = compressor.compress(CompressRequest(query, SCORED_DOCUMENTS, method=name, rate=0.5, options=options))
        assert [d.score for d in result.documents] == pytest.approx(expected, abs=1e-6), method
        own[method] = [d.method_score for d in result.documents]
    assert own["cascade"] == pytest.approx(expected, abs=1e-6)  # cascade's own score is that probability
    assert own["recomp_extractive"] != pytest.approx(expected, abs=1e-3)


def test_without_a_query_there_is_no_relevance_to_report(compressor) -> None:
    result = compressor.compress(CompressRequest("", SCORED_DOCUMENTS, method="llmlingua2", rate=0.5))
    assert all(d.score == 0.0 for d in result.documents)
    assert any(d.method_score > 0.0 for d in result.documents)


def test_an_html_page_scores_as_its_best_node(compressor, hub) -> None:
    from ctxcomp import relevance

    query = "Why did the kiln at Hollow Farm crack?"
    page = "<html><body><h1>Hollow Farm</h1><p>{}</p><p>{}</p></body></html>".format(
        SCORED_DOCUMENTS[1].text, SCORED_DOCUMENTS[0].text)
    result = compressor.compress(CompressRequest(query, (Document("page", page, format="html"), SCORED_DOCUMENTS[2]),
                                                 method="cascade", rate=0.5))
    alone = relevance.score(hub, [CompressRequest(query, (SCORED_DOCUMENTS[2],))])[0][0].probability
    assert result.documents[1].score == pytest.approx(alone, abs=1e-6)
    assert result.documents[0].score > result.documents[1].score
