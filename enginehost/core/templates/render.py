"""Rendering a template's text: pure functions, no I/O.

The syntax, in full:

* A **placeholder** is ``{{ name }}``: two opening braces, optional whitespace, a name,
  optional whitespace, two closing braces. A name is ``[A-Za-z_][A-Za-z0-9_]*`` (ASCII
  letters, digits, underscore; no dots, no filters, no expressions). Text between
  ``{{`` and ``}}`` that is not such a name (``{{ a.b }}``, ``{{ }}``) is not a
  placeholder and passes through unchanged.
* The only **escape** is a backslash directly before ``{{``: ``\\{{`` renders a literal
  ``{{`` and does not start a placeholder (``\\{{ name }}`` renders ``{{ name }}``).
  A backslash anywhere else is an ordinary character; there is no escape for the
  backslash itself. Single braces and a ``}}`` on its own pass through unchanged.
* **Values** are looked up by name in the variables mapping and converted with
  ``str()`` (so ``3`` renders ``3`` and ``True`` renders ``True``). A ``None`` value,
  or a list/mapping/set, is an ``invalid_variable`` error naming the variables. Every
  placeholder without a variable is reported at once in one ``missing_variables``
  error (names sorted). Variables no placeholder uses are ignored.
* A template's **parts** (header, body, footer) are rendered separately and joined with
  :data:`PART_SEPARATOR` (a blank line, ``"\\n\\n"``); a part that is absent or renders
  to the empty string is left out, separator included.
* The result's size in **UTF-8 bytes** is capped: larger than ``max_bytes`` is a
  ``too_large`` error stating both numbers. Text is never truncated. The size is
  computed before the text is built, so a huge value cannot balloon memory first.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Set
from dataclasses import dataclass

from enginehost.core.templates.errors import TemplateRenderError

__all__ = [
    "ESCAPE",
    "PART_SEPARATOR",
    "TemplateRenderError",
    "placeholders",
    "render",
    "render_text",
]

PART_SEPARATOR = "\n\n"
"""What joins the rendered header, body and footer."""

ESCAPE = "\\{{"
"""The one escape: renders a literal ``{{``."""

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
# At each position the escape is tried first, so "\{{ x }}" is never a placeholder.
_TOKEN = re.compile(r"(?P<escape>\\\{\{)|\{\{\s*(?P<name>" + _NAME + r")\s*\}\}")


@dataclass(frozen=True, slots=True)
class _Slot:
    """A placeholder in a parsed text."""

    name: str


_Segment = str | _Slot


def _parse(text: str) -> list[_Segment]:
    """``text`` as literal strings and placeholders, escapes already resolved."""
    segments: list[_Segment] = []
    literal: list[str] = []
    position = 0
    for match in _TOKEN.finditer(text):
        literal.append(text[position : match.start()])
        position = match.end()
        name = match.group("name")
        if name is None:
            literal.append("{{")
            continue
        segments.append("".join(literal))
        literal = []
        segments.append(_Slot(name))
    literal.append(text[position:])
    segments.append("".join(literal))
    return [segment for segment in segments if segment != ""]


def placeholders(text: str) -> list[str]:
    """The variable names ``text`` uses, in order of first use, each once."""
    names: dict[str, None] = {}
    for segment in _parse(text):
        if isinstance(segment, _Slot):
            names.setdefault(segment.name, None)
    return list(names)


def _unrenderable(value: object) -> str | None:
    """Why ``value`` cannot be rendered, or ``None`` if ``str(value)`` is fine."""
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple | Set):
        return "a list"
    return None


def render(
    body: str,
    variables: Mapping[str, object],
    *,
    header: str | None = None,
    footer: str | None = None,
    max_bytes: int,
) -> str:
    """Render a template's parts with ``variables`` and join them (see the module doc).

    Raises :class:`TemplateRenderError` (``missing_variables``, ``invalid_variable`` or
    ``too_large``); checks happen in that order and every problem of the first failing
    kind is reported at once.
    """
    if max_bytes < 0:
        raise ValueError(f"max_bytes must not be negative, got {max_bytes}")
    parts = [_parse(part) for part in (header, body, footer) if part]
    used: dict[str, None] = {}
    for part in parts:
        for segment in part:
            if isinstance(segment, _Slot):
                used.setdefault(segment.name, None)

    missing = sorted(name for name in used if name not in variables)
    if missing:
        listed = ", ".join(missing)
        raise TemplateRenderError(
            f"missing template variable{'s' if len(missing) > 1 else ''}: {listed}",
            "missing_variables",
            missing=missing,
        )
    problems = {name: _unrenderable(variables[name]) for name in used}
    invalid = sorted(name for name, problem in problems.items() if problem is not None)
    if invalid:
        listed = ", ".join(f"{name} is {problems[name]}" for name in invalid)
        raise TemplateRenderError(
            f"template variables must be text, numbers or booleans: {listed}",
            "invalid_variable",
            invalid=invalid,
        )

    values = {name: str(variables[name]) for name in used}
    value_sizes = {name: len(value.encode("utf-8")) for name, value in values.items()}
    part_sizes = [
        sum(
            value_sizes[segment.name]
            if isinstance(segment, _Slot)
            else len(segment.encode("utf-8"))
            for segment in part
        )
        for part in parts
    ]
    kept = [part for part, size in zip(parts, part_sizes, strict=True) if size > 0]
    size = sum(size for size in part_sizes if size > 0)
    size += len(PART_SEPARATOR.encode("utf-8")) * max(len(kept) - 1, 0)
    if size > max_bytes:
        raise TemplateRenderError(
            f"the rendered template is {size} bytes (UTF-8), over the limit of {max_bytes} "
            "bytes; it is not truncated: shorten the template or its variables",
            "too_large",
            size=size,
            max_bytes=max_bytes,
        )
    return PART_SEPARATOR.join(
        "".join(values[s.name] if isinstance(s, _Slot) else s for s in part) for part in kept
    )


def render_text(text: str, variables: Mapping[str, object], *, max_bytes: int) -> str:
    """Render one piece of text (same rules and errors as :func:`render`)."""
    return render(text, variables, max_bytes=max_bytes)
