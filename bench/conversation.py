"""Chat-style RAG over 10 turns: the whole history sent every turn against ctxcomp's conversation path.

    python bench/conversation.py [--quick] [--conversations 12] [--rate 0.33] [--split test]

One conversation per SQuAD test article (articles with at least `turns` paragraphs that
have questions): turn t asks a question about the t-th of `turns` distinct paragraphs; the
retriever returns that paragraph and two others of the article (shuffled); earlier turns
are in the history as the user's question and an assistant answer (the paragraph's sentence
holding the gold answer). Per turn, over all conversations, in the same run:
  tokens_sent      system + history + documents + question, downstream-LLM tokens:
                   full (everything as is) and ctxcomp (messages= with the documents, `rate`)
  preservation     the current question's gold answer is still in what is sent
  ttft_ms          median prefill of the chat-templated prompt through the shipped LLM on this
                   CPU (one forward pass = time to first token), full and ctxcomp, without KV reuse
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import time

import torch
from common import add_split_argument, header, split_paragraphs

from ctxcomp.evaluate import bootstrap_interval
from ctxcomp.pipeline import Compressor
from ctxcomp.types import CompressRequest, Document, Message

SYSTEM = "You are a helpful assistant. Answer the user's question from the documents and the conversation."


def conversations(paragraphs, count: int, turns: int, seed: int = 0) -> list[list[dict]]:
    """Each conversation: `turns` dicts with question, answers, answer_sentence, documents."""
    rng = random.Random(seed)
    by_article: dict[str, list] = {}
    for p in paragraphs:
        if p.questions:
            by_article.setdefault(p.article, []).append(p)
    out = []
    for article in sorted(a for a, ps in by_article.items() if len(ps) >= turns + 2)[:count]:
        chosen = rng.sample(by_article[article], turns)
        conversation = []
        for p in chosen:
            q = rng.choice(p.questions)
            others = rng.sample([o for o in by_article[article] if o is not p], 2)
            docs = [p, *others]
            rng.shuffle(docs)
            conversation.append({
                "question": q.text, "answers": q.answers, "answer_sentence": answer_sentence(p.context, q.answers),
                "documents": [d.context for d in docs],
            })
        out.append(conversation)
    return out


def answer_sentence(context: str, answers: tuple[str, ...]) -> str:
    for sentence in re.split(r"(?<=[a-z0-9]{3}[.!?])\s+(?=[A-Z])", context):
        if any(a in sentence for a in answers):
            return sentence
    return answers[0]


def history(conversation: list[dict], turn: int) -> list[Message]:
    messages = [Message("system", SYSTEM)]
    for past in conversation[:turn]:
        messages += [Message("user", past["question"]), Message("assistant", past["answer_sentence"])]
    return messages + [Message("user", conversation[turn]["question"])]


def prompt_ids(tokenizer, messages: list[tuple[str, str]], documents: list[str]) -> list[int]:
    """The chat-templated prompt: documents in the system message, then the conversation."""
    chat = [{"role": role, "content": content} for role, content in messages]
    chat[0] = {"role": "system", "content": chat[0]["content"] + "\n\nDocuments:\n" + "\n\n".join(documents)}
    return tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=False)


@torch.inference_mode()
def ttft_ms(model, ids: list[int]) -> float:
    started = time.perf_counter()
    model(torch.tensor([ids]))
    return (time.perf_counter() - started) * 1000.0


def kept(text: str, answers: tuple[str, ...]) -> float:
    flat = " ".join(text.split())
    return float(any(" ".join(a.split()) in flat for a in answers))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 conversations of 4 turns (under a minute)")
    parser.add_argument("--conversations", type=int, default=12)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--rate", type=float, default=0.33, help="kept share of documents + older history")
    parser.add_argument("--method", default="", help="compression method (default: the server's)")
    add_split_argument(parser)
    args = parser.parse_args()
    count, turns = (2, 4) if args.quick else (args.conversations, args.turns)
    compressor = Compressor()
    llm = compressor.hub.get("downstream_llm")
    chats = conversations(split_paragraphs(args.split), count, turns)
    method = args.method or compressor.default_method
    print(json.dumps(header("conversation", args.split, method=method, rate=args.rate, conversations=len(chats),
                            turns=turns)), flush=True)
    ttft_ms(llm.model, prompt_ids(llm.tokenizer, [("system", SYSTEM), ("user", "warm up")], ["warm up"]))
    for turn in range(turns):
        rows = {"full": [], "ctxcomp": []}
        for chat in chats:
            messages, current = history(chat, turn), chat[turn]
            documents = current["documents"]
            full_ids = prompt_ids(llm.tokenizer, [(m.role, m.content) for m in messages], documents)
            rows["full"].append((len(full_ids), kept("\n".join(documents + [m.content for m in messages[:-1]]),
                                                     current["answers"]), ttft_ms(llm.model, full_ids)))
            result = compressor.compress(CompressRequest(
                "", tuple(Document(str(i), d) for i, d in enumerate(documents)), method=method, rate=args.rate,
                messages=tuple(messages)))
            sent_messages = [(m.role, m.text) for m in result.messages if m.text]
            sent_documents = [d.text for d in result.documents if d.text]
            ids = prompt_ids(llm.tokenizer, sent_messages, sent_documents)
            sent_text = "\n".join(sent_documents + [text for _, text in sent_messages[:-1]])
            rows["ctxcomp"].append((len(ids), kept(sent_text, current["answers"]), ttft_ms(llm.model, ids)))
        line = {"turn": turn + 1}
        for name, values in rows.items():
            hits = [v[1] for v in values]
            line[name] = {
                "tokens_sent": round(statistics.mean(v[0] for v in values), 1),
                "preservation": round(statistics.mean(hits), 3), "interval": bootstrap_interval(hits),
                "ttft_ms": round(statistics.median(v[2] for v in values), 1),
            }
        line["token_ratio"] = round(line["full"]["tokens_sent"] / line["ctxcomp"]["tokens_sent"], 2)
        line["ttft_speedup"] = round(line["full"]["ttft_ms"] / line["ctxcomp"]["ttft_ms"], 2)
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
