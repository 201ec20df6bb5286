"""Counts in messages: ``1 match``, ``2 matches``, one rule for every summary line and status.

>>> plural(1, "match"), plural(2, "match"), plural(0, "point"), plural(1, "video")
('1 match', '2 matches', '0 points', '1 video')
>>> plural(3, "query", "queries")
'3 queries'
"""

from __future__ import annotations

_SIBILANT_ENDINGS = ("s", "sh", "ch", "x", "z")


def plural(count: int, noun: str, many: str | None = None) -> str:
    """``count`` and ``noun``, in the plural unless the count is 1 (``many`` where English is
    irregular; else ``-es`` after s, sh, ch, x and z, ``-s`` otherwise)."""
    if count == 1:
        return f"{count} {noun}"
    if many is None:
        many = noun + ("es" if noun.endswith(_SIBILANT_ENDINGS) else "s")
    return f"{count} {many}"
