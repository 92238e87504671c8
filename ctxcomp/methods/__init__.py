"""The method registry: name -> "module:Class", imported only when first used.

A name with ">" is a chain ("exit>llmlingua2"), itself a method
(ctxcomp.methods.chain). Shared code never branches on a method's name: it
asks here for a `ctxcomp.method.Method` and talks to it through that protocol.
"""

from __future__ import annotations

import importlib
from typing import Callable

from ctxcomp.errors import InvalidRequest, did_you_mean, quoted
from ctxcomp.hub import ModelHub
from ctxcomp.method import Method

REGISTRY: dict[str, str] = {
    "cascade": "ctxcomp.methods.cascade:Cascade",
    "llmlingua2": "ctxcomp.methods.llmlingua2:LLMLingua2",
    "exit": "ctxcomp.methods.exit:Exit",
    "recomp_extractive": "ctxcomp.methods.recomp_extractive:RecompExtractive",
    "recomp_abstractive": "ctxcomp.methods.recomp_abstractive:RecompAbstractive",
    "mig": "ctxcomp.methods.mig:MigSelection",
    "xrag": "ctxcomp.methods.xrag:Xrag",
    "comi": "ctxcomp.methods.comi:ComiMerge",
}
DEFAULT_METHOD = "cascade"  # the best measured (docs/performance.md, bench/quality.py)
CHAIN_SEPARATOR = ">"  # "exit>llmlingua2": EXIT first, LLMLingua-2 on what it kept


def method_names() -> list[str]:
    return sorted(REGISTRY)


def is_method_name(name: str) -> bool:
    """A registered method, or a chain of distinct registered methods: the names that may
    become a metrics label (anything a client invents must not)."""
    names = name.split(CHAIN_SEPARATOR)
    return all(n in REGISTRY for n in names) and len(set(names)) == len(names)


def method_class(name: str) -> type[Method]:
    if name not in REGISTRY:
        raise InvalidRequest("method", f"unknown method {quoted(name)}{did_you_mean(name, method_names())}; "
                             f"valid methods: {', '.join(method_names())}")
    module, _, attr = REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def build(name: str, hub: ModelHub, lookup: Callable[[str], Method]) -> Method:
    """A method by name: a registered one, or a chain whose stages come from `lookup`."""
    if CHAIN_SEPARATOR in name:
        from ctxcomp.methods.chain import Chain

        return Chain.parse(name, lookup)
    return method_class(name)(hub)
