"""Google's OpenAPI-subset ``Schema`` as JSON Schema (what Chat tools and formats hold)."""

from __future__ import annotations

from typing import Any

# Keys of Google's Schema that are ordering or display hints, not constraints.
_HINTS = frozenset({"propertyOrdering", "property_ordering", "example"})


def openapi_to_json_schema(schema: Any) -> Any:
    """A Google ``Schema`` (``type: "OBJECT"``, ``nullable``) as JSON Schema.

    Type names are lower-cased, ``nullable: true`` adds ``"null"`` to the type, and
    nested schemas (properties, items, anyOf) are converted the same way; every other
    key is kept as it is (both dialects share them).
    """
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _HINTS or key == "nullable":
            continue
        if key == "type" and isinstance(value, str):
            out["type"] = value.lower()
        elif key == "properties" and isinstance(value, dict):
            out[key] = {name: openapi_to_json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties"):
            out[key] = openapi_to_json_schema(value)
        elif key in ("anyOf", "any_of") and isinstance(value, list):
            out["anyOf"] = [openapi_to_json_schema(sub) for sub in value]
        else:
            out[key] = value
    if schema.get("nullable") is True and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out
