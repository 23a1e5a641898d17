"""Templates of a session: create, read, update, delete and render, each in one transaction.

Values are validated here, at the edge, with errors naming the field. A template's name
is unique within its session, and that is decided by the database's unique index
(:data:`~enginehost.core.templates.models.UNIQUE_NAME_INDEX`), never by reading first:
the insert or update runs, and a violation of that index becomes
:class:`~enginehost.core.templates.errors.TemplateNameTakenError`, raised inside the
unit of work so the transaction rolls back. Two concurrent creates of one name cannot
both succeed.

Templates handed back are detached model instances with every column loaded.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final, Literal

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, delete, select

from enginehost.core.db.database import Database
from enginehost.core.db.lookups import searchable
from enginehost.core.engine import utc_now
from enginehost.core.templates.errors import (
    TemplateNameTakenError,
    TemplateNotFoundError,
    TemplateValidationError,
)
from enginehost.core.templates.models import (
    BODY_MAX,
    HEADER_FOOTER_MAX,
    NAME_MAX,
    UNIQUE_NAME_INDEX,
    Template,
)
from enginehost.core.templates.render import render

__all__ = ["SESSION_ID_MAX", "UNSET", "TemplateService", "Unset"]

SESSION_ID_MAX = 64

_SQLITE_UNIQUE_NAME = "UNIQUE constraint failed: templates.session_id, templates.name"
_UNIQUE_VIOLATION = "23505"


class Unset(enum.Enum):
    """The type of :data:`UNSET`: "leave this field as it is" in :meth:`TemplateService.update`."""

    UNSET = "UNSET"

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = Unset.UNSET


# --------------------------------------------------------------------------- validation


def _reject_nul(field: str, value: str) -> None:
    if "\x00" in value:
        raise TemplateValidationError(field, "must not contain NUL characters")


def _text(field: str, value: object) -> str:
    if not isinstance(value, str):
        raise TemplateValidationError(field, f"must be a string, got {type(value).__name__}")
    _reject_nul(field, value)
    return value


def _valid_session_id(session_id: object) -> str:
    value = _text("session_id", session_id)
    if not value or len(value) > SESSION_ID_MAX:
        raise TemplateValidationError(
            "session_id", f"must be 1 to {SESSION_ID_MAX} characters, got {len(value)}"
        )
    return value


def _valid_name(name: object) -> str:
    value = _text("name", name).strip()
    if not value:
        raise TemplateValidationError("name", "must not be empty or only whitespace")
    if len(value) > NAME_MAX:
        raise TemplateValidationError(
            "name", f"must be at most {NAME_MAX} characters, got {len(value)}"
        )
    return value


def _valid_body(body: object) -> str:
    value = _text("body", body)
    if not value.strip():
        raise TemplateValidationError("body", "must not be empty or only whitespace")
    if len(value) > BODY_MAX:
        raise TemplateValidationError(
            "body", f"must be at most {BODY_MAX} characters, got {len(value)}"
        )
    return value


def _valid_part(field: str, part: object) -> str | None:
    """A header or footer: ``None``, empty or only whitespace all mean "none"."""
    if part is None:
        return None
    value = _text(field, part)
    if not value.strip():
        return None
    if len(value) > HEADER_FOOTER_MAX:
        raise TemplateValidationError(
            field, f"must be at most {HEADER_FOOTER_MAX} characters, got {len(value)}"
        )
    return value


# ----------------------------------------------------------------------- database work


def _is_name_conflict(exc: IntegrityError) -> bool:
    """Whether ``exc`` is a violation of the unique (session_id, name) index, and only that."""
    original = exc.orig
    diag = getattr(original, "diag", None)
    if diag is not None:  # PostgreSQL (psycopg): the server names the index.
        return (
            getattr(original, "sqlstate", None) == _UNIQUE_VIOLATION
            and getattr(diag, "constraint_name", None) == UNIQUE_NAME_INDEX
        )
    message = str(original)
    return _SQLITE_UNIQUE_NAME in message or UNIQUE_NAME_INDEX in message


def _flush(session: Session, template: Template) -> None:
    """Flush ``template``'s insert or update; a taken name becomes the service's error."""
    # Read before flushing: a failed flush rolls back and expires the instance.
    session_id, name = template.session_id, template.name
    try:
        session.flush()
    except IntegrityError as exc:
        if _is_name_conflict(exc):
            raise TemplateNameTakenError(session_id, name) from exc
        raise


def _find(session: Session, session_id: str, template_id: str, *, lock: bool = False) -> Template:
    if not searchable(session_id, template_id):
        raise _not_found(session_id, template_id)
    statement = select(Template).where(
        col(Template.id) == template_id, col(Template.session_id) == session_id
    )
    if lock:
        statement = statement.with_for_update()
    template = session.exec(statement).first()
    if template is None:
        raise _not_found(session_id, template_id)
    return template


def _find_by_name(session: Session, session_id: str, name: str) -> Template:
    if not searchable(session_id, name):
        raise _name_not_found(session_id, name)
    template = session.exec(
        select(Template)
        .where(col(Template.session_id) == session_id, col(Template.name) == name)
        .order_by(col(Template.created_at), col(Template.id))
        .limit(1)
    ).first()
    if template is None:
        raise _name_not_found(session_id, name)
    return template


def _not_found(session_id: str, template_id: str) -> TemplateNotFoundError:
    return TemplateNotFoundError(f"no template {template_id!r} in session {session_id!r}")


def _name_not_found(session_id: str, name: str) -> TemplateNotFoundError:
    return TemplateNotFoundError(f"no template named {name!r} in session {session_id!r}")


# ---------------------------------------------------------------------------- service


class TemplateService:
    """The templates of every session, in the data database."""

    def __init__(self, database: Database, *, render_max_bytes: int) -> None:
        if render_max_bytes < 1:
            raise ValueError(f"render_max_bytes must be positive, got {render_max_bytes}")
        self._database = database
        self.render_max_bytes = render_max_bytes

    async def create(
        self,
        session_id: str,
        *,
        name: str,
        body: str,
        header: str | None = None,
        footer: str | None = None,
    ) -> Template:
        """A new template; :class:`TemplateNameTakenError` if the session has the name."""
        now = utc_now()
        template = Template(
            session_id=_valid_session_id(session_id),
            name=_valid_name(name),
            body=_valid_body(body),
            header=_valid_part("header", header),
            footer=_valid_part("footer", footer),
            created_at=now,
            updated_at=now,
        )

        def work(session: Session) -> Template:
            session.add(template)
            _flush(session, template)
            return template

        return await self._database.run(work)

    async def get(self, session_id: str, template_id: str) -> Template:
        """The template ``template_id`` of ``session_id``, or :class:`TemplateNotFoundError`."""

        def work(session: Session) -> Template:
            return _find(session, session_id, template_id)

        return await self._database.run(work, readonly=True)

    async def get_by_name(self, session_id: str, name: str) -> Template:
        """The template named ``name`` (compared stripped) in ``session_id``.

        Deterministic even on a table without the unique index: the oldest such row
        (ties: the lowest id).
        """
        wanted = name.strip() if isinstance(name, str) else name

        def work(session: Session) -> Template:
            return _find_by_name(session, session_id, wanted)

        return await self._database.run(work, readonly=True)

    async def list(self, session_id: str) -> list[Template]:
        """Every template of ``session_id``, oldest first (ties: by id)."""

        def work(session: Session) -> list[Template]:
            if not searchable(session_id):
                return []
            return list(
                session.exec(
                    select(Template)
                    .where(col(Template.session_id) == session_id)
                    .order_by(col(Template.created_at), col(Template.id))
                ).all()
            )

        return await self._database.run(work, readonly=True)

    async def update(
        self,
        session_id: str,
        template_id: str,
        *,
        name: str | Literal[Unset.UNSET] = UNSET,
        body: str | Literal[Unset.UNSET] = UNSET,
        header: str | Literal[Unset.UNSET] | None = UNSET,
        footer: str | Literal[Unset.UNSET] | None = UNSET,
    ) -> Template:
        """Change the given fields (``header``/``footer`` may be set to ``None``).

        ``updated_at`` moves to now on every update. Renaming onto a name the session
        already uses is :class:`TemplateNameTakenError`, and nothing changes.
        """
        changes: dict[str, str | None] = {}
        if name is not UNSET:
            changes["name"] = _valid_name(name)
        if body is not UNSET:
            changes["body"] = _valid_body(body)
        if header is not UNSET:
            changes["header"] = _valid_part("header", header)
        if footer is not UNSET:
            changes["footer"] = _valid_part("footer", footer)

        def work(session: Session) -> Template:
            template = _find(session, session_id, template_id, lock=True)
            for field, value in changes.items():
                setattr(template, field, value)
            template.updated_at = max(utc_now(), template.created_at)
            session.add(template)
            _flush(session, template)
            return template

        return await self._database.run(work)

    async def delete(self, session_id: str, template_id: str) -> None:
        """Delete the template, or :class:`TemplateNotFoundError` if there is none."""

        def work(session: Session) -> None:
            if not searchable(session_id, template_id):
                raise _not_found(session_id, template_id)
            result = session.exec(
                delete(Template).where(
                    col(Template.id) == template_id, col(Template.session_id) == session_id
                )
            )
            if result.rowcount != 1:
                raise _not_found(session_id, template_id)

        await self._database.run(work)

    async def render(
        self,
        session_id: str,
        *,
        template_id: str | None = None,
        name: str | None = None,
        variables: Mapping[str, object],
    ) -> str:
        """Render the template given by exactly one of ``template_id`` and ``name``.

        See :mod:`enginehost.core.templates.render` for the syntax and the errors.
        """
        if (template_id is None) == (name is None):
            given = "both" if template_id is not None else "neither"
            raise TemplateValidationError(
                "template_id", f"give exactly one of template_id and name ({given} given)"
            )
        if template_id is not None:
            template = await self.get(session_id, template_id)
        else:
            assert name is not None
            template = await self.get_by_name(session_id, name)
        return render(
            template.body,
            variables,
            header=template.header,
            footer=template.footer,
            max_bytes=self.render_max_bytes,
        )
