"""Tokenizer for filter strings and order_by keys, plus the one place that raises filter errors.

Literal extents follow the sqlparse rules MLflow relies on (doubled quotes and ``\\'`` do not
end a string; nothing is unescaped), so a token ends exactly where MLflow's ends.
"""

from __future__ import annotations

import enum
import re
from typing import NoReturn

import msgspec

from tracetags.errors import FilterError, FilterSyntaxError

__all__ = ["Token", "TokenType", "raise_at", "tokenize"]


class TokenType(enum.Enum):
    IDENTIFIER = "identifier"
    STRING = "string"
    NUMBER = "number"
    OPERATOR = "operator"
    KEYWORD = "keyword"
    LPAREN = "("
    RPAREN = ")"
    COMMA = ","
    EOF = "end of input"


class Token(msgspec.Struct, frozen=True, kw_only=True):
    """One token; ``start``/``end`` are offsets into the source text.

    Identifiers carry ``entity`` (``None`` when there is no prefix) and ``text`` (the key);
    ``quoted`` says the key was quoted. Strings carry their raw inner text and ``quote``.
    Keywords carry upper-cased text.
    """

    type: TokenType
    text: str
    start: int
    end: int
    entity: str | None = None
    quoted: bool = False
    quote: str = ""


KEYWORDS = frozenset(
    {"AND", "OR", "NOT", "IN", "IS", "NULL", "LIKE", "ILIKE", "RLIKE", "ASC", "DESC"}
)

# sqlparse reads these as keywords even right after a dot, so MLflow rejects them as bare keys.
RESERVED_KEY_WORDS = frozenset({"IN", "AS", "FROM", "CASE", "VALUES", "USING"})

# Same shapes as sqlparse's String.Single / String.Symbol / backtick Name patterns.
_QUOTED = {
    "'": re.compile(r"'(?:''|\\'|[^'])*'"),
    '"': re.compile(r'"(?:""|\\"|[^"])*"'),
    "`": re.compile(r"`(?:``|[^`])*`"),
}
_WORD = re.compile(r"[^\W\d]\w*")
_NUMBER = re.compile(r"-?(?:\d+(?:\.\d+)?[eE]-?\d+|\d+\.\d*|\.\d+|\d+)")
_OPERATOR = re.compile(r"[<>=~!]+")
_PUNCTUATION = {"(": TokenType.LPAREN, ")": TokenType.RPAREN, ",": TokenType.COMMA}


def raise_at(
    error: type[FilterError], reason: str, source: str, position: int, *, what: str = "filter"
) -> NoReturn:
    """Raise ``error`` with ``reason`` and the source shown with a caret under ``position``.

    Every filter and order_by error goes through here. The instance keeps ``reason``,
    ``position`` and ``filter_string`` as attributes.
    """
    position = max(0, min(position, len(source)))
    shown = "".join(" " if not ch.isprintable() else ch for ch in source)
    message = f"{reason} at position {position}:\n  {shown}\n  {' ' * position}^"
    exc = error(message)
    exc.reason = reason  # type: ignore[attr-defined]
    exc.position = position  # type: ignore[attr-defined]
    exc.filter_string = source  # type: ignore[attr-defined]
    exc.source_kind = what  # type: ignore[attr-defined]
    raise exc


class _Lexer:
    def __init__(self, source: str, what: str) -> None:
        self.source = source
        self.what = what
        self.pos = 0
        self.tokens: list[Token] = []

    def fail(self, reason: str, position: int) -> NoReturn:
        raise_at(FilterSyntaxError, reason, self.source, position, what=self.what)

    def run(self) -> list[Token]:
        src = self.source
        if not src.isascii():
            # A mis-decoded byte of a command-line argument arrives as a lone surrogate,
            # which no Redis command can carry: refused here, where it can be pointed at.
            try:
                src.encode()
            except UnicodeEncodeError as exc:
                self.fail("Invalid text: a lone surrogate (not valid Unicode)", exc.start)
        while True:
            while self.pos < len(src) and src[self.pos].isspace():
                self.pos += 1
            if self.pos >= len(src):
                self.tokens.append(Token(type=TokenType.EOF, text="", start=self.pos, end=self.pos))
                return self.tokens
            ch = src[self.pos]
            if ch in _PUNCTUATION:
                self.emit(_PUNCTUATION[ch], ch, self.pos + 1)
            elif ch in "'\"":
                self.string(ch)
            elif ch == "`" or _WORD.match(src, self.pos):
                self.identifier()
            elif ch.isdigit() or (ch in "-." and _NUMBER.match(src, self.pos)):
                self.number()
            elif _OPERATOR.match(src, self.pos):
                match = _OPERATOR.match(src, self.pos)
                assert match is not None
                self.emit(TokenType.OPERATOR, match.group(), match.end())
            else:
                self.fail(f"Unexpected character {ch!r}", self.pos)

    def emit(
        self,
        type_: TokenType,
        text: str,
        end: int,
        *,
        entity: str | None = None,
        quoted: bool = False,
        quote: str = "",
    ) -> None:
        token = Token(
            type=type_,
            text=text,
            start=self.pos,
            end=end,
            entity=entity,
            quoted=quoted,
            quote=quote,
        )
        self.tokens.append(token)
        self.pos = end

    def quoted(self, quote: str, what: str) -> tuple[str, int]:
        match = _QUOTED[quote].match(self.source, self.pos)
        if match is None:
            self.fail(f"Unterminated {what} (missing closing {quote})", self.pos)
        return match.group()[1:-1], match.end()

    def string(self, quote: str) -> None:
        text, end = self.quoted(quote, "string")
        self.emit(TokenType.STRING, text, end, quote=quote)

    def number(self) -> None:
        src = self.source
        match = _NUMBER.match(src, self.pos)
        if match is None:
            self.fail("Invalid number", self.pos)
        end = match.end()
        if end < len(src) and (src[end] == "." or _WORD.match(src, end) or src[end].isdigit()):
            word = re.match(r"[\w.]*", src[self.pos :])
            assert word is not None
            self.fail(f"Invalid number {word.group()!r}", self.pos)
        self.emit(TokenType.NUMBER, match.group(), end)

    def identifier(self) -> None:
        src = self.source
        start = self.pos
        head_quoted = src[start] == "`"
        if head_quoted:
            head, end = self.quoted("`", "quoted name")
        else:
            match = _WORD.match(src, start)
            assert match is not None
            head, end = match.group(), match.end()
        if end >= len(src) or src[end] != ".":
            if not head_quoted and head.upper() in KEYWORDS:
                self.emit(TokenType.KEYWORD, head.upper(), end)
            else:
                self.emit(TokenType.IDENTIFIER, head, end, quoted=head_quoted)
            return
        # entity.key: the identifier splits at the first dot.
        self.pos = end + 1
        if self.pos < len(src) and src[self.pos] in _QUOTED:
            key, key_end = self.quoted(src[self.pos], "quoted key")
            if key_end < len(src) and (src[key_end] == "." or _WORD.match(src, key_end)):
                self.fail(
                    "Unexpected text after a quoted key (quote the whole key instead)", key_end
                )
            self.pos = start
            self.emit(TokenType.IDENTIFIER, key, key_end, entity=head, quoted=True)
            return
        key_start = self.pos
        while True:
            if self.pos < len(src) and src[self.pos].isdigit():
                self.fail(
                    "A key part starting with a digit must be quoted, e.g. tags.`1st`", self.pos
                )
            match = _WORD.match(src, self.pos)
            if match is not None:
                if match.group().upper() in RESERVED_KEY_WORDS:
                    self.fail(
                        f"The key part {match.group()!r} is a reserved word and must be quoted,"
                        f" e.g. tags.`{match.group()}`",
                        self.pos,
                    )
                self.pos = match.end()
            if self.pos < len(src) and src[self.pos] == ".":
                self.pos += 1
                continue
            break
        key_end = self.pos
        self.pos = start
        self.emit(TokenType.IDENTIFIER, src[key_start:key_end], key_end, entity=head)


def tokenize(source: str, *, what: str = "filter") -> list[Token]:
    """Split ``source`` into tokens ending with an EOF token; raise FilterSyntaxError on junk."""
    return _Lexer(source, what).run()
