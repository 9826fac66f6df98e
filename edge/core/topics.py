"""MQTT topic names built from configuration: checked once, where the config is loaded.

A device publishes on `<prefix>/alerts`, `/status` and `/audit` and reads `/watchlist` and `/cmd`;
the back office subscribes to `<topic_root>/+/alerts`. A wildcard, an empty level or a stray
format field in the configured prefix would make every publish fail (or, worse, subscribe far
wider than meant), so such values are refused before anything connects.
"""

from __future__ import annotations

import string

DEVICE_FIELD = "device_id"
MAX_TOPIC_CHARS = 200  # leaves room for the suffixes under MQTT's 65535-byte limit, and stays readable


def _levels_problem(topic: str) -> str | None:
    if not topic:
        return "is empty"
    if len(topic) > MAX_TOPIC_CHARS:
        return f"is longer than {MAX_TOPIC_CHARS} characters"
    for ch, what in (("#", "the MQTT wildcard '#'"), ("+", "the MQTT wildcard '+'"), ("\x00", "a NUL character")):
        if ch in topic:
            return f"contains {what}; a topic for publishing cannot hold wildcards"
    if topic.startswith("$"):
        return "starts with '$', which brokers reserve ($SYS…)"
    if any(level == "" for level in topic.split("/")):
        return "has an empty level (a leading, trailing or doubled '/')"
    return None


def template_problem(template: str) -> str | None:
    """Why `template` is not a usable device topic prefix, or None. Only `{device_id}` may be substituted."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as e:
        return f"is not a valid template ({e}); write braces only as {{{DEVICE_FIELD}}}"
    for literal, field, spec, conversion in parts:
        if "{" in literal or "}" in literal:
            return f"has an escaped brace; write braces only as {{{DEVICE_FIELD}}}"
        if field is None:
            continue
        if field != DEVICE_FIELD or spec or conversion:
            shown = "{" + field + ("!" + conversion if conversion else "") + (":" + spec if spec else "") + "}"
            return f"has the format field {shown!r}; only {{{DEVICE_FIELD}}} is allowed"
    return _levels_problem(template.replace("{" + DEVICE_FIELD + "}", "x"))


def root_problem(root: str) -> str | None:
    """Why `root` is not a usable back-office topic root (no format fields at all), or None."""
    if "{" in root or "}" in root:
        return "contains '{' or '}'; the back-office topic root is a plain topic (e.g. lfr)"
    return _levels_problem(root)


def device_prefix(template: str, device_id: str) -> str:
    """The concrete prefix; the template was checked by `template_problem` at load."""
    return template.replace("{" + DEVICE_FIELD + "}", device_id)


def prefix_fits_acl(template: str) -> bool:
    """True when the device id is the last level (`<root>/{device_id}`), the layout the example ACL
    and the back office's `<topic_root>/+/alerts` subscription expect."""
    levels = template.split("/")
    return len(levels) >= 2 and levels[-1] == "{" + DEVICE_FIELD + "}" and "{" not in "/".join(levels[:-1])
