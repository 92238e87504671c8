"""Loaded models, shared by all methods of one process and loaded on first use."""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

from ctxcomp import models, settings
from ctxcomp.errors import ModelUnavailable
from ctxcomp.models import precision as encoder_precision
from ctxcomp.tokenization import token_counts

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer
    from spacy.language import Language
    from transformers import PreTrainedTokenizerBase

    from ctxcomp.models.kv_transform import KvTransform
    from ctxcomp.models.registry import LoadedLLM, RelevanceScorer, TokenClassifier
    from ctxcomp.models.xrag_projector import LoadedProjector

_PIECE_MEMO_LIMIT = 500_000


class ModelHub:
    """Loads each model role (and form) at most once, thread-safe, and counts downstream-LLM tokens.

    Roles and their loaders are the one table `ctxcomp.models.registry.ROLES`;
    `overrides` maps a role to a HF id or local path, as the CTXCOMP_* variables do,
    and applies to every form of that role. `device` ("cpu", "cuda", "cuda:N"; default
    CTXCOMP_DEVICE, else cpu) is where the neural roles run, in bf16 on CUDA. `precision`
    (default CTXCOMP_PRECISION, else "auto") is the form an encoder role (token classifier,
    relevance model, sentence encoder) gets when none is asked for: fp32, bf16 or int8 in torch,
    or openvino-fp32 / openvino-int8 compiled by OpenVINO, or on CPU with "auto" the fastest
    of those that load here on one synthetic batch, timed at its first load
    (ctxcomp.models.precision); `precisions` says what was chosen and the times.

    `llm_tokenizers` maps a name to another LLM's tokenizer (HF id, folder or .gguf file): a
    request that names it (`CompressRequest.llm`) has its budget and counts in that tokenizer,
    while the work runs inside `counting(name)`; only the tokenizer is ever loaded.
    """

    def __init__(
        self, overrides: dict[str, str] | None = None, device: str | None = None, precision: str | None = None,
        llm_tokenizers: Mapping[str, str] | None = None,
    ) -> None:
        self.overrides = dict(overrides or {})
        self.llm_tokenizers = dict(llm_tokenizers or {})
        self._counting = threading.local()
        self._named_tokenizers: dict[str, Any] = {}
        self.device = models.registry.check_device(device or settings.from_environment("device"))
        self.precision = encoder_precision.check(precision or settings.from_environment("precision"))
        if self.precision not in ("auto", "fp32", "bf16") and self.device != "cpu":
            raise ValueError(f"precision {self.precision} is for CPUs; on {self.device} the encoders run in bf16 (use auto)")
        self.precisions: dict[str, tuple[str, dict[str, float]]] = {}  # role -> (chosen, probe ms per candidate)
        for role in self.overrides:
            models.registry.role_spec(role)
        self._loaded: dict[tuple[str, str], Any] = {}
        self._lock = threading.RLock()  # re-entrant: a loader may ask for another role
        self._piece_counts: dict[str, dict[str, int]] = {}  # per counting tokenizer

    def get(self, role: str, form: str | None = None) -> Any:
        """The loaded model of a role; `form` picks another form of it ("tokenizer", "int8")."""
        spec = models.registry.role_spec(role)
        if form in (None, "auto") and spec.probe is not None:
            form = self.precision_of(role)
        form = form or next(iter(spec.forms))
        if form not in spec.forms:
            raise ValueError(f"model role {role!r} has no form {form!r}; forms: {', '.join(spec.forms)}")
        with self._lock:
            if (role, form) not in self._loaded:
                loaded = spec.forms[form](self.overrides.get(role), self)
                if form in spec.accelerated:
                    loaded = models.registry.place(loaded, self.device)
                self._loaded[(role, form)] = loaded
            return self._loaded[(role, form)]

    # Typed accessors of the roles the request path uses (`get` serves any role and form).
    def llm(self) -> LoadedLLM:
        return self.get("downstream_llm")

    def relevance(self) -> RelevanceScorer:
        return self.get("relevance")

    def spacy(self) -> Language:
        return self.get("spacy")

    def sentence_encoder(self) -> SentenceTransformer:
        return self.get("sentence_encoder")

    def kv_transform(self) -> KvTransform:
        return self.get("kv_transform")

    def xrag_projector(self) -> LoadedProjector:
        return self.get("xrag_projector")

    def token_classifier(self, role: str = "token_classifier", form: str | None = None) -> TokenClassifier:
        return self.get(role, form)

    def precision_of(self, role: str) -> str:
        """The precision the encoder `role` runs in when none is asked for (see the class doc)."""
        with self._lock:
            if role not in self.precisions:
                spec = models.registry.role_spec(role)
                if self.precision != "auto" or self.device != "cpu" or spec.probe is None:
                    chosen = "fp32" if self.precision == "auto" else self.precision  # on CUDA: fp32 placed in bf16
                    self.precisions[role] = (chosen, {})
                else:
                    medians = self._probe(role, spec.probe)
                    chosen = encoder_precision.choose(medians) if medians else "fp32"
                    timings = {form: round(sum(ms), 2) for form, ms in medians.items()}  # the probe's total per form
                    for other in set(encoder_precision.PRECISIONS) - {chosen}:
                        self._loaded.pop((role, other), None)  # an unused copy is only memory
                    self.precisions[role] = (chosen, timings)
                    logging.getLogger("ctxcomp.hub").info(
                        "%s runs in %s (probe batch: %s)", role, chosen, ", ".join(f"{p} {ms:.1f} ms" for p, ms in timings.items())
                    )
            return self.precisions[role][0]

    def _probe(self, role: str, probe: Any) -> dict[str, list[float]]:
        """Median milliseconds per form at each of precision.PROBE_SHAPES; a form that cannot be
        built or run for this (possibly overridden) model is logged and left out."""
        import torch

        runs = {}
        for form in encoder_precision.PRECISIONS:
            try:
                shapes = [probe(self.get(role, form), rows, tokens) for rows, tokens in encoder_precision.PROBE_SHAPES]
                with torch.inference_mode():
                    shapes[0]()  # fails here, not in the timing, if the form cannot run this model
                runs[form] = shapes
            except ModelUnavailable:
                raise
            except Exception as err:  # noqa: BLE001 - e.g. an override encoder of another shape: not a candidate
                logging.getLogger("ctxcomp.hub").warning("%s: %s form left out of auto (%s: %s)", role, form, type(err).__name__, err)
        return encoder_precision.timed_rounds(runs) if runs else {}

    def load(self, roles: Sequence[str]) -> None:
        """Load the given roles now (server start-up), each in its preload form, so the first
        request pays nothing."""
        for role in roles:
            self.get(role, models.registry.role_spec(role).preload or None)

    def compile_shapes(self) -> None:
        """Build now what the loaded encoders would build on first use of each input shape (the
        fixed-width rows of OpenVINO int8 encoders), so a server's first requests pay none of it."""
        import torch.nn as nn

        from ctxcomp.models.openvino_encoder import _CompiledRows

        with self._lock:
            loaded = list(self._loaded.values())
        for model in loaded:
            fields = getattr(model, "__dict__", {}).values()
            roots = [model] if isinstance(model, nn.Module) else [v for v in fields if isinstance(v, nn.Module)]
            for module in (m for root in roots for m in root.modules()):
                if isinstance(module, _CompiledRows):
                    module.compiled.compile_all_widths()

    def unavailable(self, roles: Sequence[str]) -> list[str]:
        """Why each of these roles cannot load here, without loading it (empty: all can)."""
        reasons = []
        for role in roles:
            try:
                models.registry.role_spec(role).locate(self.overrides.get(role))
            except ModelUnavailable as err:
                reasons.append(str(err))
        return reasons

    def loaded_roles(self) -> set[str]:
        with self._lock:
            return {role for role, _ in self._loaded}

    def loaded_forms(self) -> set[tuple[str, str]]:
        """(role, form) of every model loaded: ("downstream_llm", "model") only once weights are."""
        with self._lock:
            return set(self._loaded)

    @property
    def tokenizer_name(self) -> str:
        return models.resolve("downstream_llm", self.overrides.get("downstream_llm")).location

    @contextlib.contextmanager
    def counting(self, llm: str) -> Iterator[None]:
        """While inside, on this thread, tokens are counted in the tokenizer named `llm` (one of
        `llm_tokenizers`; "" is the downstream LLM's)."""
        if llm and llm not in self.llm_tokenizers:
            raise ValueError(f"no tokenizer named {llm!r}")
        outer = getattr(self._counting, "llm", "")
        self._counting.llm = llm
        try:
            yield
        finally:
            self._counting.llm = outer

    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer counts are in on this thread (see `counting`)."""
        llm = getattr(self._counting, "llm", "")
        if not llm:
            return self.get("downstream_llm", "tokenizer")
        with self._lock:
            if llm not in self._named_tokenizers:
                self._named_tokenizers[llm] = models.registry.load_tokenizer(self.llm_tokenizers[llm])
            return self._named_tokenizers[llm]

    def load_llm_tokenizers(self) -> None:
        """Load every named tokenizer now (server start-up)."""
        for llm in self.llm_tokenizers:
            with self.counting(llm):
                self.tokenizer()

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Token counts of each text in the counting tokenizer (the downstream LLM's unless
        `counting` says otherwise), no special tokens. [N] ints."""
        if not texts:
            return []
        return token_counts(self.tokenizer(), texts)

    def count_piece_tokens(self, pieces: Sequence[str]) -> list[int]:
        """count_tokens for short, often repeated strings (words), memoised.

        Word costs repeat across documents and requests; only unseen pieces go
        to the tokenizer. The memo is bounded and simply restarts when full.
        """
        memo = self._piece_counts.setdefault(getattr(self._counting, "llm", ""), {})
        unseen = list(dict.fromkeys(p for p in pieces if p not in memo))
        if unseen:
            if len(memo) + len(unseen) > _PIECE_MEMO_LIMIT:
                memo.clear()
            memo.update(zip(unseen, self.count_tokens(unseen)))
        return [memo[p] for p in pieces]

    def forget_piece_counts(self) -> None:
        """Drop the memo of count_piece_tokens, so the next text is counted as if never seen (benches
        that time ctxcomp on new documents, as a user's are, clear it after warming up)."""
        self._piece_counts.clear()
