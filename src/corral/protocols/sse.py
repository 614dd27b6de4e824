"""Server-sent events, read from bytes that arrive cut anywhere."""

from __future__ import annotations

Event = tuple[bytes, bytes]
"""(event name or ``b""``, data: the ``data:`` lines joined by newlines)."""


class EventReader:
    """Splits an SSE byte stream into whole events, whatever the chunk boundaries.

    Lines may end in ``\\n`` or ``\\r\\n``; comments (``:`` lines, keep-alives)
    and events without data are skipped; ``id:`` and ``retry:`` are ignored.
    """

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[Event]:
        buf = self._buf + chunk if self._buf else chunk
        if b"\r" in buf:
            # A trailing CR may be half of a CRLF whose LF is in the next chunk.
            hold = buf.endswith(b"\r")
            buf = (buf[:-1] if hold else buf).replace(b"\r\n", b"\n") + (b"\r" if hold else b"")
        if b"\n\n" not in buf:
            self._buf = buf
            return []
        *blocks, self._buf = buf.split(b"\n\n")
        return [event for event in map(self.parse, blocks) if event is not None]

    def close(self) -> list[Event]:
        """The last event, if the stream ended without the blank line that ends it."""
        rest, self._buf = self._buf.rstrip(b"\r\n"), b""
        event = self.parse(rest) if rest else None
        return [event] if event is not None else []

    def parse(self, block: bytes) -> Event | None:
        """One block (the lines between blank lines) as an event; None to skip it."""
        return _parse(block)


def _parse(block: bytes) -> Event | None:
    name = b""
    data: list[bytes] = []
    for line in block.split(b"\n"):
        field, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if field == b"data":
            data.append(value)
        elif field == b"event":
            name = value
    if not data:
        return None
    return name, data[0] if len(data) == 1 else b"\n".join(data)
