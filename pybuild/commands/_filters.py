"""docker's ``--filter KEY=VALUE`` for listings (images, ps): parsing, and the matchers the
filters share.  Pure: no store access.

Semantics as docker's filters.Args: values of one key are alternatives (any may match), different
keys must all match."""

from __future__ import annotations

import re


def parse_filters(items: list[str], known: tuple[str, ...], command: str) -> dict[str, list[str]]:
    """``["dangling=true", "label=a"]`` -> ``{"dangling": ["true"], "label": ["a"]}``; a
    UsageError naming the flag for a bad format or a key ``command`` does not know."""
    from pybuild.errors import UsageError

    out: dict[str, list[str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().lower()
        if not sep:
            raise UsageError(f"--filter {item!r}: bad format of filter (expected name=value)")
        if key not in known:
            raise UsageError(f"--filter {item!r}: invalid filter {key!r} ({command} knows {', '.join(known)})")
        out.setdefault(key, []).append(value)
    return out


def bool_filter(filters: dict[str, list[str]], key: str) -> bool | None:
    """A true/false filter (``dangling=true``): None when absent; UsageError for other values."""
    from pybuild.errors import UsageError

    values = {v.lower() for v in filters.get(key, [])}
    if not values:
        return None
    if not values <= {"true", "false", "1", "0"} or len(values) > 1:
        raise UsageError(f"--filter {key}={'/'.join(sorted(values))}: invalid filter value (true or false)")
    return values.pop() in ("true", "1")


def path_match(pattern: str, text: str) -> bool:
    """Go's path.Match: ``*`` any run of characters but ``/``, ``?`` one such character, ``[...]``
    a class (``[^...]`` negated), ``\\`` escapes.  A malformed pattern matches nothing."""
    rx, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            rx.append("[^/]*")
        elif c == "?":
            rx.append("[^/]")
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            rx.append(re.escape(pattern[i]))
        elif c == "[":
            end = pattern.find("]", i + 2)
            if end < 0:
                return False
            body = pattern[i + 1:end]
            neg = body.startswith("^")
            body = body[1:] if neg else body
            rx.append("[" + ("^/" if neg else "") + body.replace("\\", "\\\\") + "]")
            i = end
        else:
            rx.append(re.escape(c))
        i += 1
    try:
        return re.fullmatch("".join(rx), text) is not None
    except re.error:
        return False


def reference_match(pattern: str, repository: str, tag: str | None) -> bool:
    """docker's reference.FamiliarMatch: the pattern against ``repository:tag``, else against
    the repository alone (``busybox`` lists every busybox tag)."""
    return (tag is not None and path_match(pattern, f"{repository}:{tag}")) or path_match(pattern, repository)


def label_match(wanted: list[str], labels: dict | None) -> bool:
    """``label=KEY`` (present) or ``label=KEY=VALUE``; every one given must hold, as docker's."""
    labels = labels or {}
    for item in wanted:
        key, sep, value = item.partition("=")
        if key not in labels or (sep and labels[key] != value):
            return False
    return True
