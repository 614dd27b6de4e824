"""Offline token counting: no tokenizer files, no downloads.

Two functions with different jobs. ``count_tokens`` is a deterministic,
realistic count (close to BPE tokenizers on English prose and code) used by
the simulator to report usage. ``estimate_tokens_upper`` is a cheap upper
bound over raw bytes for admission, where overestimating is safe and speed
matters.
"""

from __future__ import annotations

import re

_PIECE = re.compile(r"[A-Za-z]+|\d{1,3}|[^\sA-Za-z\d]|\s+")


def count_tokens(text: str) -> int:
    """Count tokens the way a BPE tokenizer roughly would.

    Words cost one token per four letters (at least one), digits go in groups
    of three, each punctuation or symbol character is one token, and runs of
    white space are free except newlines beyond the first.
    """
    total = 0
    for piece in _PIECE.findall(text):
        first = piece[0]
        if first.isalpha():
            total += (len(piece) + 3) // 4
        elif first.isspace():
            extra = piece.count("\n") - 1
            if extra > 0:
                total += extra
        else:
            total += 1
    return total


def estimate_tokens_upper(size_in_bytes: int) -> int:
    """An upper bound on the tokens in ``size_in_bytes`` of UTF-8 JSON text.

    BPE tokenizers average three to four bytes a token on prose and code;
    two bytes a token bounds them from above on anything but pathological
    input, and JSON punctuation only makes the bound looser.
    """
    return size_in_bytes // 2 + 1
