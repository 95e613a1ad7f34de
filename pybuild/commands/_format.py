"""Docker-shaped formatting shared by the commands: sizes, ages, tables, not-found messages, and
the listings' `--format` (on the Go-template evaluator of :mod:`pybuild.commands._gotemplate`)."""

from __future__ import annotations


def human_size(n: float, precision: int = 3) -> str:
    """docker's units.HumanSizeWithPrecision: decimal units, `precision` significant digits."""
    units = ("B", "kB", "MB", "GB", "TB", "PB")
    i = 0
    n = float(n)
    while n >= 1000 and i < len(units) - 1:
        n /= 1000
        i += 1
    return f"{n:.{precision}g}{units[i]}"


def parse_time(text: str | None):
    """An RFC 3339 time (``Z`` or an offset; UTC when it names no zone) as an aware datetime,
    None when ``text`` is not one."""
    from datetime import datetime, timezone

    try:
        when = datetime.fromisoformat((text or "").replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


def created_at(text: str | None) -> str:
    """docker's CreatedAt field: ``2024-01-15 10:20:30 +0000 UTC``; ``text`` as it is when it is
    not a time."""
    when = parse_time(text)
    return when.strftime("%Y-%m-%d %H:%M:%S %z %Z") if when else (text or "")


def ago(created: str | None) -> str:
    """docker's "2 weeks ago" (units.HumanDuration + " ago")."""
    from datetime import datetime, timezone

    if not created:
        return "N/A"
    when = parse_time(created)
    if when is None:
        return created
    s = (datetime.now(timezone.utc) - when).total_seconds()
    if s < 1:
        return "Less than a second ago"
    if s < 60:
        return f"{int(s)} second{'s' if int(s) != 1 else ''} ago"
    m = s / 60
    if m < 60:
        return "About a minute ago" if int(m) == 1 else f"{int(m)} minutes ago"
    h = m / 60
    if round(h) == 1:
        return "About an hour ago"
    if h < 48:
        return f"{round(h)} hours ago"
    if h < 24 * 7 * 2:
        return f"{int(h / 24)} days ago"
    if h < 24 * 30 * 2:
        return f"{int(h / 24 / 7)} weeks ago"
    if h < 24 * 365 * 2:
        return f"{int(h / 24 / 30)} months ago"
    return f"{int(h / 24 / 365)} years ago"


def table(rows: list[tuple[str, ...]]) -> str:
    """docker's tabwriter (minwidth 10, padding 3); the last column is not padded."""
    if not rows:
        return ""
    widths = [max(max(len(r[i]) for r in rows) + 3, 10) for i in range(len(rows[0]) - 1)]
    return "\n".join(("".join(c.ljust(w) for c, w in zip(r, widths)) + r[-1]).rstrip() for r in rows)


def ellipsis(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def not_found(text: str) -> str:
    """docker's `No such image: NAME` (a bare name gets `:latest`, ids stay as given)."""
    from pybuild.oci.reference import InvalidReference, parse_reference

    try:
        ref = parse_reference(text)
    except InvalidReference:
        return f"No such image: {text}"
    return f"No such image: {ref if ref.digest else ref.tagged}"


class Template:
    """docker's ``--format`` for listings: a Go template (:class:`GoTemplate`, as ``inspect -f``)
    over one row's fields, with ``\\t``/``\\n`` escapes and a leading ``table`` for aligned
    columns under a header (each field's header as docker names it).  A field the listing does
    not have is a UsageError before any output (docker's row is a struct: an unknown field fails
    there too), as is a template error.

    ``fields`` maps the field names docker's formatter offers to their table headers."""

    def __init__(self, text: str, fields: dict[str, str], flag: str = "--format"):
        from pybuild.errors import UsageError

        from ._gotemplate import GoTemplate, field_names

        if text == "json":  # docker 23+: one JSON object per row
            text = "{{json .}}"
        self.is_table = text == "table" or text.startswith("table ")
        body = text[len("table"):] if self.is_table else text
        body = body.strip(" ").replace("\\t", "\t").replace("\\n", "\n")
        self._template = GoTemplate(body, flag, shown=text)
        unknown = [f for f in field_names(self._template) if f not in fields]
        if unknown:
            raise UsageError(f"{flag} {text!r}: no field {unknown[0]!r} (fields: {', '.join(fields)})")
        self.fields = fields

    def render(self, row: dict) -> str:
        return self._template.execute(row)

    def lines(self, rows: list[dict]) -> list[str]:
        """The output lines: one per row, or for ``table`` the header and the rows aligned on
        the template's tabs as docker's tabwriter does."""
        if not self.is_table:
            return [self.render(r) for r in rows]
        header = self.render(dict(self.fields))
        cells = [tuple(line.split("\t")) for line in [header, *(self.render(r) for r in rows)]]
        width = max(len(c) for c in cells)
        return table([c + ("",) * (width - len(c)) for c in cells]).split("\n")
