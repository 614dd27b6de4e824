"""What request bodies share: text that reaches the store is storable."""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, ConfigDict, model_validator


class Storable(BaseModel):
    """A body whose text reaches the store: no NUL characters, no lone surrogates, and no
    field it does not declare."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _storable(self) -> Self:
        for name, value in self:
            if isinstance(value, str) and ("\x00" in value or not _encodes(value)):
                raise ValueError(f"{name} may not contain NUL characters or lone surrogates")
        return self


def _encodes(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True
