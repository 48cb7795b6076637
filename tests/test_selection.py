import pytest

from memeval.errors import UsageError
from memeval.selection import compile_expression

ITEM = {"canary-loss", "lm.loss", "tiny", "canaries"}


@pytest.mark.parametrize("expr,expected", [
    ("canary", True), ("CANARY", True), ("control", False), ("not control", True), ("canary and lm.", True),
    ("control or tiny", True), ("not (canary or control)", False), ("(control or canary) and not tiny", False),
    ("", True),
])
def test_expressions(expr, expected):
    assert compile_expression(expr)(ITEM) is expected


@pytest.mark.parametrize("expr", ["and", "(canary", "canary or", "canary )"])
def test_malformed_expressions_are_usage_errors(expr):
    with pytest.raises(UsageError):
        compile_expression(expr)
