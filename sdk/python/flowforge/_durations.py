"""Durations as the protocol writes them (`10s`, `5m`, `1h30m`, `500ms`, `2d`)."""

from __future__ import annotations

import re
from datetime import timedelta

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_MILLIS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}

Duration = str | int | float | timedelta


def to_millis(value: Duration) -> int:
    """Milliseconds of a duration: a string like `10s`, a timedelta, or seconds."""
    if isinstance(value, timedelta):
        return int(value.total_seconds() * 1000)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value * 1000)
    if isinstance(value, str):
        text = value.strip()
        pos, total = 0, 0.0
        for match in _PART.finditer(text):
            if match.start() != pos:
                break
            total += float(match.group(1)) * _MILLIS[match.group(2)]
            pos = match.end()
        if text and pos == len(text):
            return int(total)
    raise ValueError(f"{value!r} is not a duration (examples: '10s', '5m', '1h30m', timedelta)")


def to_text(value: Duration) -> str:
    """The protocol's form of a duration."""
    millis = to_millis(value)
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"
