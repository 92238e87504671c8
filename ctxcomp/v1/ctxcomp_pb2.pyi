from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Document(_message.Message):
    __slots__ = ("id", "text", "metadata", "format")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    id: str
    text: str
    metadata: _containers.ScalarMap[str, str]
    format: str
    def __init__(self, id: _Optional[str] = ..., text: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., format: _Optional[str] = ...) -> None: ...

class CompressRequest(_message.Message):
    __slots__ = ("query", "documents", "method", "rate", "target_tokens", "options", "return_kv", "return_word_labels", "kv_codec", "kv_model", "kv_best_effort", "order", "html_output", "messages", "verbatim_turns", "history_mode", "cache_salt", "llm")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    TARGET_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    RETURN_KV_FIELD_NUMBER: _ClassVar[int]
    RETURN_WORD_LABELS_FIELD_NUMBER: _ClassVar[int]
    KV_CODEC_FIELD_NUMBER: _ClassVar[int]
    KV_MODEL_FIELD_NUMBER: _ClassVar[int]
    KV_BEST_EFFORT_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    HTML_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    VERBATIM_TURNS_FIELD_NUMBER: _ClassVar[int]
    HISTORY_MODE_FIELD_NUMBER: _ClassVar[int]
    CACHE_SALT_FIELD_NUMBER: _ClassVar[int]
    LLM_FIELD_NUMBER: _ClassVar[int]
    query: str
    documents: _containers.RepeatedCompositeFieldContainer[Document]
    method: str
    rate: float
    target_tokens: int
    options: _struct_pb2.Struct
    return_kv: bool
    return_word_labels: bool
    kv_codec: str
    kv_model: str
    kv_best_effort: bool
    order: str
    html_output: bool
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    verbatim_turns: int
    history_mode: str
    cache_salt: str
    llm: str
    def __init__(self, query: _Optional[str] = ..., documents: _Optional[_Iterable[_Union[Document, _Mapping]]] = ..., method: _Optional[str] = ..., rate: _Optional[float] = ..., target_tokens: _Optional[int] = ..., options: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., return_kv: _Optional[bool] = ..., return_word_labels: _Optional[bool] = ..., kv_codec: _Optional[str] = ..., kv_model: _Optional[str] = ..., kv_best_effort: _Optional[bool] = ..., order: _Optional[str] = ..., html_output: _Optional[bool] = ..., messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ..., verbatim_turns: _Optional[int] = ..., history_mode: _Optional[str] = ..., cache_salt: _Optional[str] = ..., llm: _Optional[str] = ...) -> None: ...

class Message(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class MessageResult(_message.Message):
    __slots__ = ("role", "text", "kept_spans", "tokens_before", "tokens_after", "verbatim")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    KEPT_SPANS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_BEFORE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_AFTER_FIELD_NUMBER: _ClassVar[int]
    VERBATIM_FIELD_NUMBER: _ClassVar[int]
    role: str
    text: str
    kept_spans: _containers.RepeatedCompositeFieldContainer[Span]
    tokens_before: int
    tokens_after: int
    verbatim: bool
    def __init__(self, role: _Optional[str] = ..., text: _Optional[str] = ..., kept_spans: _Optional[_Iterable[_Union[Span, _Mapping]]] = ..., tokens_before: _Optional[int] = ..., tokens_after: _Optional[int] = ..., verbatim: _Optional[bool] = ...) -> None: ...

class Span(_message.Message):
    __slots__ = ("start", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: int
    end: int
    def __init__(self, start: _Optional[int] = ..., end: _Optional[int] = ...) -> None: ...

class WordLabel(_message.Message):
    __slots__ = ("start", "end", "score", "kept")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    KEPT_FIELD_NUMBER: _ClassVar[int]
    start: int
    end: int
    score: float
    kept: bool
    def __init__(self, start: _Optional[int] = ..., end: _Optional[int] = ..., score: _Optional[float] = ..., kept: _Optional[bool] = ...) -> None: ...

class DocumentResult(_message.Message):
    __slots__ = ("id", "text", "kept_spans", "tokens_before", "tokens_after", "score", "metadata", "word_labels", "method_score")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    KEPT_SPANS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_BEFORE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_AFTER_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    WORD_LABELS_FIELD_NUMBER: _ClassVar[int]
    METHOD_SCORE_FIELD_NUMBER: _ClassVar[int]
    id: str
    text: str
    kept_spans: _containers.RepeatedCompositeFieldContainer[Span]
    tokens_before: int
    tokens_after: int
    score: float
    metadata: _containers.ScalarMap[str, str]
    word_labels: _containers.RepeatedCompositeFieldContainer[WordLabel]
    method_score: float
    def __init__(self, id: _Optional[str] = ..., text: _Optional[str] = ..., kept_spans: _Optional[_Iterable[_Union[Span, _Mapping]]] = ..., tokens_before: _Optional[int] = ..., tokens_after: _Optional[int] = ..., score: _Optional[float] = ..., metadata: _Optional[_Mapping[str, str]] = ..., word_labels: _Optional[_Iterable[_Union[WordLabel, _Mapping]]] = ..., method_score: _Optional[float] = ...) -> None: ...

class CompressResponse(_message.Message):
    __slots__ = ("method", "documents", "context", "tokens_before", "tokens_after", "ratio", "rate", "timings_ms", "note", "tokenizer", "kv_keys", "kv_bytes", "soft_tokens", "messages", "prompt")
    class TimingsMsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    METHOD_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    TOKENS_BEFORE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_AFTER_FIELD_NUMBER: _ClassVar[int]
    RATIO_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_MS_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FIELD_NUMBER: _ClassVar[int]
    KV_KEYS_FIELD_NUMBER: _ClassVar[int]
    KV_BYTES_FIELD_NUMBER: _ClassVar[int]
    SOFT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    method: str
    documents: _containers.RepeatedCompositeFieldContainer[DocumentResult]
    context: str
    tokens_before: int
    tokens_after: int
    ratio: float
    rate: float
    timings_ms: _containers.ScalarMap[str, float]
    note: str
    tokenizer: str
    kv_keys: _containers.RepeatedScalarFieldContainer[str]
    kv_bytes: int
    soft_tokens: SoftTokens
    messages: _containers.RepeatedCompositeFieldContainer[MessageResult]
    prompt: str
    def __init__(self, method: _Optional[str] = ..., documents: _Optional[_Iterable[_Union[DocumentResult, _Mapping]]] = ..., context: _Optional[str] = ..., tokens_before: _Optional[int] = ..., tokens_after: _Optional[int] = ..., ratio: _Optional[float] = ..., rate: _Optional[float] = ..., timings_ms: _Optional[_Mapping[str, float]] = ..., note: _Optional[str] = ..., tokenizer: _Optional[str] = ..., kv_keys: _Optional[_Iterable[str]] = ..., kv_bytes: _Optional[int] = ..., soft_tokens: _Optional[_Union[SoftTokens, _Mapping]] = ..., messages: _Optional[_Iterable[_Union[MessageResult, _Mapping]]] = ..., prompt: _Optional[str] = ...) -> None: ...

class SoftTokens(_message.Message):
    __slots__ = ("kind", "safetensors", "shape", "dtype", "model_fingerprint", "document_ids")
    KIND_FIELD_NUMBER: _ClassVar[int]
    SAFETENSORS_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_IDS_FIELD_NUMBER: _ClassVar[int]
    kind: str
    safetensors: bytes
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: str
    model_fingerprint: str
    document_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, kind: _Optional[str] = ..., safetensors: _Optional[bytes] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[str] = ..., model_fingerprint: _Optional[str] = ..., document_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class KvChunk(_message.Message):
    __slots__ = ("blob_id", "offset", "data", "total_bytes", "last")
    BLOB_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    blob_id: str
    offset: int
    data: bytes
    total_bytes: int
    last: bool
    def __init__(self, blob_id: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., total_bytes: _Optional[int] = ..., last: _Optional[bool] = ...) -> None: ...

class CompressStreamChunk(_message.Message):
    __slots__ = ("response", "kv")
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    KV_FIELD_NUMBER: _ClassVar[int]
    response: CompressResponse
    kv: KvChunk
    def __init__(self, response: _Optional[_Union[CompressResponse, _Mapping]] = ..., kv: _Optional[_Union[KvChunk, _Mapping]] = ...) -> None: ...

class ListMethodsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MethodOption(_message.Message):
    __slots__ = ("name", "type", "default_json", "help")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_JSON_FIELD_NUMBER: _ClassVar[int]
    HELP_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    default_json: str
    help: str
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., default_json: _Optional[str] = ..., help: _Optional[str] = ...) -> None: ...

class MethodInfo(_message.Message):
    __slots__ = ("name", "description", "options", "models", "available", "reasons")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    options: _containers.RepeatedCompositeFieldContainer[MethodOption]
    models: _containers.RepeatedScalarFieldContainer[str]
    available: bool
    reasons: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., options: _Optional[_Iterable[_Union[MethodOption, _Mapping]]] = ..., models: _Optional[_Iterable[str]] = ..., available: _Optional[bool] = ..., reasons: _Optional[_Iterable[str]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("role", "source", "loaded", "precision", "precision_ms")
    class PrecisionMsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ROLE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    PRECISION_MS_FIELD_NUMBER: _ClassVar[int]
    role: str
    source: str
    loaded: bool
    precision: str
    precision_ms: _containers.ScalarMap[str, float]
    def __init__(self, role: _Optional[str] = ..., source: _Optional[str] = ..., loaded: _Optional[bool] = ..., precision: _Optional[str] = ..., precision_ms: _Optional[_Mapping[str, float]] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_query_chars", "max_documents", "max_document_chars", "max_total_chars", "max_message_bytes", "max_request_tokens")
    MAX_QUERY_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    MAX_DOCUMENT_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOTAL_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_REQUEST_TOKENS_FIELD_NUMBER: _ClassVar[int]
    max_query_chars: int
    max_documents: int
    max_document_chars: int
    max_total_chars: int
    max_message_bytes: int
    max_request_tokens: int
    def __init__(self, max_query_chars: _Optional[int] = ..., max_documents: _Optional[int] = ..., max_document_chars: _Optional[int] = ..., max_total_chars: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., max_request_tokens: _Optional[int] = ...) -> None: ...

class ListMethodsResponse(_message.Message):
    __slots__ = ("methods", "models", "limits", "default_method")
    METHODS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_METHOD_FIELD_NUMBER: _ClassVar[int]
    methods: _containers.RepeatedCompositeFieldContainer[MethodInfo]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    limits: Limits
    default_method: str
    def __init__(self, methods: _Optional[_Iterable[_Union[MethodInfo, _Mapping]]] = ..., models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., default_method: _Optional[str] = ...) -> None: ...
