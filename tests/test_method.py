from __future__ import annotations

import pytest

from ctxcomp import methods
from ctxcomp.errors import InvalidRequest
from ctxcomp.method import apply_options, describe_options
from ctxcomp.methods.llmlingua2 import LLMLingua2Config


def test_options_are_coerced_from_json_numbers() -> None:
    config = apply_options(LLMLingua2Config(), {"max_batch_tokens": 4096.0, "force_tokens": ["\n", "?"]})
    assert config.max_batch_tokens == 4096 and isinstance(config.max_batch_tokens, int)
    assert config.force_tokens == ("\n", "?")


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"no_such_option": 1}, "options.no_such_option"),
        ({"max_batch_tokens": 1.5}, "options.max_batch_tokens"),
        ({"aggregation": "median"}, "options.aggregation"),
        ({"force_reserve_digit": "yes"}, "options.force_reserve_digit"),
        ({"rate": 0.0}, "options.rate"),
        ({"force_tokens": "abc"}, "options.force_tokens"),
    ],
)
def test_bad_options_name_the_field(options: dict, field: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        apply_options(LLMLingua2Config(), options)
    assert caught.value.field == field


def test_unknown_method_lists_valid_ones() -> None:
    with pytest.raises(InvalidRequest, match="llmlingua2") as caught:
        methods.method_class("lingua-3000")
    assert caught.value.field == "method"


def test_misspelt_method_and_option_names_get_a_suggestion() -> None:
    with pytest.raises(InvalidRequest, match=r"unknown method 'casacde' \(did you mean 'cascade'\?\)"):
        methods.method_class("casacde")
    with pytest.raises(InvalidRequest, match=r"unknown option \(did you mean 'query_weight'\?\)") as caught:
        apply_options(LLMLingua2Config(), {"query_wieght": 0.5})
    assert caught.value.field == "options.query_wieght"
    with pytest.raises(InvalidRequest) as unrelated:
        methods.method_class("lingua-3000")
    assert "did you mean" not in str(unrelated.value)


def test_every_registered_method_describes_its_options() -> None:
    for name in methods.method_names():
        cls = methods.method_class(name)
        described = describe_options(cls.presets["default"])
        assert described and all(row["help"] for row in described)
