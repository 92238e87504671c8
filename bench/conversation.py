"""Chat-style RAG over 10 turns: the whole history sent every turn against ctxcomp's conversation path.

    python bench/conversation.py [--quick] [--conversations 12] [--rate 0.33] [--split test] [--record NAME]

One conversation per SQuAD test article (articles with at least `turns` paragraphs that
have questions): turn t asks a question about the t-th of `turns` distinct paragraphs; the
retriever returns that paragraph and two others of the article (shuffled); earlier turns
are in the history as the user's question and an assistant answer (the paragraph's sentence
holding the gold answer). Per turn, over all conversations, in the same run, for three prompts:
  full       everything as is (system, whole history, the three documents, the question)
  relevance  ctxcomp, history_mode "relevance" (older turns judged against the question)
  stable     ctxcomp, history_mode "stable" (older answers against their own question)
each ctxcomp prompt being the result's `prompt` (the chat template over what was kept):
  tokens_sent        downstream-LLM tokens of the prompt
  preservation       the current question's gold answer is still in what is sent
  ttft_ms            median time to the first token's logits on the shipped LLM (this CPU):
                     no_reuse prefills the whole prompt; reuse goes through a chunk store kept
                     across the conversation's turns (ctxcomp.kv.chunks: stored prefix chunks
                     read, only the rest prefilled, new chunks written), as a server does
A full run is written as a result record (bench/results/conversation-SPLIT.json unless named);
`--report RECORD` prints it as the docs show it, every turn.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import Record, add_split_argument, header, run_line, split_paragraphs

from ctxcomp.evaluate import bootstrap_interval
from ctxcomp.kv.chunks import CHUNK_TOKENS, BlobChunks, prefill_with_chunks
from ctxcomp.kv.prefill import prefill
from ctxcomp.kv.store import FileStore
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


def full_prompt(tokenizer, messages: list[Message], documents: list[str]) -> str:
    """The whole conversation, documents in the latest user message (as ctxcomp's prompt puts them)."""
    chat = [{"role": m.role, "content": m.content} for m in messages]
    chat[-1]["content"] = "Documents:\n" + "\n\n".join(documents) + "\n\nQuestion: " + chat[-1]["content"]
    return tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)


def ttft_ms(llm, ids: list[int], store: FileStore | None, chunk_tokens: int = CHUNK_TOKENS) -> float:
    """Time to the first token's logits: a whole prefill, or through the chunk store."""
    started = time.perf_counter()
    if store is None:
        prefill(llm.model, torch.tensor([ids]))
    else:
        prefill_with_chunks(llm, ids, BlobChunks(store, llm.fingerprint, chunk_tokens))
    return (time.perf_counter() - started) * 1000.0


def kept(text: str, answers: tuple[str, ...]) -> float:
    flat = " ".join(text.split())
    return float(any(" ".join(a.split()) in flat for a in answers))


def report(path: Path) -> str:
    """A result record of this bench as a markdown table, every turn."""
    record = json.loads(path.read_text())
    head, turns = record["lines"][0], [line for line in record["lines"] if "turn" in line]
    out = [f"{run_line(record)}; {head['conversations']} conversations of {head['turns']} turns, `{head['method']}` at "
           f"rate {head['rate']}, {head['chunk_tokens']}-token chunks; {head['split']}.", "",
           "| turn | tokens sent full / relevance / stable | answer kept full / relevance / stable [95% CI of the lowest] "
           "| TTFT ms full | TTFT ms relevance | TTFT ms stable |", "|---|---|---|---|---|---|"]
    arms = ("full", "relevance", "stable")
    for line in turns:
        lowest = min(arms, key=lambda arm: line[arm]["preservation"])
        kept = " / ".join(f"{line[arm]['preservation']:.3f}" for arm in arms)
        interval = line[lowest]["interval"]
        tokens = " / ".join(f"{line[arm]['tokens_sent']:.0f}" for arm in arms)
        ttft = " | ".join(f"{line[arm]['ttft_ms_no_reuse']:.0f} / {line[arm]['ttft_ms_reuse']:.0f}" for arm in arms)
        out.append(f"| {line['turn']} | {tokens} | {kept} [{interval[0]:.2f}, {interval[1]:.2f}] | {ttft} |")
    out += ["", "TTFT: median over the conversations, without / with a chunk store kept across the turns."]
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 conversations of 3 turns (under a minute)")
    parser.add_argument("--conversations", type=int, default=12)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--rate", type=float, default=0.33, help="kept share of documents + older history")
    parser.add_argument("--method", default="", help="compression method (default: the server's)")
    parser.add_argument("--chunk-tokens", type=int, default=CHUNK_TOKENS, help="KV chunk size of the reuse arm")
    parser.add_argument("--record", default=None, help="result record name (default conversation-SPLIT; none with --quick)")
    parser.add_argument("--report", type=Path, help="print this result record as the docs show it, and run nothing")
    add_split_argument(parser)
    args = parser.parse_args()
    if args.report:
        print(report(args.report), end="")
        return
    count, turns = (2, 3) if args.quick else (args.conversations, args.turns)
    record = Record("conversation")
    compressor = Compressor()
    llm = compressor.hub.llm()
    chats = conversations(split_paragraphs(args.split), count, turns)
    method = args.method or compressor.default_method
    record.emit(header("conversation", args.split, method=method, rate=args.rate, conversations=len(chats),
                       turns=turns, chunk_tokens=args.chunk_tokens))
    ttft_ms(llm, llm.tokenizer("warm up", add_special_tokens=False)["input_ids"], None)
    arms = ("full", "relevance", "stable")
    with tempfile.TemporaryDirectory() as folder:
        stores = {(arm, c): FileStore(Path(folder) / f"{arm}-{c}") for arm in arms for c in range(len(chats))}
        for turn in range(turns):
            rows: dict[str, list] = {arm: [] for arm in arms}
            for c, chat in enumerate(chats):
                messages, current = history(chat, turn), chat[turn]
                documents = current["documents"]
                prompts = {"full": (full_prompt(llm.tokenizer, messages, documents),
                                    "\n".join(documents + [m.content for m in messages[:-1]]))}
                for mode in ("relevance", "stable"):
                    result = compressor.compress(CompressRequest(
                        "", tuple(Document(str(i), d) for i, d in enumerate(documents)), method=method, rate=args.rate,
                        messages=tuple(messages), history_mode=mode))
                    sent = "\n".join([result.context] + [m.text for m in result.messages[:-1]])
                    prompts[mode] = (result.prompt, sent)
                for arm, (text, sent) in prompts.items():
                    ids = llm.tokenizer(text, add_special_tokens=False)["input_ids"]
                    rows[arm].append((len(ids), kept(sent, current["answers"]), ttft_ms(llm, ids, None),
                                      ttft_ms(llm, ids, stores[(arm, c)], args.chunk_tokens)))
            line: dict = {"turn": turn + 1}
            for arm, values in rows.items():
                hits = [v[1] for v in values]
                line[arm] = {
                    "tokens_sent": round(statistics.mean(v[0] for v in values), 1),
                    "preservation": round(statistics.mean(hits), 3), "interval": bootstrap_interval(hits),
                    "ttft_ms_no_reuse": round(statistics.median(v[2] for v in values), 1),
                    "ttft_ms_reuse": round(statistics.median(v[3] for v in values), 1),
                }
            record.emit(line)
    if not args.quick:
        print(f"result record: {record.write(args.record or f'conversation-{args.split}')}")


if __name__ == "__main__":
    main()
