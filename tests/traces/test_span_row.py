"""``SpanRow`` and the ``spans`` table say the same thing: column names in order, which may
be NULL, and the Python type of each value; a column added to one alone fails here."""

from __future__ import annotations

import types
import typing
from typing import Any, get_args, get_origin, get_type_hints

from sqlalchemy import Column, Integer, MetaData, String, Table

from corral.store.schema import spans
from corral.traces.spans import SPAN_DEFAULTS, SpanRow


def _split(hint: Any) -> tuple[Any, bool]:
    """The hint without ``None``, and whether it allows ``None``."""
    if get_origin(hint) in (typing.Union, types.UnionType):
        rest = [a for a in get_args(hint) if a is not type(None)]
        assert len(rest) == 1, f"{hint} is a union of several types"
        return rest[0], True
    return hint, False


def _python_type(column: Column[Any]) -> type:
    """The column's Python type; JSON (``object`` to SQLAlchemy) holds a dict here."""
    python_type = column.type.python_type
    return dict if python_type is object else python_type


def drift(row_type: Any, table: Table) -> list[str]:
    """Every way ``row_type`` and ``table`` disagree, one line each (empty when they agree)."""
    hints = get_type_hints(row_type)
    columns = [str(c.name) for c in table.columns]
    problems = []
    if list(hints) != columns:
        missing = [c for c in columns if c not in hints]
        extra = [k for k in hints if k not in columns]
        problems.append(f"keys differ: missing {missing}, not columns {extra}, or out of order")
    for column in table.columns:
        if column.name not in hints:
            continue
        value_type, optional = _split(hints[column.name])
        if optional != bool(column.nullable):
            problems.append(f"{column.name}: nullable {column.nullable}, Optional {optional}")
        if (get_origin(value_type) or value_type) is not _python_type(column):
            problems.append(f"{column.name}: {value_type} for a {column.type} column")
    return problems


def test_span_row_is_the_spans_table() -> None:
    """Same columns in the same order, ``Optional`` exactly where NULL is allowed, same types."""
    assert drift(SpanRow, spans) == []


def test_a_column_added_to_the_table_alone_is_caught() -> None:
    """The comparison sees a new column, a nullability change and a type change."""
    table = Table(
        "spans",
        MetaData(),
        *(
            Column(c.name, c.type, nullable=c.nullable)
            for c in spans.columns
            if c.name not in ("kind", "attempt")
        ),
        Column("kind", String(16), nullable=True),  # was NOT NULL
        Column("attempt", String(8), nullable=True),  # was an integer
        Column("tenant_tier", Integer, nullable=True),  # new
    )
    found = "\n".join(drift(SpanRow, table))
    assert "'tenant_tier'" in found
    assert "kind: nullable True, Optional False" in found
    assert "attempt: <class 'int'> for a VARCHAR(8) column" in found


def test_the_defaults_have_the_row_keys() -> None:
    """``SPAN_DEFAULTS``, the start of every row built, has exactly ``SpanRow``'s keys."""
    assert list(SPAN_DEFAULTS) == list(get_type_hints(SpanRow))
