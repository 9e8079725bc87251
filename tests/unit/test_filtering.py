"""AIP-160 filters and AIP-132 order_by compiled to SQL for SQLite and PostgreSQL, no database."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.elements import ColumnElement

from core.errors import InvalidArgumentError
from core.resources.filtering import FilterField, FilterLimits, Kind, compile_filter
from core.resources.ordering import Ordering, SortKey, parse_order_by

PROJECT_TYPES = ["MUSIC_CLIP", "VIDEO_EDIT", "AUDIO_EDIT", "IMAGE_EDIT", "CUSTOM"]

projects = sa.Table(
    "projects",
    sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("display_name", sa.String(200)),
    sa.Column("description", sa.String(2000)),
    sa.Column("project_type", sa.String(20)),
    sa.Column("owner", sa.String(200)),
    sa.Column("state", sa.String(10)),
    sa.Column("create_time", sa.DateTime(timezone=True)),
    sa.Column("update_time", sa.DateTime(timezone=True)),
    sa.Column("delete_time", sa.DateTime(timezone=True)),
    sa.Column("labels", sa.JSON().with_variant(postgresql.JSONB(), "postgresql")),
    sa.Column("size", sa.Integer),
    sa.Column("score", sa.Float),
    sa.Column("starred", sa.Boolean),
    sa.Column("local_time", sa.DateTime()),
)
c = projects.c

FIELDS = {
    "display_name": FilterField(c.display_name, Kind.STRING),
    "description": FilterField(c.description, Kind.STRING),
    "project_type": FilterField.enum(c.project_type, PROJECT_TYPES),
    "owner": FilterField(c.owner, Kind.STRING),
    "state": FilterField.enum(c.state, ["ACTIVE", "DELETED"]),
    "create_time": FilterField(c.create_time, Kind.TIMESTAMP),
    "update_time": FilterField(c.update_time, Kind.TIMESTAMP),
    "delete_time": FilterField(c.delete_time, Kind.TIMESTAMP),
    "labels": FilterField(c.labels, Kind.MAP),
    "size": FilterField(c.size, Kind.INT),
    "score": FilterField(c.score, Kind.FLOAT),
    "starred": FilterField(c.starred, Kind.BOOL),
    "local_time": FilterField(c.local_time, Kind.TIMESTAMP),
}
SORTABLE = {"display_name": c.display_name, "create_time": c.create_time, "size": c.size}

SQLITE = sqlite.dialect()
POSTGRES = postgresql.asyncpg.dialect()
DIALECTS = [pytest.param(SQLITE, id="sqlite"), pytest.param(POSTGRES, id="postgresql")]


def sql(expr: ColumnElement[Any], dialect: Dialect = SQLITE) -> tuple[str, dict[str, Any]]:
    compiled = expr.compile(dialect=dialect)
    return str(compiled), dict(compiled.params)


def where(text: str, dialect: Dialect = SQLITE) -> str:
    return sql(compile_filter(text, FIELDS), dialect)[0]


def error(text: str, **kwargs: Any) -> InvalidArgumentError:
    with pytest.raises(InvalidArgumentError) as info:
        compile_filter(text, FIELDS, **kwargs)
    return info.value


# --- what compiles, and to what ------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   ", "\t\n"])
def test_empty_filter_matches_everything(text: str) -> None:
    assert sql(compile_filter(text, FIELDS)) == ("1", {})
    assert sql(compile_filter(text, FIELDS), POSTGRES) == ("true", {})


@pytest.mark.parametrize(
    ("text", "expected", "params"),
    [
        ('display_name = "demo"', "projects.display_name = ?", ["demo"]),
        ("display_name != 'demo'", "projects.display_name != ?", ["demo"]),
        ("display_name = demo", "projects.display_name = ?", ["demo"]),
        ('owner >= "m"', "projects.owner >= ?", ["m"]),
        ("size < 10", "projects.size < ?", [10]),
        ("size >= -3", "projects.size >= ?", [-3]),
        ("score > 1.5e2", "projects.score > ?", [150.0]),
        ("score <= 2", "projects.score <= ?", [2.0]),
        ("starred = true", "projects.starred = ?", [True]),
        ("starred != false", "projects.starred != ?", [False]),
        ("state = ACTIVE", "projects.state = ?", ["ACTIVE"]),
        ('project_type != "MUSIC_CLIP"', "projects.project_type != ?", ["MUSIC_CLIP"]),
        ("delete_time:*", "projects.delete_time IS NOT NULL", []),
        ("description:*", "projects.description IS NOT NULL AND projects.description != ?", [""]),
    ],
)
def test_comparisons_bind_every_value(text: str, expected: str, params: list[Any]) -> None:
    got, bound = sql(compile_filter(text, FIELDS))
    assert got == expected
    assert list(bound.values()) == params


def test_string_escapes_are_decoded() -> None:
    _, params = sql(
        compile_filter(r"""display_name = "a\"b\\c\'d\*\n\t\r" owner = 'it\'s'""", FIELDS)
    )
    assert list(params.values()) == ["a\"b\\c'd*\n\t\r", "it's"]


def test_timestamp_is_converted_to_utc() -> None:
    _, params = sql(compile_filter('create_time >= "2024-05-01T12:30:00.123456789+02:00"', FIELDS))
    assert list(params.values()) == [datetime(2024, 5, 1, 10, 30, 0, 123456, tzinfo=UTC)]


def test_timestamp_for_a_naive_column_is_naive_utc() -> None:
    _, params = sql(compile_filter('local_time < "2024-05-01t12:30:00z"', FIELDS))
    assert list(params.values()) == [datetime(2024, 5, 1, 12, 30)]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_trailing_star_is_an_escaped_case_sensitive_prefix_match(dialect: Dialect) -> None:
    got, params = sql(compile_filter('display_name = "50%_off/x*"', FIELDS), dialect)
    assert "LIKE" in got
    assert "ESCAPE '/'" in got
    assert "substr(projects.display_name" in got
    assert list(params.values()) == ["50/%/_off//x%", 1, 9, "50%_off/x"]


def test_negated_wildcard_is_not_like() -> None:
    got = where('display_name != "demo*"')
    assert got.startswith("NOT (projects.display_name LIKE ? ESCAPE '/' AND substr(")


def test_escaped_star_is_a_literal_star() -> None:
    assert sql(compile_filter(r'display_name = "demo\*"', FIELDS))[1] == {"param_1": "demo*"}


@pytest.mark.parametrize(
    ("dialect", "value", "has"),
    [
        (SQLITE, "CAST(JSON_EXTRACT(projects.labels, ?) AS VARCHAR)", "IS NOT NULL"),
        (POSTGRES, "CAST((projects.labels ->> $1::TEXT) AS VARCHAR)", "IS NOT NULL"),
    ],
    ids=["sqlite", "postgresql"],
)
def test_label_keys_are_bound_parameters(dialect: Dialect, value: str, has: str) -> None:
    got, params = sql(compile_filter('labels.env = "prod"', FIELDS), dialect)
    assert got.startswith(value)
    assert params == {"labels_1": "env", "param_1": "prod"}
    for text in ("labels:env", "labels.env:*", 'labels:"env"'):
        got, params = sql(compile_filter(text, FIELDS), dialect)
        assert got == f"{value} {has}"
        assert params == {"labels_1": "env"}


def test_label_key_may_hold_digits_and_dashes() -> None:
    _, params = sql(compile_filter("labels.team-2 = x labels:123 labels.a_b:*", FIELDS))
    assert [params[k] for k in ("labels_1", "labels_2", "labels_3")] == ["team-2", "123", "a_b"]


# --- precedence ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("size = 1 OR size = 2 size = 3", "({eq} OR {eq}) AND {eq}"),
        ("size = 1 size = 2 OR size = 3", "{eq} AND ({eq} OR {eq})"),
        ("size = 1 AND size = 2 OR size = 3", "{eq} AND ({eq} OR {eq})"),
        ("size = 1 OR size = 2 AND size = 3", "({eq} OR {eq}) AND {eq}"),
        ("(size = 1 AND size = 2) OR size = 3", "{eq} AND {eq} OR {eq}"),
        ("NOT size = 1 OR size = 2", "{ne} OR {eq}"),
        ("-(size = 1 OR size = 2) size = 3", "NOT ({eq} OR {eq}) AND {eq}"),
        ("NOT(size = 1)", "{ne}"),
        ("((((size = 1))))", "{eq}"),
    ],
)
def test_or_binds_tighter_than_and(text: str, expected: str) -> None:
    assert where(text) == expected.format(eq="projects.size = ?", ne="projects.size != ?")


# --- errors with positions -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('display_name = "x")', "unexpected ')' at position 19"),
        ("(size = 1", "unexpected end of filter at position 10"),
        ("()", "unexpected ')' at position 2"),
        ("size = 1 AND", "unexpected end of filter at position 13"),
        ("AND size = 1", "unexpected 'AND' at position 1"),
        ("size = 1 OR OR size = 2", "unexpected 'OR' at position 13"),
        ("NOT NOT size = 1", "unexpected 'NOT' at position 5"),
        ("size", "expected an operator after 'size', got end of filter at position 5"),
        ("size size", "expected an operator after 'size', got 'size' at position 6"),
        ("size =", "unexpected end of filter at position 7"),
        ("size = = 1", "unexpected '=' at position 8"),
        ("size = (1)", "unexpected '(' at position 8"),
        ("size = AND", "unexpected 'AND' at position 8"),
        ("size = 1 .", "unexpected '.' at position 10"),
        ("size == 1", "unexpected '=' at position 7"),
        ("size ~ 1", "unexpected character '~' at position 6"),
        ("size = 1;", "unexpected character ';' at position 9"),
        ("name = 1", "unknown field 'name' at position 1"),
        ("labels.a.b = 1", "unknown field 'labels.a.b' at position 1"),
        ("size.x = 1", "unknown field 'size.x' at position 1"),
        ("1 = size", "unexpected '1' at position 1"),
        ('"size" = 1', """unexpected '"size"' at position 1"""),
        ("size = 1.5", "expected an integer for 'size', got '1.5' at position 8"),
        ("size = ten", "expected an integer for 'size', got 'ten' at position 8"),
        (
            "size = 9223372036854775808",
            "integer '9223372036854775808' is out of range at position 8",
        ),
        ("score = 1e400", "number '1e400' is out of range at position 9"),
        ('score = "1"', """expected a number for 'score', got '"1"' at position 9"""),
        ("starred = True", "expected true or false for 'starred', got 'True' at position 11"),
        ("starred < true", "operator '<' is not valid for bool field 'starred' at position 9"),
        ("state > ACTIVE", "operator '>' is not valid for enum field 'state' at position 7"),
        ("state = active", "unknown value 'active' for 'state', expected one of ACTIVE, DELETED"),
        ('state = "ACT*"', "unknown value 'ACT*' for 'state'"),
        ("display_name = 5", "expected a string for 'display_name', got '5' at position 16"),
        ("display_name: x", "':' on 'display_name' only takes '*' (presence) at position 15"),
        ('display_name < "a*"', "a wildcard '*' only works with '=' or '!=' at position 16"),
        ('display_name = "a*b"', "wildcard '*' is only allowed at the end of a string"),
        ('display_name = "abc', "unterminated string at position 16"),
        ("display_name = 'abc\\'", "unterminated string at position 16"),
        (r'display_name = "\q"', r"invalid escape '\q' in string at position 17"),
        ('display_name = "a\tb"', r"unexpected character '\u0009' in string at position 18"),
        ("create_time > 2024", "expected an RFC 3339 timestamp string for 'create_time'"),
        ('create_time > "2024-01-01"', "expected an RFC 3339 timestamp string for 'create_time'"),
        ('create_time > "2024-02-30T00:00:00Z"', "invalid timestamp '2024-02-30T00:00:00Z'"),
        ('create_time > "9999-12-31T23:59:59-01:00"', "invalid timestamp '9999-12-31T23:59:5"),
        ("create_time: x", "':' on 'create_time' only takes '*' (presence) at position 14"),
        ('labels = "x"', "compare a key of 'labels' as labels.<key> at position 8"),
        ("labels:*", "invalid label key '*', expected [a-z0-9_-]{1,63} at position 8"),
        ("labels.Env = x", "invalid label key 'Env', expected [a-z0-9_-]{1,63} at position 8"),
        ('labels."a b" = x', "invalid label key 'a b'"),
        ("labels." + "k" * 64 + " = x", "invalid label key 'kkkk"),
        ("labels.env: prod", "':' on 'labels.env' only takes '*' (has key) at position 13"),
        ("labels.env < x", "operator '<' is not valid for map field 'labels.env' at position 12"),
        ("labels.env = 1", "expected a string for 'labels.env', got '1' at position 14"),
        ("labels.", "unexpected end of filter at position 8"),
        ("display_name = café", "unexpected character 'é' at position 19"),
        ("size = 1\x00", r"unexpected character '\u0000' at position 9"),
        ("size\u200b= 1", r"unexpected character '\u200b' at position 5"),
        ('display_name = "\ud800"', r"unexpected character '\ud800' in string at position 17"),
    ],
)
def test_malformed_filter_names_the_position(text: str, message: str) -> None:
    exc = error(text)
    assert exc.reason == "INVALID_FILTER"
    assert exc.message.startswith("filter: ")
    assert message in exc.message
    [violation] = exc.violations
    assert violation.field == "filter"
    assert exc.message == f"filter: {violation.description}"
    assert exc.metadata["position"] == re.findall(r"at position (\d+)$", exc.message)[0]


def test_unicode_inside_strings_is_fine() -> None:
    _, params = sql(compile_filter('display_name = "café ☕ \u202e 日本"', FIELDS))
    assert params == {"param_1": "café ☕ \u202e 日本"}


def test_too_long_filter_is_rejected_before_parsing() -> None:
    exc = error("size = 1 " * 300)
    assert exc.message == "filter: longer than 2000 characters at position 2001"


def test_nesting_is_limited() -> None:
    assert where("(" * 16 + "size = 1" + ")" * 16) == "projects.size = ?"
    exc = error("(" * 17 + "size = 1" + ")" * 17)
    assert exc.message == "filter: nesting deeper than 16 at position 17"


def test_ten_thousand_open_parens_give_a_clean_error() -> None:
    exc = error("(" * 10_000, limits=FilterLimits(max_length=100_000))
    assert exc.message == "filter: nesting deeper than 16 at position 17"
    exc = error("-(" * 5_000 + "size = 1", limits=FilterLimits(max_length=100_000))
    assert exc.message == "filter: nesting deeper than 16 at position 34"


def test_comparisons_are_limited() -> None:
    compile_filter(" ".join(["size = 1"] * 64), FIELDS)
    exc = error(" ".join(["size = 1"] * 65))
    assert exc.message == f"filter: more than 64 comparisons at position {64 * 9 + 1}"


def test_limits_can_be_tightened() -> None:
    limits = FilterLimits(max_length=10, max_depth=1, max_comparisons=1)
    assert "longer than 10" in error("size = 1000", limits=limits).message
    assert "nesting deeper than 1 " in error("((size=1))", limits=limits).message
    assert "more than 1 comparisons" in error("size=1 a=1", limits=limits).message


# --- injection ---------------------------------------------------------------------------------

INJECTIONS = [
    "'; DROP TABLE projects; --",
    "x' OR '1'='1",
    '" OR 1=1 --',
    "1; SELECT pg_sleep(10)",
    "$1 ? :name %(x)s",
    "') UNION SELECT * FROM pg_user --",
    "\\'; \\\"",
]


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("payload", INJECTIONS)
def test_injection_strings_are_only_bound_parameters(dialect: Dialect, payload: str) -> None:
    escaped = payload.replace("\\", "\\\\").replace('"', '\\"').replace("*", "\\*")
    quoted = f'"{escaped}"'
    prefix = quoted[:-1] + '*"'
    text = f"display_name = {quoted} OR labels.env = {quoted} OR owner = {prefix}"
    got, params = sql(compile_filter(text, FIELDS), dialect)
    assert payload not in got
    assert "DROP" not in got
    assert "UNION" not in got
    assert payload in params.values()


@pytest.mark.parametrize(
    "text",
    [
        "display_name = x' OR '1'='1",
        "display_name; DROP TABLE projects = 1",
        "labels.\"env') IS NOT NULL OR ('1\" = x",
        'labels:"a\'"',
        "display_name) OR (1 = 1",
        "state = ACTIVE OR 1=1",
        "size = 1 UNION SELECT 1",
    ],
)
def test_injection_through_names_or_syntax_is_rejected(text: str) -> None:
    assert error(text).reason == "INVALID_FILTER"


# --- properties --------------------------------------------------------------------------------

SOUP = [
    *FIELDS,
    "labels.env",
    "labels.team-2",
    "labels.Bad",
    "labels",
    "nope",
    ".",
    "env",
    "ACTIVE",
    "DELETED",
    "MUSIC_CLIP",
    "=",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    ":",
    "AND",
    "OR",
    "NOT",
    "-",
    "(",
    ")",
    "*",
    '"demo*"',
    "'x'",
    '"a\\"b"',
    '"',
    "'",
    "\\",
    "1",
    "-2.5",
    "1e999",
    "99999999999999999999",
    "true",
    "false",
    '"2024-01-01T00:00:00Z"',
    '"2024-13-01T00:00:00Z"',
    "\x00",
    "é",
    ";",
    ",",
    "%",
    "_",
]


def outcome(text: str) -> ColumnElement[bool] | InvalidArgumentError:
    try:
        return compile_filter(text, FIELDS)
    except InvalidArgumentError as exc:
        return exc


def check_compiles_or_rejects(text: str) -> None:
    result = outcome(text)  # anything but InvalidArgumentError propagates and fails
    if isinstance(result, InvalidArgumentError):
        assert result.reason == "INVALID_FILTER"
        [violation] = result.violations
        assert violation.field == "filter"
        position = int(re.findall(r"at position (\d+)$", result.message)[0])
        assert 1 <= position <= len(text) + 1
        return
    for dialect in (SQLITE, POSTGRES):
        sql(result, dialect)


RANDOM_TEXT = st.one_of(
    st.text(max_size=200),
    st.text(st.characters(categories=["Cs", "Cc", "Cf", "Zs", "P", "S"]), max_size=50),
    st.text(alphabet="()\"'\\*-:=<>!.,; aA1eE_\t", max_size=100),
)


@settings(max_examples=300, deadline=None)
@given(RANDOM_TEXT)
def test_random_text_compiles_or_is_invalid_argument(text: str) -> None:
    check_compiles_or_rejects(text)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(SOUP), st.sampled_from(["", " ", "  "])), max_size=40))
def test_token_soup_compiles_or_is_invalid_argument(parts: list[tuple[str, str]]) -> None:
    check_compiles_or_rejects("".join(token + gap for token, gap in parts))


COMPARISONS = st.sampled_from(
    [
        'display_name = "demo*"',
        "state = ACTIVE",
        "size >= 3",
        "score < 1.5",
        "starred = true",
        'create_time > "2024-01-01T00:00:00Z"',
        "labels.env = prod",
        "labels:canary",
        "delete_time:*",
    ]
)
VALID = st.recursive(
    COMPARISONS,
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from([" AND ", " OR ", " "]), inner).map("".join),
        inner.map(lambda e: f"({e})"),
        inner.map(lambda e: f"NOT ({e})"),
        inner.map(lambda e: f"-({e})"),
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(VALID)
def test_well_formed_filters_compile_on_both_dialects(text: str) -> None:
    expr = compile_filter(text, FIELDS, limits=FilterLimits(max_depth=64))
    for dialect in (SQLITE, POSTGRES):
        assert "demo" not in sql(expr, dialect)[0]


# --- order_by ----------------------------------------------------------------------------------


def test_order_by_gives_clauses_and_normalized_keys() -> None:
    ordering = parse_order_by(" display_name DESC ,create_time, size asc", SORTABLE)
    assert ordering.keys == (
        SortKey("display_name", descending=True),
        SortKey("create_time"),
        SortKey("size"),
    )
    assert [str(clause) for clause in ordering.clauses] == [
        "projects.display_name DESC",
        "projects.create_time ASC",
        "projects.size ASC",
    ]
    assert ordering.text == "display_name desc, create_time, size"
    assert list(ordering) == list(ordering.keys)
    assert len(ordering) == 3
    assert ordering[-1] == SortKey("size")


@pytest.mark.parametrize("text", ["", "  "])
def test_empty_order_by_is_empty(text: str) -> None:
    ordering = parse_order_by(text, SORTABLE)
    assert ordering == Ordering((), ())
    assert not ordering


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name", "unknown field 'name' at position 1"),
        ("size, owner desc", "unknown field 'owner' at position 7"),
        ("size up", "invalid direction 'up', expected 'asc' or 'desc' at position 6"),
        ("size desc asc", "unexpected 'asc' at position 11"),
        ("size,", "expected a field name at position 6"),
        ("size,,create_time", "expected a field name at position 6"),
        (",size", "expected a field name at position 1"),
        ("size, size desc", "field 'size' appears twice at position 7"),
        ("size\x00", r"unknown field 'size\u0000' at position 1"),
        ("size " + "x" * 2000, "longer than 1000 characters at position 1001"),
    ],
)
def test_bad_order_by_names_the_position(text: str, message: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        parse_order_by(text, SORTABLE)
    exc = info.value
    assert exc.reason == "INVALID_ORDER_BY"
    assert exc.message == f"order_by: {message}"
    assert [v.field for v in exc.violations] == ["order_by"]


@settings(max_examples=300, deadline=None)
@given(
    st.text(max_size=60) | st.lists(st.sampled_from([*SORTABLE, "desc", "asc", ","])).map(" ".join)
)
def test_random_order_by_parses_or_is_invalid_argument(text: str) -> None:
    try:
        ordering = parse_order_by(text, SORTABLE)
    except InvalidArgumentError as exc:
        reason = exc.reason
    else:
        reason = "OK"
        assert len(ordering.clauses) == len(ordering.keys)
    assert reason in ("OK", "INVALID_ORDER_BY")


# --- field specs -------------------------------------------------------------------------------


def test_enum_fields_need_values_and_others_take_none() -> None:
    with pytest.raises(ValueError, match="values are required"):
        FilterField(c.state, Kind.ENUM)
    with pytest.raises(ValueError, match="values are required"):
        FilterField(c.owner, Kind.STRING, frozenset({"x"}))
