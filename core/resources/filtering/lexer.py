"""The tokens of an AIP-160 filter; anything that is no token is INVALID_FILTER at its position."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import NoReturn

from core.resources.syntax import fail_at, quote

_TOKEN = re.compile(
    r"(?P<ws>[ \t\r\n]+)|(?P<op><=|>=|!=|=|<|>|:)|(?P<lparen>\()|(?P<rparen>\))|(?P<dot>\.)"
    r"|(?P<star>\*)|(?P<number>-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?(?![A-Za-z0-9_-]))"
    r"|(?P<word>[A-Za-z0-9_][A-Za-z0-9_-]*)|(?P<minus>-)"
)
_ESCAPES = {"\\": "\\", '"': '"', "'": "'", "*": "*", "n": "\n", "t": "\t", "r": "\r"}


def fail(index: int, detail: str) -> NoReturn:
    """Raises INVALID_FILTER for the 0-based `index` (reported 1-based)."""
    fail_at("filter", "INVALID_FILTER", index, detail)


@dataclass(frozen=True, slots=True)
class Token:
    """One token of a filter, where it was written and, for a string, what it means."""

    kind: str  # a group name of _TOKEN, "string" or "end"
    text: str  # as written
    pos: int  # 0-based
    value: str = ""  # unescaped, for strings
    wildcard: bool = False  # a string ending in an unescaped '*'

    def is_word(self, word: str) -> bool:
        return self.kind == "word" and self.text == word


def lex(text: str) -> list[Token]:
    """The tokens of `text`, without whitespace, ending with an "end" token."""
    tokens: list[Token] = []
    i = 0
    while i < len(text):
        if text[i] in "\"'":
            token = _lex_string(text, i)
        elif (m := _TOKEN.match(text, i)) is not None and m.lastgroup is not None:
            token = Token(m.lastgroup, m.group(), i)
        else:
            fail(i, f"unexpected character {quote(text[i])}")
        if token.kind != "ws":
            tokens.append(token)
        i += len(token.text)
    tokens.append(Token("end", "", len(text)))
    return tokens


def _lex_string(text: str, start: int) -> Token:
    closing, i = text[start], start + 1
    chars: list[str] = []
    while i < len(text) and text[i] != closing:
        ch = text[i]
        if unicodedata.category(ch) in ("Cc", "Cs"):
            fail(i, f"unexpected character {quote(ch)} in string")
        if ch == "*":
            if text[i + 1 : i + 2] != closing:
                fail(i, "wildcard '*' is only allowed at the end of a string; escape it as \\*")
            return Token("string", text[start : i + 2], start, "".join(chars), wildcard=True)
        if ch == "\\":
            escape = text[i + 1 : i + 2]
            if escape not in _ESCAPES:
                fail(i, f"invalid escape {quote(text[i : i + 2])} in string")
            ch, i = _ESCAPES[escape], i + 1
        chars.append(ch)
        i += 1
    if i >= len(text):
        fail(start, "unterminated string")
    return Token("string", text[start : i + 1], start, "".join(chars))
