"""Conversations: verbatim rules, older turns compressed with the documents, errors naming fields."""

from __future__ import annotations

import os

import pytest

from ctxcomp import conversation
from ctxcomp.errors import InvalidRequest
from ctxcomp.types import CompressRequest, Document, Message

HISTORY = (
    Message("system", "You answer questions about ships."),
    Message("user", "When was the Vasa built?"),
    Message("assistant", "The Vasa was built between 1626 and 1628 in Stockholm by Dutch shipbuilders."),
    Message("user", "What is the weather like in Stockholm in November?"),
    Message("assistant", "Stockholm is cold and grey in November, with little daylight and frequent rain showers."),
    Message("user", "Did the Vasa have many cannons on board?"),
    Message("assistant", "Yes: 64 bronze cannons, most of them on two gun decks, which made her top-heavy."),
    Message("user", "Who commissioned her?"),
    Message("assistant", "King Gustavus Adolphus of Sweden ordered the ship."),
    Message("user", "Why did the Vasa sink?"),
)
DOCUMENTS = (Document("d", "The Vasa capsized in 1628 on her maiden voyage, in a light gust of wind."),)


def request(**kwargs) -> CompressRequest:
    return CompressRequest(**{"query": "", "documents": DOCUMENTS, "messages": HISTORY, "rate": 0.5, **kwargs})


def test_verbatim_rule_keeps_system_the_latest_question_and_the_last_exchanges() -> None:
    assert conversation.verbatim_indices(request()) == {0, 7, 8, 9}
    assert conversation.verbatim_indices(request(verbatim_turns=0)) == {0, 9}
    assert conversation.verbatim_indices(request(verbatim_turns=9)) == set(range(10))
    expanded, layout = conversation.expand(request())
    assert expanded.query == "Why did the Vasa sink?"
    assert [d.text for d in expanded.documents[1:]] == [HISTORY[i].content for i in (1, 2, 3, 4, 5, 6)]
    assert all(d.id.startswith("\0") for d in expanded.documents[1:]) and layout.compressed


def test_older_turns_are_compressed_by_relevance_to_the_latest_question(compressor, hub) -> None:
    result = compressor.compress(request(rate=0.4))
    assert [d.id for d in result.documents] == ["d"] and result.context == result.documents[0].text != ""
    assert [m.role for m in result.messages] == [m.role for m in HISTORY]
    assert [m.verbatim for m in result.messages] == [i in (0, 7, 8, 9) for i in range(10)]
    for original, message in zip(HISTORY, result.messages):
        assert message.tokens_before == hub.count_tokens([original.content])[0]
        assert message.text == " ".join(original.content[s.start:s.end] for s in message.kept_spans)
        if message.verbatim:
            assert message.text == original.content
    assert result.messages[4].tokens_after == 0  # the off-topic answer (Stockholm's weather) goes whole
    assert any(m.tokens_after for m in result.messages[1:7])  # on-topic history stays in part
    assert result.tokens_after <= round(0.4 * result.tokens_before)  # one budget over documents and history
    assert "Stockholm is cold" not in result.context  # history is never joined into the documents' context


def test_a_conversation_alone_and_a_query_that_overrides(compressor) -> None:
    alone = compressor.compress(request(documents=(), rate=0.6))
    assert alone.documents == () and alone.context == "" and len(alone.messages) == len(HISTORY)
    explicit = conversation.expand(request(query="How long was the Vasa?"))[0]
    assert explicit.query == "How long was the Vasa?"
    no_user = compressor.compress(request(query="How long was the Vasa?", messages=(Message("system", ""),)))
    assert no_user.prompt.endswith("Question: How long was the Vasa?<|im_end|>\n<|im_start|>assistant\n")  # found by the fuzz
    nothing = compressor.compress(request(query="0", documents=(), messages=(Message("system", ""),)))  # the fuzz, too
    assert nothing.documents == () and nothing.context == ""
    assert nothing.prompt.endswith("<|im_start|>user\n0<|im_end|>\n<|im_start|>assistant\n")  # the question alone
    stable = compressor.compress(request(documents=(), rate=0.6, history_mode="stable", verbatim_turns=1))
    assert stable.documents == () and len(stable.messages) == len(HISTORY)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"messages": (Message("robot", "hi"),)}, "messages[0].role"),
        ({"messages": (Message("assistant", "only an answer"),)}, "messages"),
        ({"verbatim_turns": -1}, "verbatim_turns"),
        ({"method": "xrag"}, "messages"),
        ({"documents": (), "messages": ()}, "documents"),
    ],
)
def test_bad_conversations_name_the_field(compressor, kwargs: dict, field: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        compressor.compress(request(**kwargs))
    assert caught.value.field == field


def test_conversations_travel_over_grpc(client) -> None:
    result = client.compress("", list(DOCUMENTS), messages=[(m.role, m.content) for m in HISTORY], rate=0.5,
                             verbatim_turns=0)
    assert [m.verbatim for m in result.messages] == [i in (0, 9) for i in range(10)]
    assert result.messages[-1].text == "Why did the Vasa sink?"


def test_stable_history_does_not_change_with_later_turns(compressor, hub) -> None:
    """Stable mode: an older answer is compressed against its own question, so the history is the
    same prefix turn after turn; the prompt holds it, the documents, then the question."""
    turn_n = compressor.compress(request(history_mode="stable", verbatim_turns=0, messages=HISTORY[:8]
                                         + (Message("user", "How long was the Vasa?"),)))
    turn_next = compressor.compress(request(history_mode="stable", verbatim_turns=0))
    assert [m.text for m in turn_n.messages[:7]] == [m.text for m in turn_next.messages[:7]]
    assert all(m.verbatim for m in turn_next.messages if m.role in ("user", "system"))
    assert turn_next.messages[2].tokens_after < turn_next.messages[2].tokens_before
    common = os.path.commonprefix([turn_n.prompt, turn_next.prompt])
    assert common.endswith("Who commissioned her?<|im_end|>\n<|im_start|>")  # the whole history up to where they differ
    assert turn_next.prompt.endswith(turn_next.messages[-1].text.join(("Question: ", "<|im_end|>\n<|im_start|>assistant\n")))
    tokenizer = hub.get("downstream_llm", "tokenizer")
    from ctxcomp.kv.chunks import chunk_keys

    ids_n = tokenizer(turn_n.prompt, add_special_tokens=False)["input_ids"]
    ids_next = tokenizer(turn_next.prompt, add_special_tokens=False)["input_ids"]
    shared = next(i for i, (a, b) in enumerate(zip(ids_n, ids_next)) if a != b)
    assert shared > 100  # the history's tokens are the same prefix
    assert chunk_keys("m", ids_n, 32)[: shared // 32] == chunk_keys("m", ids_next, 32)[: shared // 32]


def test_a_conversation_kv_blob_is_its_prompt(compressor, hub, monkeypatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the PyTorch prefill path: fast on CPU
    result = compressor.compress(request(return_kv=True))
    tokenizer = hub.get("downstream_llm", "tokenizer")
    assert result.kv.tokens == len(tokenizer(result.prompt, add_special_tokens=False)["input_ids"])
    assert result.prompt.count("<|im_start|>") == sum(1 for m in result.messages if m.text) + 1
