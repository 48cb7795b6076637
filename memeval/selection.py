"""`-k EXPR`: select evaluations as pytest does, by keywords joined with and/or/not/parentheses.

A bare word matches an item when it is a case-insensitive substring of one of the item's keywords
(its id, method, model, dataset and suite name).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from memeval.errors import UsageError

TOKEN = re.compile(r"\s*(\(|\)|[^\s()]+)")
Matcher = Callable[[set[str]], bool]


def compile_expression(expression: str) -> Matcher:
    tokens = [t for t in TOKEN.findall(expression) if t]
    if not tokens:
        return lambda keywords: True
    parser = _Parser(tokens, expression)
    matcher = parser.parse_or()
    if parser.pos != len(tokens):
        raise UsageError(f"-k {expression!r}: unexpected {tokens[parser.pos]!r}")
    return matcher


class _Parser:
    def __init__(self, tokens: list[str], expression: str):
        self.tokens, self.expression, self.pos = tokens, expression, 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise UsageError(f"-k {self.expression!r}: expression ends too early")
        self.pos += 1
        return token

    def parse_or(self) -> Matcher:
        left = self.parse_and()
        while self.peek() == "or":
            self.take()
            right, prev = self.parse_and(), left
            left = lambda kw, a=prev, b=right: a(kw) or b(kw)  # noqa: E731
        return left

    def parse_and(self) -> Matcher:
        left = self.parse_not()
        while self.peek() == "and":
            self.take()
            right, prev = self.parse_not(), left
            left = lambda kw, a=prev, b=right: a(kw) and b(kw)  # noqa: E731
        return left

    def parse_not(self) -> Matcher:
        if self.peek() == "not":
            self.take()
            inner = self.parse_not()
            return lambda kw: not inner(kw)
        return self.parse_atom()

    def parse_atom(self) -> Matcher:
        token = self.take()
        if token == "(":
            inner = self.parse_or()
            if self.take() != ")":
                raise UsageError(f"-k {self.expression!r}: missing ')'")
            return inner
        if token in (")", "and", "or"):
            raise UsageError(f"-k {self.expression!r}: unexpected {token!r}")
        word = token.lower()
        return lambda kw: any(word in k.lower() for k in kw)
