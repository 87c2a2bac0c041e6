"""Filter and order_by parser: fixture files, exact errors, and hypothesis properties."""

from __future__ import annotations

import subprocess
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.mlflow_runner import ACCEPTS, require_mlflow_python
from tests.support.query_fixtures import decode, rows
from tracetags.errors import FilterError, FilterSemanticError, FilterSyntaxError
from tracetags.query import (
    And,
    Comparison,
    Expr,
    Field,
    Not,
    Or,
    OrderKey,
    effective_order,
    parse_filter,
    parse_order_by,
    render,
    render_order_key,
    strip_positions,
)

ERROR_CLASSES: dict[str, type[FilterError]] = {
    "syntax": FilterSyntaxError,
    "semantic": FilterSemanticError,
}


def caret_message(reason: str, source: str, position: int) -> str:
    shown = "".join(ch if ch.isprintable() else " " for ch in source)
    return f"{reason} at position {position}:\n  {shown}\n  {' ' * position}^"


VALID = rows("valid_filters.txt")
INVALID = rows("invalid_filters.txt")
VALID_ORDER = rows("valid_order_by.txt")
INVALID_ORDER = rows("invalid_order_by.txt")


def test_fixture_files_are_big_enough() -> None:
    assert len(VALID) + len(INVALID) >= 300
    assert {row[0] for row in VALID} == {"core", "ext"}
    assert {row[0] for row in INVALID} == {"both", "ours"}


# --- fixtures -------------------------------------------------------------------------------


@pytest.mark.slow
def test_fixture_kinds_agree_with_mlflow() -> None:
    """core/ext and both/ours are what MLflow 3.17.2 says (it runs in its own venv)."""
    done = subprocess.run(
        [require_mlflow_python(), str(ACCEPTS)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    assert " 0 problem(s)" in done.stdout


@pytest.mark.parametrize(("kind", "text", "canonical"), VALID, ids=[r[1] for r in VALID])
def test_valid_filter(kind: str, text: str, canonical: str) -> None:
    parsed = parse_filter(decode(text))
    if canonical == "<none>":
        assert parsed is None
        return
    assert parsed is not None
    assert render(parsed) == decode(canonical)
    again = parse_filter(render(parsed))
    assert again is not None and strip_positions(again) == strip_positions(parsed)


@pytest.mark.parametrize(
    ("kind", "cls", "position", "text", "reason"), INVALID, ids=[r[3] for r in INVALID]
)
def test_invalid_filter(kind: str, cls: str, position: str, text: str, reason: str) -> None:
    source = decode(text)
    with pytest.raises(FilterError) as info:
        parse_filter(source)
    exc = info.value
    assert type(exc) is ERROR_CLASSES[cls]
    assert vars(exc)["position"] == int(position)
    assert vars(exc)["reason"] == reason
    assert vars(exc)["filter_string"] == source
    assert str(exc) == caret_message(reason, source, int(position))


@pytest.mark.parametrize(
    ("kind", "keys", "canonical"), VALID_ORDER, ids=[r[1] for r in VALID_ORDER]
)
def test_valid_order_by(kind: str, keys: str, canonical: str) -> None:
    parsed = parse_order_by([decode(k) for k in keys.split(" ;; ")])
    assert " ;; ".join(render_order_key(k) for k in parsed) == canonical
    assert parse_order_by([render_order_key(k) for k in parsed]) == parsed


@pytest.mark.parametrize(
    ("kind", "cls", "index", "position", "keys", "reason"),
    INVALID_ORDER,
    ids=[r[4] for r in INVALID_ORDER],
)
def test_invalid_order_by(
    kind: str, cls: str, index: str, position: str, keys: str, reason: str
) -> None:
    items = [decode(k) for k in keys.split(" ;; ")]
    with pytest.raises(FilterError) as info:
        parse_order_by(items)
    exc = info.value
    assert type(exc) is ERROR_CLASSES[cls]
    assert vars(exc)["source_kind"] == f"order_by[{index}]"
    assert vars(exc)["position"] == int(position)
    assert vars(exc)["reason"] == reason


# --- exact messages -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "tags.env > 'x'",
            "Invalid value for '>' on tag 'env': expected an unquoted number, got a quoted"
            " string at position 11:\n  tags.env > 'x'\n             ^",
        ),
        (
            "tags.env ~ 'x'",
            "Unknown comparator '~' (use =, !=, <, <=, >, >=) at position 9:\n"
            "  tags.env ~ 'x'\n           ^",
        ),
        (
            "status IS NULL",
            "Invalid comparator 'IS NULL' for attribute 'status' (status takes =, !=, LIKE,"
            " ILIKE, RLIKE, NOT LIKE, NOT ILIKE, NOT RLIKE, IN, NOT IN) at position 7:\n"
            "  status IS NULL\n         ^",
        ),
        (
            "tags.a = 'x' OR",
            "Expected a clause (an identifier such as tags.env or status), got end of filter"
            " at position 15:\n  tags.a = 'x' OR\n                 ^",
        ),
        (
            "tags.a = 'x' AND OR tags.b = 'y'",
            "Stray AND (tolerated only in a plain AND-list without OR, NOT or parentheses)"
            " at position 13:\n  tags.a = 'x' AND OR tags.b = 'y'\n               ^",
        ),
        (
            "span.name = 'x'",
            "span.<key> is not supported: tracetags stores no spans or assessments at"
            " position 0:\n  span.name = 'x'\n  ^",
        ),
        (
            "tags.a = 'x\nAND b",
            "Unterminated string (missing closing ') at position 9:\n"
            "  tags.a = 'x AND b\n           ^",
        ),
        (
            "trace_id = 'x'",
            "'trace_id' is not filterable; use request_id at position 0:\n  trace_id = 'x'\n  ^",
        ),
    ],
)
def test_exact_message(text: str, message: str) -> None:
    with pytest.raises(FilterError) as info:
        parse_filter(text)
    assert str(info.value) == message


def test_errors_are_value_errors() -> None:
    with pytest.raises(ValueError, match="position 9"):
        parse_filter("tags.a = x")


def test_empty_filter_means_no_filter() -> None:
    assert parse_filter(None) is None
    assert parse_filter("") is None
    with pytest.raises(FilterSyntaxError):
        parse_filter(" \t ")


def test_ast_shape() -> None:
    parsed = parse_filter("name = 'x' OR NOT (status IN ('OK', 'ERROR') AND tags.n >= 3)")
    assert parsed == Or(
        children=(
            Comparison(
                field=Field(entity="tag", key="mlflow.traceName"), op="=", value="x", position=0
            ),
            Not(
                child=And(
                    children=(
                        Comparison(
                            field=Field(entity="attribute", key="status"),
                            op="IN",
                            value=("OK", "ERROR"),
                            position=19,
                        ),
                        Comparison(
                            field=Field(entity="tag", key="n"), op=">=", value=3, position=49
                        ),
                    )
                ),
                position=14,
            ),
        )
    )
    assert isinstance(parsed, Or)
    first = parsed.children[0]
    assert isinstance(first, Comparison) and not first.is_numeric and first.position == 0


def test_numbers_keep_int_or_float() -> None:
    for text, value in [("timestamp_ms > 5", 5), ("timestamp_ms > 5.", 5.0), ("tags.n < 1e3", 1e3)]:
        parsed = parse_filter(text)
        assert isinstance(parsed, Comparison) and parsed.is_numeric
        assert parsed.value == value and type(parsed.value) is type(value)


# --- order_by ---------------------------------------------------------------------------------

TIMESTAMP = Field(entity="attribute", key="timestamp_ms")
REQUEST_ID = Field(entity="attribute", key="request_id")


def test_effective_order_appends_tie_breakers() -> None:
    assert effective_order([]) == [
        OrderKey(field=TIMESTAMP, ascending=False),
        OrderKey(field=REQUEST_ID, ascending=True),
    ]
    keys = parse_order_by(["tags.env DESC"])
    assert effective_order(keys) == [
        OrderKey(field=Field(entity="tag", key="env"), ascending=False),
        OrderKey(field=TIMESTAMP, ascending=False),
        OrderKey(field=REQUEST_ID, ascending=True),
    ]
    keys = parse_order_by(["timestamp ASC"])
    assert effective_order(keys) == [
        OrderKey(field=TIMESTAMP, ascending=True),
        OrderKey(field=REQUEST_ID, ascending=True),
    ]
    keys = parse_order_by(["request_id DESC", "timestamp_ms"])
    assert effective_order(keys) == keys
    assert parse_order_by(None) == []


# --- properties -----------------------------------------------------------------------------

ALL_FILTERS = [decode(r[1]) for r in VALID] + [decode(r[3]) for r in INVALID]
TOKENS = ["AND", "OR", "NOT", "(", ")", "'", '"', "`", ".", ",", "=", "IS", "NULL", "IN", " "]


def parse_and_round_trip(text: str) -> None:
    """Parse ``text``: a FilterError, or a tree that renders to a filter parsing to it again."""
    try:
        parsed = parse_filter(text)
    except FilterError:
        return
    if parsed is None:
        return
    rendered = render(parsed)
    again = parse_filter(rendered)
    assert again is not None and strip_positions(again) == strip_positions(parsed), rendered


def order_by_round_trip(items: list[str]) -> None:
    """Parse ``items``: a FilterError, or keys whose renderings parse to the same keys."""
    try:
        parsed = parse_order_by(items)
    except FilterError:
        return
    assert parse_order_by([render_order_key(key) for key in parsed]) == parsed


@settings(max_examples=250, deadline=None)
@given(st.text(max_size=60))
def test_random_text_never_crashes_and_round_trips(text: str) -> None:
    parse_and_round_trip(text)


@settings(max_examples=250, deadline=None)
@given(st.text(alphabet="tags.env=<>!'\"`()ANDORNTISULKEL ,%\\1.-_e:", max_size=60))
def test_random_filter_like_text_never_crashes_and_round_trips(text: str) -> None:
    parse_and_round_trip(text)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(ALL_FILTERS),
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=200),
            st.sampled_from(["insert", "delete", "replace"]),
            st.one_of(st.sampled_from(TOKENS), st.characters()),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_mutated_filters_never_crash_and_round_trip(
    text: str, edits: list[tuple[int, str, str]]
) -> None:
    for offset, action, piece in edits:
        at = offset % (len(text) + 1)
        if action == "insert":
            text = text[:at] + piece + text[at:]
        elif action == "delete":
            text = text[:at] + text[at + 1 :]
        else:
            text = text[:at] + piece + text[at + 1 :]
    parse_and_round_trip(text)
    order_by_round_trip([text])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=20), max_size=4))
def test_random_order_by_never_crashes_and_round_trips(items: list[str]) -> None:
    order_by_round_trip(items)


REWRITTEN = {"name", "run_id", "prompt", "text", "timestamp", "execution_time", "end_time"}
keys = st.text(alphabet="abcXYZ019 ._-:/`'\"é", max_size=12).filter(
    lambda k: k.lower() not in REWRITTEN
)
strings = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)
kv_fields = st.builds(Field, entity=st.sampled_from(["tag", "metadata"]), key=keys)
numbers = st.one_of(
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=False, allow_infinity=False),
)
# Numeric attributes are signed 64-bit integers: a larger integer is a filter error.
attribute_numbers = st.one_of(
    st.integers(min_value=-(2**63 - 1), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
)
string_ops = st.sampled_from(
    ["=", "!=", "LIKE", "ILIKE", "RLIKE", "NOT LIKE", "NOT ILIKE", "NOT RLIKE"]
)
number_ops = st.sampled_from(["=", "!=", "<", "<=", ">", ">="])
list_ops = st.sampled_from(["IN", "NOT IN"])
lists = st.lists(strings, min_size=1, max_size=3).map(tuple)

kv_comparisons = st.one_of(
    st.builds(Comparison, field=kv_fields, op=string_ops, value=strings),
    st.builds(Comparison, field=kv_fields, op=number_ops, value=numbers),
    st.builds(Comparison, field=kv_fields, op=list_ops, value=lists),
    st.builds(
        Comparison, field=kv_fields, op=st.sampled_from(["IS NULL", "IS NOT NULL"]), value=st.none()
    ),
)
attribute_comparisons = st.one_of(
    st.builds(
        Comparison,
        field=st.sampled_from(["status", "request_id", "client_request_id"]).map(
            lambda k: Field(entity="attribute", key=k)
        ),
        op=st.one_of(string_ops, list_ops),
        value=st.none(),
    ).flatmap(
        lambda c: (lists if c.op in ("IN", "NOT IN") else strings).map(
            lambda v: Comparison(field=c.field, op=c.op, value=v)
        )
    ),
    st.builds(
        Comparison,
        field=st.sampled_from(["timestamp_ms", "execution_time_ms", "end_time_ms"]).map(
            lambda k: Field(entity="attribute", key=k)
        ),
        op=number_ops,
        value=attribute_numbers,
    ),
)


def flat(kind: type[And] | type[Or], children: list[Expr]) -> Expr:
    out: list[Expr] = []
    for child in children:
        out.extend(child.children if isinstance(child, kind) else [child])
    return kind(children=tuple(out))


trees = st.recursive(
    st.one_of(kv_comparisons, attribute_comparisons),
    lambda inner: st.one_of(
        inner.map(lambda child: Not(child=child)),
        st.lists(inner, min_size=2, max_size=3).map(lambda c: flat(And, c)),
        st.lists(inner, min_size=2, max_size=3).map(lambda c: flat(Or, c)),
    ),
    max_leaves=6,
)


def literals(tree: Expr) -> list[str]:
    """The strings a tree holds that the filter text must quote: values and non-plain keys."""
    if isinstance(tree, Not):
        return literals(tree.child)
    if isinstance(tree, (And, Or)):
        return [text for child in tree.children for text in literals(child)]
    keys = [tree.field.key] if tree.field.entity != "attribute" else []
    if isinstance(tree.value, str):
        return [*keys, tree.value]
    return [*keys, *tree.value] if isinstance(tree.value, tuple) else keys


@settings(max_examples=300, deadline=None)
@given(trees)
def test_parse_render_roundtrip(tree: Expr) -> None:
    try:
        text = render(tree)
    except ValueError:
        # Only a literal holding a quote it can neither avoid nor keep, or two literals ending
        # in a backslash (each forbids its quote in everything after it), cannot be written.
        held = literals(tree)
        assert any("'" in s or '"' in s for s in held) or (
            sum(s.endswith("\\") for s in held) >= 2
        ), tree
        return
    parsed = parse_filter(text)
    assert parsed is not None
    assert strip_positions(parsed) == tree


def test_render_refuses_what_it_cannot_write() -> None:
    both = Comparison(field=Field(entity="tag", key="k"), op="=", value='it\'s "x"')
    with pytest.raises(ValueError):
        render(both)
    rewritten = Comparison(field=Field(entity="tag", key="name"), op="=", value="x")
    with pytest.raises(ValueError):
        render(rewritten)


@pytest.mark.parametrize(
    "text",
    [
        "tags.a = '" + "\\'" * 20000,
        "(" * 5000 + "tags.a = 'x'" + ")" * 5000,
        "status IN (" + "(" * 5000 + "'a'" + ")" * 5001,
        "tags.a = 'x' " * 3000,
        "NOT " * 5000 + "tags.a = 'x'",
    ],
)
def test_adversarial_input_is_fast_and_clean(text: str) -> None:
    started = time.perf_counter()
    parse_and_round_trip(text)
    assert time.perf_counter() - started < 2.0


_LIST_CHARS = st.sampled_from(list("ab '\"\\,()\t\n\r\f\x0b\x00\u00a0\u2028é"))


@given(
    items=st.lists(st.lists(_LIST_CHARS, max_size=6).map("".join), min_size=1, max_size=4),
    quotes=st.lists(st.sampled_from(["'", '"']), min_size=4, max_size=4),
    gaps=st.lists(
        st.sampled_from(["", " ", "\t", "\n", "\x0b", "\u00a0", " , ", ",,"]), min_size=6
    ),
    trailing=st.booleans(),
)
@settings(max_examples=500, deadline=None)
def test_a_plain_list_reads_as_its_python_literal(
    items: list[str], quotes: list[str], gaps: list[str], trailing: bool
) -> None:
    """plain_list's fast path gives what ast.literal_eval gives, or stands aside (None)."""
    import ast
    import warnings

    from tracetags.query.parser import plain_list

    body = ",".join(
        f"{gaps[i]}{quotes[i]}{item}{quotes[i]}{gaps[i + 1]}" for i, item in enumerate(items)
    )
    text = f"({body}{',' if trailing else ''}{gaps[-1]})"
    fast = plain_list(text)
    if fast is None:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parsed = ast.literal_eval(text)
    assert fast == (parsed if isinstance(parsed, tuple) else (parsed,))


@pytest.mark.parametrize(
    ("text", "items"),
    [
        ("('a')", ("a",)),
        ("( 'a' ,\"b'c\",\n'',)", ("a", "b'c", "")),
        ("('é\t\u2028x', \"y\")", ("é\t\u2028x", "y")),
        ("('a\\'b')", None),  # an escape: evaluated as a literal
        ("('a' 'b')", None),  # adjacent literals concatenate
        ("('a',\u00a0'b')", None),  # not a Python blank
        ("('a\nb')", None),  # a line break inside quotes
    ],
)
def test_plain_lists_are_read_without_compiling(text: str, items: tuple[str, ...] | None) -> None:
    from tracetags.query.parser import plain_list

    assert plain_list(text) == items
