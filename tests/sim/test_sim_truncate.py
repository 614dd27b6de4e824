"""``truncate_tokens`` keeps the longest word-boundary prefix within the limit."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from corral.sim.generate import truncate_tokens
from corral.tokens import count_tokens

texts = st.text(alphabet=st.sampled_from(list("ab cd\n12345,.!é ")), max_size=200)


@given(text=texts, limit=st.integers(0, 80))
def test_longest_prefix_within_limit(text: str, limit: int) -> None:
    cut = truncate_tokens(text, limit)
    assert text.startswith(cut)
    assert count_tokens(cut) <= limit or not cut
    if cut != text and limit > 0:
        words = [m.end() for m in re.finditer(r"\S+\s*", text)]
        longer = [end for end in words if len(text[:end].rstrip()) > len(cut)]
        if longer:
            assert count_tokens(text[: longer[0]]) > limit
