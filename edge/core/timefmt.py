"""The one time format: RFC 3339 in UTC with a `Z`, to the millisecond (2026-12-05T08:00:00.123Z).

Every time the project writes (alerts, status, audit records, commands and acks, bundle headers,
reports) goes through `format_utc`; every time it reads goes through `parse_utc`. The parser is
written out rather than built on `datetime.fromisoformat`, because the project runs on Python 3.10
(JetPack 6), whose fromisoformat rejects a trailing `Z` and fractions other than 3 or 6 digits,
both of which RFC 3339 allows and other systems send.
"""

from __future__ import annotations

import datetime as dt
import re

from edge.core.errors import InputError

# RFC 3339 section 5.6 date-time; "T" and "Z" may be lower case there, and so here. Seconds may be
# left out (2026-11-26T09:00Z), a courtesy to people typing a --since or --expires.
_RFC3339 = re.compile(
    r"(?P<y>\d{4})-(?P<mo>\d{2})-(?P<d>\d{2})[Tt ](?P<h>\d{2}):(?P<mi>\d{2})(?::(?P<s>\d{2})"
    r"(?:\.(?P<frac>\d{1,9}))?)?(?P<zone>[Zz]|[+-]\d{2}:\d{2})"
)
EXAMPLE = "2026-12-01T06:00:00Z"


class TimeFormatError(InputError, ValueError):
    """A time that is not RFC 3339 with a zone; a ValueError too, so message verifiers that treat
    any malformed field as a rejection keep doing so."""


def format_utc(t: float) -> str:
    """Unix seconds → RFC 3339 UTC with milliseconds and `Z`. Truncates, never rounds up, so a
    formatted expiry is never later than the real one."""
    # Round to the microsecond first (what datetime holds), so float noise in t*1000 cannot turn
    # .123 into .122; then truncate to the millisecond.
    ms = round(t * 1_000_000) // 1000
    stamp = dt.datetime.fromtimestamp(ms // 1000, dt.timezone.utc)
    return f"{stamp:%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}Z"


def parse_utc(text: str, what: str = "time") -> float:
    """RFC 3339 (`Z` or an offset, any fraction up to nanoseconds) → unix seconds.

    A time without a zone is refused: on a device whose clock zone is not known, a bare local time
    would silently mean different instants. `what` names the field or option in the error."""
    if not isinstance(text, str):
        raise TimeFormatError(f"{what}: {str(text)[:40]!r} is not an RFC 3339 time (e.g. {EXAMPLE})")
    m = _RFC3339.fullmatch(text.strip())
    if m is None:
        shown = text.strip()[:40]
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?", shown):
            raise TimeFormatError(f"{what}: {shown!r} has no time zone; add Z for UTC or an offset like +01:00")
        raise TimeFormatError(f"{what}: {shown!r} is not an RFC 3339 time (e.g. {EXAMPLE})")
    zone = m["zone"]
    if zone in ("Z", "z"):
        offset = dt.timedelta(0)
    else:
        hours, minutes = int(zone[1:3]), int(zone[4:6])
        if hours > 23 or minutes > 59:
            raise TimeFormatError(f"{what}: {text.strip()[:40]!r} has an impossible offset {zone}")
        offset = dt.timedelta(hours=hours, minutes=minutes) * (1 if zone[0] == "+" else -1)
    second = int(m["s"] or 0)
    # RFC 3339 allows a leap second (:60); datetime does not, so count it as the next second's start.
    leap = second == 60
    try:
        stamp = dt.datetime(
            int(m["y"]), int(m["mo"]), int(m["d"]), int(m["h"]), int(m["mi"]), 59 if leap else second,
            tzinfo=dt.timezone(offset),
        )
    except ValueError as e:
        raise TimeFormatError(f"{what}: {text.strip()[:40]!r} is not a real date and time ({e})") from None
    frac = m["frac"] or ""
    return stamp.timestamp() + (1 if leap else 0) + (int(frac) / 10 ** len(frac) if frac else 0.0)
