"""Recursive-descent parser for MLflow trace filter strings (plus tracetags extensions).

Precedence, loosest first: OR, AND, NOT, clause. Field and comparator rules live in the
tables below; every error is raised through :func:`tracetags.query.lexer.raise_at`.
"""

from __future__ import annotations

import ast as python_ast
import math
import re
import warnings
from collections.abc import Iterable, Sequence
from typing import Final, Literal, NoReturn, TypeAlias

from tracetags.errors import FilterError, FilterSemanticError, FilterSyntaxError
from tracetags.query.ast import (
    And,
    Comparison,
    Entity,
    Expr,
    Field,
    Not,
    Op,
    Or,
    OrderKey,
    Value,
)
from tracetags.query.lexer import RESERVED_KEY_WORDS, Token, TokenType, raise_at, tokenize
from tracetags.schemas import MAX_MILLIS

__all__ = [
    "effective_order",
    "parse_filter",
    "parse_order_by",
    "render",
    "render_order_key",
    "strip_positions",
]

# --- identifiers ---------------------------------------------------------------------------

ENTITY_ALIASES: dict[str, Entity] = {
    "tags": "tag",
    "tag": "tag",
    "metadata": "metadata",
    "request_metadata": "metadata",
    "attributes": "attribute",
    "attribute": "attribute",
    "trace": "attribute",
}
UNSUPPORTED_ENTITIES = frozenset({"span", "feedback", "expectation", "issue"})

NUMERIC_ATTRIBUTES = frozenset({"timestamp_ms", "execution_time_ms", "end_time_ms"})
STRING_ATTRIBUTES = frozenset({"request_id", "status", "client_request_id"})
ATTRIBUTE_ALIASES = {
    "timestamp": "timestamp_ms",
    "execution_time": "execution_time_ms",
    "end_time": "end_time_ms",
}
# MLflow applies these to the lower-cased key of *any* entity (tags.Name is the trace name).
KEY_REWRITES: dict[str, Field] = {
    "name": Field(entity="tag", key="mlflow.traceName"),
    "run_id": Field(entity="metadata", key="mlflow.sourceRun"),
}
# Keys MLflow maps onto data tracetags does not store.
UNSUPPORTED_KEYS = {
    "prompt": "linked prompts (prompt = 'name/version')",
    "text": "span text search",
}
FILTER_ATTRIBUTES = (
    NUMERIC_ATTRIBUTES | STRING_ATTRIBUTES | set(ATTRIBUTE_ALIASES) | set(KEY_REWRITES)
) | set(UNSUPPORTED_KEYS)
ORDER_BY_ATTRIBUTES = (
    NUMERIC_ATTRIBUTES | {"status", "request_id", "experiment_id"} | set(ATTRIBUTE_ALIASES)
) | set(KEY_REWRITES)
NOT_FILTERABLE = {
    "trace_id": "'trace_id' is not filterable; use request_id",
    "experiment_id": "'experiment_id' is not filterable; pass experiment_ids= to scope a search",
}
# Metadata MLflow stores as analytics columns: only equality and presence work on them.
RESERVED_METADATA = frozenset({"mlflow.trace.tokenUsage", "mlflow.trace.cost"})

# --- comparators ---------------------------------------------------------------------------

ValueKind: TypeAlias = Literal["string", "number", "list", "none"]
FieldClass: TypeAlias = Literal["kv", "string_attribute", "numeric_attribute", "reserved"]

_STR: frozenset[ValueKind] = frozenset({"string"})
_NUM: frozenset[ValueKind] = frozenset({"number"})
_STR_NUM: frozenset[ValueKind] = frozenset({"string", "number"})
_LIST: frozenset[ValueKind] = frozenset({"list"})
_NONE: frozenset[ValueKind] = frozenset({"none"})
_PATTERN_OPS: tuple[Op, ...] = ("LIKE", "ILIKE", "RLIKE", "NOT LIKE", "NOT ILIKE", "NOT RLIKE")
_ORDER_OPS: tuple[Op, ...] = ("<", "<=", ">", ">=")

COMPARATORS: dict[FieldClass, dict[Op, frozenset[ValueKind]]] = {
    "kv": {
        "=": _STR_NUM,
        "!=": _STR_NUM,
        **dict.fromkeys(_ORDER_OPS, _NUM),
        **dict.fromkeys(_PATTERN_OPS, _STR),
        "IN": _LIST,
        "NOT IN": _LIST,
        "IS NULL": _NONE,
        "IS NOT NULL": _NONE,
    },
    "string_attribute": {
        "=": _STR,
        "!=": _STR,
        **dict.fromkeys(_PATTERN_OPS, _STR),
        "IN": _LIST,
        "NOT IN": _LIST,
    },
    "numeric_attribute": dict.fromkeys(("=", "!=", *_ORDER_OPS), _STR_NUM),
    "reserved": {"=": _STR, "!=": _STR, "IS NULL": _NONE, "IS NOT NULL": _NONE},
}
OPERATOR_SYMBOLS: dict[str, Op] = {"=": "=", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
PATTERN_KEYWORDS: dict[str, Op] = {"LIKE": "LIKE", "ILIKE": "ILIKE", "RLIKE": "RLIKE"}
NEGATED: dict[Op, Op] = {
    "LIKE": "NOT LIKE",
    "ILIKE": "NOT ILIKE",
    "RLIKE": "NOT RLIKE",
    "IN": "NOT IN",
}
KIND_NAMES: dict[ValueKind, str] = {
    "string": "a quoted string",
    "number": "an unquoted number",
    "list": "a parenthesised list of quoted strings",
    "none": "no value",
}
_QUOTED_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
MAX_DEPTH = 64

_CLAUSE_START = frozenset({TokenType.IDENTIFIER, TokenType.STRING})


def _number(text: str) -> int | float:
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    return float(text)


class _Resolved:
    __slots__ = ("desc", "field", "field_class", "source")

    def __init__(self, field: Field, field_class: FieldClass, desc: str, source: str) -> None:
        self.field = field
        self.field_class = field_class
        self.desc = desc
        self.source = source


def _describe(field: Field, source: str) -> str:
    plain = {"tag": "tag", "metadata": "metadata", "attribute": "attribute"}[field.entity]
    text = f"{plain} {field.key!r}"
    if source in KEY_REWRITES or source.split(".", 1)[-1].lower() in KEY_REWRITES:
        return f"{source} ({text})"
    return text


class _Parser:
    """One parse of one source string (a filter or one order_by key)."""

    def __init__(self, source: str, what: str) -> None:
        self.source = source
        self.what = what
        self.tokens = tokenize(source, what=what)
        self.index = 0
        self.depth = 0
        self.lenient_at: int | None = None
        self.lenient_reason = ""
        self.structural_at: int | None = None

    # --- the chokepoint --------------------------------------------------------------------

    def fail(
        self, reason: str, position: int, error: type[FilterError] = FilterSyntaxError
    ) -> NoReturn:
        raise_at(error, reason, self.source, position, what=self.what)

    # --- token helpers ---------------------------------------------------------------------

    @property
    def current(self) -> Token:
        return self.tokens[self.index]

    def peek(self, offset: int = 1) -> Token:
        return self.tokens[min(self.index + offset, len(self.tokens) - 1)]

    def advance(self) -> Token:
        token = self.current
        if token.type is not TokenType.EOF:
            self.index += 1
        return token

    def at_keyword(self, *words: str) -> bool:
        return self.current.type is TokenType.KEYWORD and self.current.text in words

    def at_clause_start(self) -> bool:
        token = self.current
        if token.type is TokenType.IDENTIFIER:
            return True
        if token.type is TokenType.STRING and token.quote == '"':
            return True
        return token.type is TokenType.LPAREN or self.at_keyword("NOT")

    def describe(self, token: Token) -> str:
        if token.type is TokenType.EOF:
            return "end of filter"
        return repr(self.source[token.start : token.end])

    def unexpected(self, expected: str) -> NoReturn:
        token = self.current
        self.fail(f"Expected {expected}, got {self.describe(token)}", token.start)

    def note_lenient(self, position: int, reason: str) -> None:
        if self.lenient_at is None:
            self.lenient_at, self.lenient_reason = position, reason

    # --- grammar: filter := or EOF ---------------------------------------------------------

    def parse_filter(self) -> Expr | None:
        if all(
            t.type is TokenType.EOF or (t.type is TokenType.KEYWORD and t.text == "AND")
            for t in self.tokens
        ):
            # MLflow treats a filter of bare ANDs as no filter at all.
            return None
        expr = self.parse_or()
        if self.current.type is not TokenType.EOF:
            if self.current.type is TokenType.RPAREN:
                self.fail("Unmatched ')'", self.current.start)
            self.unexpected("AND, OR or end of filter")
        if self.lenient_at is not None and self.structural_at is not None:
            self.fail(
                f"{self.lenient_reason} (tolerated only in a plain AND-list without OR, NOT"
                " or parentheses)",
                self.lenient_at,
            )
        return expr

    def parse_or(self) -> Expr:
        children = [self.parse_and()]
        while self.at_keyword("OR"):
            self.structural_at = self.advance().start
            children.append(self.parse_and())
        return children[0] if len(children) == 1 else Or(children=tuple(_flatten(Or, children)))

    def parse_and(self) -> Expr:
        # MLflow ignores stray ANDs and reads clauses written side by side as AND-ed.
        while self.at_keyword("AND"):
            self.note_lenient(self.advance().start, "Stray AND")
        children = [self.parse_not()]
        while True:
            if self.at_keyword("AND"):
                first = self.advance()
                while self.at_keyword("AND"):
                    self.note_lenient(self.advance().start, "Stray AND")
                if not self.at_clause_start():
                    self.note_lenient(first.start, "Stray AND")
                    break
            elif self.at_clause_start():
                self.note_lenient(self.current.start, "Missing AND between clauses")
            else:
                break
            children.append(self.parse_not())
        return children[0] if len(children) == 1 else And(children=tuple(_flatten(And, children)))

    def parse_not(self) -> Expr:
        if not self.at_keyword("NOT"):
            return self.parse_primary()
        token = self.advance()
        self.structural_at = token.start
        if self.at_keyword("NOT"):
            self.fail(
                "NOT must be followed by a clause or a parenthesised group", self.current.start
            )
        return Not(child=self.parse_primary(), position=token.start)

    def parse_primary(self) -> Expr:
        token = self.current
        if token.type is TokenType.LPAREN:
            self.structural_at = token.start
            self.advance()
            self.depth += 1
            if self.depth > MAX_DEPTH:
                self.fail(f"Parentheses nested deeper than {MAX_DEPTH}", token.start)
            if self.current.type is TokenType.RPAREN:
                self.fail("Empty parentheses", self.current.start)
            expr = self.parse_or()
            closing = self.current
            if closing.type is not TokenType.RPAREN:
                if closing.type is TokenType.EOF:
                    self.fail("Unclosed '('", token.start)
                self.unexpected("AND, OR or ')'")
            self.advance()
            self.depth -= 1
            return expr
        return self.parse_clause()

    # --- clause := identifier comparator [value] -------------------------------------------

    def parse_clause(self) -> Expr:
        token = self.current
        if not self.at_clause_start() or token.type is TokenType.LPAREN:
            if token.type is TokenType.STRING:
                self.fail(
                    "Expected an identifier, got a single-quoted string (quote keys as"
                    " tags.`my key`)",
                    token.start,
                )
            self.unexpected("a clause (an identifier such as tags.env or status)")
        self.advance()
        resolved = self.resolve(token, order_by=False)
        op, op_token = self.parse_comparator(token)
        table = COMPARATORS[resolved.field_class]
        if op not in table:
            takes = f"{_takes(resolved)} {', '.join(table)}"
            self.fail(
                f"Invalid comparator {op!r} for {resolved.desc} ({takes})",
                op_token.start,
                FilterSemanticError,
            )
        value, kind, value_token = self.parse_value(op, op_token)
        return self.check_clause(token, resolved, op, value, kind, value_token)

    def parse_comparator(self, ident: Token) -> tuple[Op, Token]:
        token = self.current
        if token.type is TokenType.OPERATOR:
            self.advance()
            if token.text not in OPERATOR_SYMBOLS:
                self.fail(
                    f"Unknown comparator {token.text!r} (use =, !=, <, <=, >, >=)", token.start
                )
            return OPERATOR_SYMBOLS[token.text], token
        if token.type is TokenType.KEYWORD:
            if token.text in PATTERN_KEYWORDS:
                self.advance()
                return PATTERN_KEYWORDS[token.text], token
            if token.text == "IN":
                self.advance()
                return "IN", token
            if token.text == "NOT":
                following = self.peek()
                if following.type is TokenType.KEYWORD and (
                    following.text in PATTERN_KEYWORDS or following.text == "IN"
                ):
                    self.advance()
                    self.advance()
                    return NEGATED[PATTERN_KEYWORDS.get(following.text, "IN")], token
            if token.text == "IS":
                self.advance()
                if self.at_keyword("NULL"):
                    self.advance()
                    return "IS NULL", token
                if (
                    self.at_keyword("NOT")
                    and self.peek().type is TokenType.KEYWORD
                    and self.peek().text == "NULL"
                ):
                    not_token = self.advance()
                    null_token = self.advance()
                    if self.source[not_token.end : null_token.start] != " ":
                        self.fail(
                            "Write IS NOT NULL with a single space between NOT and NULL"
                            " (MLflow rejects other spacing there)",
                            not_token.end,
                        )
                    return "IS NOT NULL", token
                if self.at_keyword("NOT"):
                    self.advance()
                    self.unexpected("NULL after IS NOT")
                self.unexpected("NULL or NOT NULL after IS")
        name = self.source[ident.start : ident.end]
        self.unexpected(f"a comparator after {name!r}")

    def parse_value(self, op: Op, op_token: Token) -> tuple[Value, ValueKind, Token]:
        token = self.current
        if op in ("IS NULL", "IS NOT NULL"):
            return None, "none", op_token
        if op in ("IN", "NOT IN"):
            return self.parse_list(op_token), "list", token
        if token.type is TokenType.STRING:
            self.advance()
            return token.text, "string", token
        if token.type is TokenType.NUMBER:
            self.advance()
            return _number(token.text), "number", token
        if token.type is TokenType.IDENTIFIER and token.entity is None and not token.quoted:
            self.fail(
                f"Unquoted string value {token.text!r}; put string values in quotes",
                token.start,
            )
        if self.at_keyword("NULL"):
            self.fail("Compare with NULL using IS NULL or IS NOT NULL", token.start)
        if token.type is TokenType.LPAREN:
            self.fail(f"A parenthesised list needs IN or NOT IN, not {op}", token.start)
        self.unexpected(f"a value after {op}")

    def parse_list(self, op_token: Token) -> tuple[str, ...]:
        opening = self.current
        if opening.type is not TokenType.LPAREN:
            self.unexpected(
                f"a parenthesised list after {self.source[op_token.start : opening.start].strip()}"
            )
        depth = 0
        while True:
            token = self.advance()
            if token.type is TokenType.LPAREN:
                depth += 1
            elif token.type is TokenType.RPAREN:
                depth -= 1
                if depth == 0:
                    break
            elif token.type is TokenType.EOF:
                self.fail("Unclosed '(' in list", opening.start)
        text = self.source[opening.start : token.end]
        plain = plain_list(text)
        if plain is not None:
            return plain
        # MLflow evaluates the whole list as a Python literal, escapes and all.
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                parsed = python_ast.literal_eval(text)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError, OverflowError):
            parsed = None
        items = parsed if isinstance(parsed, tuple) else (parsed,)
        if not items or not all(isinstance(item, str) for item in items):
            self.fail("A list must hold one or more quoted strings, e.g. ('a', 'b')", opening.start)
        return tuple(str(item) for item in items)

    # --- semantic checks -------------------------------------------------------------------

    def check_clause(
        self,
        ident: Token,
        resolved: _Resolved,
        op: Op,
        value: Value,
        kind: ValueKind,
        value_token: Token,
    ) -> Comparison:
        table = COMPARATORS[resolved.field_class]
        if kind not in table[op]:
            wanted = " or ".join(KIND_NAMES[k] for k in sorted(table[op]))
            self.fail(
                f"Invalid value for {op!r} on {resolved.desc}:"
                f" expected {wanted}, got {KIND_NAMES[kind]}",
                value_token.start,
                FilterSemanticError,
            )
        if resolved.field_class == "numeric_attribute" and isinstance(value, str):
            if not _QUOTED_NUMBER.fullmatch(value.strip()):
                self.fail(
                    f"Expected a number for {resolved.field.key}, got {value!r}",
                    value_token.start,
                    FilterSemanticError,
                )
            value = _number(value.strip())
        numeric = resolved.field_class == "numeric_attribute"
        if numeric and isinstance(value, int) and abs(value) > MAX_MILLIS:
            # Stored as signed 64-bit integers: a larger one could only fail in the plan.
            self.fail(
                f"Integer out of range for {resolved.field.key} (at most 2**63-1)",
                value_token.start,
                FilterSemanticError,
            )
        bare_timestamp = ident.entity is None and not ident.quoted and ident.text == "timestamp"
        # sqlparse reads a bare `timestamp` as a type name; MLflow then takes only integers.
        if bare_timestamp and (kind != "number" or not isinstance(value, int)):
            self.fail(
                "A bare 'timestamp' compares only with an unquoted integer; use timestamp_ms",
                value_token.start,
                FilterSemanticError,
            )
        return Comparison(field=resolved.field, op=op, value=value, position=ident.start)

    def resolve(self, token: Token, *, order_by: bool) -> _Resolved:
        """Turn an identifier token into a Field, applying MLflow's aliases and rewrites."""
        source = self.source[token.start : token.end]
        if token.type is TokenType.STRING:
            token_key, entity_text, quoted = token.text, None, True
        else:
            token_key, entity_text, quoted = token.text, token.entity, token.quoted
        if entity_text is None:
            if quoted and "." in token_key:
                self.fail(
                    "Quote only the key, not the whole identifier (write tags.`my key`)",
                    token.start,
                    FilterSemanticError,
                )
            entity: Entity = "attribute"
        elif entity_text in ENTITY_ALIASES:
            entity = ENTITY_ALIASES[entity_text]
        elif entity_text in UNSUPPORTED_ENTITIES:
            self.fail(
                f"{entity_text}.<key> is not supported: tracetags stores no spans or assessments",
                token.start,
                FilterSemanticError,
            )
        else:
            hint = (
                " (entity prefixes are lower-case)" if entity_text.lower() in ENTITY_ALIASES else ""
            )
            self.fail(
                f"Unknown entity {entity_text!r}{hint}; valid prefixes are tags., tag.,"
                " metadata., request_metadata., attributes., attribute., trace.",
                token.start,
                FilterSemanticError,
            )
        key = token_key
        if entity == "attribute":
            valid = ORDER_BY_ATTRIBUTES if order_by else FILTER_ATTRIBUTES
            if key not in valid:
                if key in NOT_FILTERABLE and not (order_by and key == "experiment_id"):
                    reason = NOT_FILTERABLE[key]
                    if order_by:
                        reason = f"'{key}' is not orderable; use request_id"
                    self.fail(reason, token.start, FilterSemanticError)
                allowed = ", ".join(sorted(valid - set(UNSUPPORTED_KEYS)))
                verb = "order by" if order_by else "filter on"
                self.fail(
                    f"Unknown attribute {key!r}; you can {verb}: {allowed}"
                    " (or a tag: tags.<key>, metadata: metadata.<key>)",
                    token.start,
                    FilterSemanticError,
                )
        lowered = key.lower()
        if lowered in KEY_REWRITES:
            field = KEY_REWRITES[lowered]
        elif lowered in UNSUPPORTED_KEYS and not (order_by and lowered == "prompt"):
            self.fail(
                f"{source!r} means {UNSUPPORTED_KEYS[lowered]} in MLflow, which tracetags does"
                " not support",
                token.start,
                FilterSemanticError,
            )
        elif lowered == "prompt":
            field = Field(entity="tag", key="mlflow.linkedPrompts")
        elif lowered in ATTRIBUTE_ALIASES:
            field = Field(entity=entity, key=ATTRIBUTE_ALIASES[lowered])
        else:
            field = Field(entity=entity, key=key)
        if field.entity == "attribute":
            field_class: FieldClass = (
                "numeric_attribute" if field.key in NUMERIC_ATTRIBUTES else "string_attribute"
            )
        elif field.entity == "metadata" and field.key in RESERVED_METADATA:
            field_class = "reserved"
        else:
            field_class = "kv"
        return _Resolved(field, field_class, _describe(field, source), source)

    # --- order_by key := identifier [ASC|DESC] ---------------------------------------------

    def parse_order_key(self) -> OrderKey:
        if self.source != self.source.strip():
            self.fail(
                "An order_by key must not start or end with whitespace",
                0 if self.source[:1].isspace() else len(self.source.rstrip()),
            )
        token = self.current
        if token.type is TokenType.EOF:
            self.fail("Empty order_by key", 0)
        if not (
            token.type is TokenType.IDENTIFIER
            or (token.type is TokenType.STRING and token.quote == '"')
        ):
            self.unexpected("an identifier such as timestamp_ms or tags.env")
        self.advance()
        resolved = self.resolve(token, order_by=True)
        ascending = True
        if self.at_keyword("ASC", "DESC"):
            ascending = self.advance().text == "ASC"
        if self.current.type is not TokenType.EOF:
            self.unexpected("ASC, DESC or the end of the order_by key")
        if resolved.field_class == "reserved":
            self.fail(
                f"Cannot order by reserved metadata {resolved.field.key!r}",
                token.start,
                FilterSemanticError,
            )
        return OrderKey(field=resolved.field, ascending=ascending)


def _takes(resolved: _Resolved) -> str:
    if resolved.field_class == "kv":
        return "tags take" if resolved.field.entity == "tag" else "metadata takes"
    if resolved.field_class == "reserved":
        return f"{resolved.field.key} takes"
    return f"{resolved.field.key} takes"


def _flatten(kind: type[And] | type[Or], children: Iterable[Expr]) -> list[Expr]:
    flat: list[Expr] = []
    for child in children:
        if isinstance(child, kind):
            flat.extend(child.children)
        else:
            flat.append(child)
    return flat


# --- public API -----------------------------------------------------------------------------


def parse_filter(filter_string: str | None) -> Expr | None:
    """Parse a search_traces filter string; ``None``/``""`` (or only ANDs) mean no filter.

    Raises FilterSyntaxError or FilterSemanticError (both ValueError) with the position.
    """
    if filter_string is None or filter_string == "":
        return None
    if not isinstance(filter_string, str):
        raise FilterSyntaxError(f"A filter must be a string, got {type(filter_string).__name__}")
    if filter_string.isspace():
        raise_at(FilterSyntaxError, "A filter of only whitespace is not allowed", filter_string, 0)
    return _Parser(filter_string, "filter").parse_filter()


def parse_order_by(order_by: Sequence[str] | None) -> list[OrderKey]:
    """Parse order_by strings (``"<identifier> [ASC|DESC]"``); a key given twice is an error."""
    keys: list[OrderKey] = []
    seen: dict[Field, int] = {}
    for index, text in enumerate(order_by or ()):
        if not isinstance(text, str):
            raise FilterSyntaxError(
                f"order_by[{index}] must be a string, got {type(text).__name__}"
            )
        key = _Parser(text, f"order_by[{index}]").parse_order_key()
        if key.field in seen:
            raise_at(
                FilterSemanticError,
                f"order_by[{index}] repeats the key of order_by[{seen[key.field]}]"
                f" ({key.field.entity} {key.field.key!r})",
                text,
                0,
                what=f"order_by[{index}]",
            )
        seen[key.field] = index
        keys.append(key)
    return keys


TIE_BREAKERS = (
    OrderKey(field=Field(entity="attribute", key="timestamp_ms"), ascending=False),
    OrderKey(field=Field(entity="attribute", key="request_id"), ascending=True),
)


def effective_order(keys: Sequence[OrderKey]) -> list[OrderKey]:
    """The user's keys followed by timestamp_ms DESC and request_id ASC unless already used."""
    used = {key.field for key in keys}
    return [*keys, *(tie for tie in TIE_BREAKERS if tie.field not in used)]


def strip_positions(expr: Expr) -> Expr:
    """The same tree with every position set to -1 (for comparing trees from different text)."""
    if isinstance(expr, Comparison):
        return Comparison(field=expr.field, op=expr.op, value=expr.value)
    if isinstance(expr, Not):
        return Not(child=strip_positions(expr.child))
    return type(expr)(children=tuple(strip_positions(child) for child in expr.children))


# --- rendering ------------------------------------------------------------------------------

_KEY_PART = re.compile(r"[^\W\d]\w*")
_ENTITY_PREFIX: dict[Entity, str] = {
    "tag": "tags",
    "metadata": "metadata",
    "attribute": "attributes",
}
_STRING_QUOTES = "'\""
_KEY_QUOTES = "`\"'"
_QUOTE_BITS = {"'": 1, '"': 2}

# A piece of rendered text: fixed text, or the ways to write one quoted literal (best first).
_Piece: TypeAlias = str | tuple[str, ...]


def _reads_back(literal: str, text: str, *, key: bool) -> bool:
    """True when the lexer reads ``literal`` (as a key after ``tags.`` when ``key``) as one
    token holding exactly ``text``."""
    if literal[0] not in text and not text.endswith("\\"):
        return True  # nothing inside can end or extend the literal
    source = f"tags.{literal}" if key else literal
    try:
        tokens = tokenize(source)
    except FilterError:
        return False
    expected = TokenType.IDENTIFIER if key else TokenType.STRING
    return len(tokens) == 2 and tokens[0].type is expected and tokens[0].text == text


def _quoted(text: str, quotes: str, *, key: bool = False) -> tuple[str, ...]:
    """The ways to write ``text`` as one quoted literal, quotes it does not contain first.

    Nothing is unescaped inside a literal, so a quote character inside survives only where the
    lexer skips it (doubled, or after a backslash) and the text must hold it that way already.
    """
    order = [q for q in quotes if q not in text] + [q for q in quotes if q in text]
    ways = tuple(f"{q}{text}{q}" for q in order if _reads_back(f"{q}{text}{q}", text, key=key))
    if not ways:
        raise ValueError(f"{text!r} cannot be written in the filter language")
    return ways


def _is_plain_key(key: str) -> bool:
    """True when ``tags.<key>`` reads back as ``key`` unquoted: dotted words (parts may be
    empty), none starting with a digit or being a reserved word."""
    return key != "" and all(
        part == ""
        or (
            _KEY_PART.fullmatch(part) is not None
            and not part[0].isdigit()
            and part.upper() not in RESERVED_KEY_WORDS
        )
        for part in key.split(".")
    )


def _key_pieces(field: Field) -> list[_Piece]:
    key = field.key
    if field.entity == "attribute":
        return [key]
    lowered = key.lower()
    if lowered in KEY_REWRITES or lowered in UNSUPPORTED_KEYS or lowered in ATTRIBUTE_ALIASES:
        # MLflow rewrites these keys however they are quoted.
        raise ValueError(f"{field.entity} key {key!r} cannot be written in the filter language")
    prefix = _ENTITY_PREFIX[field.entity]
    if _is_plain_key(key):
        return [f"{prefix}.{key}"]
    return [f"{prefix}.", _quoted(key, _KEY_QUOTES, key=True)]


#: A list of quoted strings without escapes, line breaks or NUL, separated by commas (an
#: optional one last) and Python's blanks: its literal's items are the texts between the
#: quotes.
_PLAIN_ITEM: Final = re.compile(r"'[^'\\\n\r\x00]*'|\"[^\"\\\n\r\x00]*\"")
_BLANK: Final = r"[ \t\f\r\n]*"
_PLAIN_LIST: Final = re.compile(
    rf"\({_BLANK}(?:{_PLAIN_ITEM.pattern})(?:{_BLANK},{_BLANK}(?:{_PLAIN_ITEM.pattern}))*"
    rf"{_BLANK},?{_BLANK}\)"
)


def plain_list(text: str) -> tuple[str, ...] | None:
    """The items of a parenthesised list of plain quoted strings, as ``ast.literal_eval``
    gives them (a page's parse is on the hot path: compiling the text costs tens of
    microseconds); None for any other list (then evaluated as a Python literal)."""
    if _PLAIN_LIST.fullmatch(text) is None:
        return None
    return tuple(item[1:-1] for item in _PLAIN_ITEM.findall(text))


def _python_literal(text: str, quote: str) -> str:
    # MLflow evaluates an IN list as Python literals: escapes keep quotes and backslashes from
    # ending (or, after a backslash-ended literal, running into) anything.
    out = []
    for ch in text:
        if ch in "'\"\\":
            out.append(f"\\x{ord(ch):02x}")
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(repr(ch)[1:-1])
    return quote + "".join(out) + quote


def _list_item(text: str) -> tuple[str, ...]:
    if "'" in text and '"' not in text and "\\" not in text and text.isprintable():
        readable = f'"{text}"'
    else:
        readable = _python_literal(text, "'")
    return tuple(dict.fromkeys((readable, _python_literal(text, "'"), _python_literal(text, '"'))))


def _render_number(value: int | float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "1e999" if value > 0 else "-1e999"
    if math.isnan(value):
        raise ValueError("NaN cannot be written in the filter language")
    return repr(value).replace("e+", "e")


def _comparison_pieces(node: Comparison, out: list[_Piece]) -> None:
    out += _key_pieces(node.field)
    out.append(f" {node.op}")
    value = node.value
    if value is None:
        return
    if isinstance(value, tuple):
        out.append(" (")
        for index, item in enumerate(value):
            if index:
                out.append(", ")
            out.append(_list_item(item))
        out.append(")")
    elif isinstance(value, str):
        out += [" ", _quoted(value, _STRING_QUOTES)]
    else:
        out.append(f" {_render_number(value)}")


_PRECEDENCE = {Or: 1, And: 2, Not: 3, Comparison: 4}


def _expr_pieces(expr: Expr, parent: int, out: list[_Piece]) -> None:
    if isinstance(expr, Comparison):
        _comparison_pieces(expr, out)
        return
    if isinstance(expr, Not):
        grouped = not isinstance(expr.child, Comparison)
        out.append("NOT (" if grouped else "NOT ")
        _expr_pieces(expr.child, 0, out)
        if grouped:
            out.append(")")
        return
    level = _PRECEDENCE[type(expr)]
    if level <= parent:
        out.append("(")
    for index, child in enumerate(expr.children):
        if index:
            out.append(" OR " if isinstance(expr, Or) else " AND ")
        _expr_pieces(child, level, out)
    if level <= parent:
        out.append(")")


def _quote_bits(text: str) -> int:
    return sum(bit for quote, bit in _QUOTE_BITS.items() if quote in text)


def _runs_on(literal: str) -> int:
    """The quote a literal ending in a backslash forbids in everything after it: the lexer
    tries ``\\'`` as part of the string first and would run on to that later quote."""
    if len(literal) >= 3 and literal[-2] == "\\":
        return _QUOTE_BITS.get(literal[-1], 0)
    return 0


def _layout(pieces: Sequence[_Piece]) -> str:
    """Join ``pieces``, picking for each literal the first way that leaves the rest writable.

    Backwards over the pieces, ``choice[i][mask]`` is the way to write piece ``i`` when the
    quotes in ``mask`` are forbidden (None: no way); then forwards from mask 0.
    """
    ways = [(piece,) if isinstance(piece, str) else piece for piece in pieces]
    first = [options[0] for options in ways]
    if not any(_runs_on(way) for way in first):
        return "".join(first)  # nothing forbids anything: the best way of each piece
    writable = [True] * 4
    choices: list[list[int | None]] = []
    for options in reversed(ways):
        choice: list[int | None] = []
        for mask in range(4):
            choice.append(
                next(
                    (
                        index
                        for index, way in enumerate(options)
                        if not _quote_bits(way) & mask and writable[mask | _runs_on(way)]
                    ),
                    None,
                )
            )
        choices.append(choice)
        writable = [c is not None for c in choice]
    if not writable[0]:
        raise ValueError("the literals cannot all be written in the filter language")
    text, mask = [], 0
    for options, choice in zip(ways, reversed(choices), strict=True):
        index = choice[mask]
        assert index is not None
        text.append(options[index])
        mask |= _runs_on(options[index])
    return "".join(text)


def render(expr: Expr | None, *, verify: bool = True) -> str:
    """A canonical filter string for ``expr``; ``parse_filter(render(e))`` gives ``e`` back.

    Every tree :func:`parse_filter` returns can be written. Raises ValueError for a tree no
    text expresses (a string whose quotes can be neither avoided nor kept by the lexer, a key
    MLflow rewrites, NaN). With ``verify=False`` the text is not parsed back (a label for
    explain: a search renders each clause, and parsing it again was a third of its parse).
    """
    if expr is None:
        return ""
    pieces: list[_Piece] = []
    _expr_pieces(expr, 0, pieces)
    text = _layout(pieces)
    if not verify:
        return text
    try:
        back = parse_filter(text)
    except FilterError as exc:
        raise ValueError(f"{expr!r} cannot be written in the filter language") from exc
    if back is None or strip_positions(back) != strip_positions(expr):
        raise ValueError(f"{expr!r} cannot be written in the filter language")
    return text


def render_order_key(key: OrderKey) -> str:
    """The canonical order_by string for ``key`` (``parse_order_by`` gives it back)."""
    return _layout([*_key_pieces(key.field), " ASC" if key.ascending else " DESC"])
