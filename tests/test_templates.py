"""Templates: rendering, the service on both backends, and the de-duplicating migration."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, func, select

from enginehost.core.db.migrations import downgrade, schema_status, upgrade
from enginehost.core.settings import load_settings
from enginehost.core.templates import service as service_module
from enginehost.core.templates.errors import (
    TemplateError,
    TemplateNameTakenError,
    TemplateNotFoundError,
    TemplateRenderError,
    TemplateValidationError,
)
from enginehost.core.templates.models import (
    BODY_MAX,
    HEADER_FOOTER_MAX,
    NAME_MAX,
    UNIQUE_NAME_INDEX,
    Template,
)
from enginehost.core.templates.render import PART_SEPARATOR, placeholders, render
from enginehost.core.templates.service import TemplateService
from tests.conftest import open_database

MAX_BYTES: int = load_settings().template_render_max_bytes


@pytest.fixture
def service(data_db: Any) -> TemplateService:
    return TemplateService(data_db, render_max_bytes=MAX_BYTES)


def count_rows(database: Any, session_id: str | None = None) -> int:
    def work(session: Session) -> int:
        statement = select(func.count()).select_from(Template)
        if session_id is not None:
            statement = statement.where(col(Template.session_id) == session_id)
        return session.exec(statement).one()

    return int(database.run_sync(work))


def assert_aware_utc(value: datetime) -> None:
    assert value.tzinfo is not None
    assert value.utcoffset() == timedelta(0)


# =============================================================================== render


def test_placeholders_whitespace_order_and_duplicates() -> None:
    text = "{{a}} {{  b }} {{\tc\t}} {{ a }} {{_x1}} {{ 1bad }} {{ a.b }} {{ }} \\{{ esc }}"
    assert placeholders(text) == ["a", "b", "c", "_x1"]
    assert placeholders("no placeholders { } }} {{") == []


def test_render_whitespace_inside_braces() -> None:
    variables = {"name": "Ada", "n": 3}
    text = "Hi {{name}}, {{ name }}, {{   name   }}: {{n}}"
    assert render(text, variables, max_bytes=100) == "Hi Ada, Ada, Ada: 3"


def test_render_escape_and_other_braces_pass_through() -> None:
    variables = {"x": "X"}
    assert render("\\{{ x }} is {{ x }}", variables, max_bytes=100) == "{{ x }} is X"
    assert render("\\{{", variables, max_bytes=100) == "{{"
    # Single braces, a lone }}, a backslash elsewhere, and non-names are literal text.
    text = "{ x } }} a\\b {{ a.b }} {{ 9 }} {{{ x }}}"
    assert render(text, variables, max_bytes=100) == "{ x } }} a\\b {{ a.b }} {{ 9 }} {X}"
    # There is no escape for the backslash itself: "\\{{" is a backslash, then "\{{".
    assert render("\\\\{{ x }}", variables, max_bytes=100) == "\\{{ x }}"
    # An escaped placeholder needs no variable.
    assert render("\\{{ undefined }}", {}, max_bytes=100) == "{{ undefined }}"


def test_render_reports_every_missing_variable_sorted() -> None:
    with pytest.raises(TemplateRenderError) as caught:
        render(
            "{{ zeta }} {{ alpha }} {{ zeta }} {{ known }}",
            {"known": 1},
            header="{{ mid }}",
            footer="{{ beta }}",
            max_bytes=100,
        )
    error = caught.value
    assert error.code == "missing_variables"
    assert error.missing == ["alpha", "beta", "mid", "zeta"]
    assert "alpha, beta, mid, zeta" in error.message
    assert error.status_code == 422
    assert error.extra == {"missing": ["alpha", "beta", "mid", "zeta"]}


def test_render_ignores_extra_variables() -> None:
    assert render("{{ a }}", {"a": "A", "b": None, "c": [1]}, max_bytes=10) == "A"


def test_render_converts_values_with_str() -> None:
    variables = {"b": True, "i": 42, "f": 1.5, "s": "text", "z": 0, "e": ""}
    text = "{{b}} {{i}} {{f}} {{s}} {{z}} [{{e}}]"
    assert render(text, variables, max_bytes=100) == "True 42 1.5 text 0 []"


@pytest.mark.parametrize(
    ("value", "what"), [(None, "null"), ([1, 2], "a list"), ({"k": 1}, "an object")]
)
def test_render_refuses_null_and_containers(value: object, what: str) -> None:
    with pytest.raises(TemplateRenderError) as caught:
        render("{{ b }} {{ a }} {{ ok }}", {"a": value, "b": value, "ok": 1}, max_bytes=100)
    assert caught.value.code == "invalid_variable"
    assert caught.value.invalid == ["a", "b"]
    assert caught.value.missing == []
    assert f"a is {what}" in caught.value.message


def test_render_missing_is_reported_before_invalid() -> None:
    with pytest.raises(TemplateRenderError) as caught:
        render("{{ a }} {{ b }}", {"a": None}, max_bytes=100)
    assert caught.value.code == "missing_variables"
    assert caught.value.missing == ["b"]


def test_render_joins_parts_and_skips_empty_ones() -> None:
    v = {"x": "X", "empty": ""}
    assert PART_SEPARATOR == "\n\n"
    assert render("B", v, header="H", footer="F", max_bytes=100) == "H\n\nB\n\nF"
    assert render("B {{x}}", v, max_bytes=100) == "B X"
    assert render("B", v, header="H", max_bytes=100) == "H\n\nB"
    assert render("B", v, footer="F", max_bytes=100) == "B\n\nF"
    assert render("B", v, header="", footer=None, max_bytes=100) == "B"
    # A part that renders to nothing is left out with its separator.
    assert render("B", v, header="{{ empty }}", footer="F", max_bytes=100) == "B\n\nF"


def test_render_cap_counts_utf8_bytes() -> None:
    variables = {"v": "€" * 10}  # 10 characters, 30 bytes
    expected = "h\n\n" + "€" * 10
    size = len(expected.encode("utf-8"))
    assert (len(expected), size) == (13, 33)
    assert render("{{ v }}", variables, header="h", max_bytes=size) == expected
    with pytest.raises(TemplateRenderError) as caught:
        render("{{ v }}", variables, header="h", max_bytes=size - 1)
    error = caught.value
    assert error.code == "too_large"
    assert (error.size, error.max_bytes) == (33, 32)
    assert "33 bytes" in error.message and "32 bytes" in error.message


def test_render_cap_is_checked_before_building_huge_text() -> None:
    # 500 placeholders of a 1 MB value: refused by arithmetic, never assembled.
    with pytest.raises(TemplateRenderError) as caught:
        render("{{v}}" * 500, {"v": "x" * 1_000_000}, max_bytes=MAX_BYTES)
    assert caught.value.size == 500_000_000


# ============================================================================== service


@pytest.mark.anyio
async def test_create_get_list_update_delete(service: TemplateService) -> None:
    first = await service.create("s1", name="  welcome ", body="Hello {{ name }}")
    assert (first.session_id, first.name, first.body) == ("s1", "welcome", "Hello {{ name }}")
    assert first.header is None and first.footer is None
    second = await service.create("s1", name="bye", body="Bye", header="H", footer="F")

    fetched = await service.get("s1", first.id)
    assert (fetched.id, fetched.name, fetched.body) == (first.id, "welcome", "Hello {{ name }}")
    assert [t.id for t in await service.list("s1")] == [first.id, second.id]
    assert await service.list("other") == []

    updated = await service.update("s1", second.id, name="farewell", header=None)
    assert (updated.name, updated.body, updated.header, updated.footer) == (
        "farewell",
        "Bye",
        None,
        "F",
    )
    again = await service.get("s1", second.id)
    assert (again.name, again.header, again.footer) == ("farewell", None, "F")
    updated = await service.update("s1", second.id, body="New body", footer="")
    assert (updated.name, updated.body, updated.footer) == ("farewell", "New body", None)

    await service.delete("s1", first.id)
    with pytest.raises(TemplateNotFoundError):
        await service.get("s1", first.id)
    with pytest.raises(TemplateNotFoundError):
        await service.delete("s1", first.id)
    assert [t.id for t in await service.list("s1")] == [second.id]


@pytest.mark.anyio
async def test_returned_templates_are_detached_and_loaded(service: TemplateService) -> None:
    created = await service.create("s1", name="t", body="b", header="h")
    for template in (created, await service.get("s1", created.id), *await service.list("s1")):
        state = sa.inspect(template)
        assert state.detached
        assert not state.expired_attributes
        assert not state.unloaded
        assert template.header == "h"


@pytest.mark.anyio
async def test_timestamps_are_aware_utc_and_round_trip(
    service: TemplateService, data_db: Any
) -> None:
    before = datetime.now(UTC)
    created = await service.create("s1", name="t", body="b")
    assert_aware_utc(created.created_at)
    assert_aware_utc(created.updated_at)
    assert created.created_at == created.updated_at
    assert before <= created.created_at <= datetime.now(UTC)

    fetched = await service.get("s1", created.id)
    assert_aware_utc(fetched.created_at)
    assert (fetched.created_at, fetched.updated_at) == (created.created_at, created.updated_at)

    await anyio.sleep(0.01)
    updated = await service.update("s1", created.id, body="b2")
    assert_aware_utc(updated.updated_at)
    assert updated.created_at == created.created_at
    assert updated.updated_at > created.updated_at
    fetched = await service.get("s1", created.id)
    assert (fetched.created_at, fetched.updated_at) == (created.created_at, updated.updated_at)

    # An update that changes nothing still records that it happened.
    await anyio.sleep(0.01)
    touched = await service.update("s1", created.id)
    assert touched.updated_at > updated.updated_at
    assert count_rows(data_db) == 1


@pytest.mark.anyio
async def test_duplicate_name_is_taken(service: TemplateService, data_db: Any) -> None:
    await service.create("s1", name="promo", body="one")
    with pytest.raises(TemplateNameTakenError) as caught:
        await service.create("s1", name=" promo  ", body="two")
    error = caught.value
    assert (error.status_code, error.code) == (409, "template_name_taken")
    assert "'promo'" in error.message and "'s1'" in error.message
    assert isinstance(error, TemplateError)
    assert isinstance(error.__cause__, IntegrityError)
    assert count_rows(data_db) == 1
    # Names are compared exactly (after stripping): another case is another name.
    await service.create("s1", name="Promo", body="three")


@pytest.mark.anyio
async def test_rename_onto_taken_name_changes_nothing(service: TemplateService) -> None:
    await service.create("s1", name="a", body="A")
    b = await service.create("s1", name="b", body="B", header="HB")
    with pytest.raises(TemplateNameTakenError, match="'a'"):
        await service.update("s1", b.id, name="a", body="changed", header=None)
    unchanged = await service.get("s1", b.id)
    assert (unchanged.name, unchanged.body, unchanged.header) == ("b", "B", "HB")
    assert unchanged.updated_at == b.updated_at
    # Renaming to its own name is fine.
    same = await service.update("s1", b.id, name="b")
    assert same.name == "b"


@pytest.mark.anyio
async def test_same_name_in_two_sessions(service: TemplateService) -> None:
    one = await service.create("s1", name="promo", body="one")
    two = await service.create("s2", name="promo", body="two")
    assert one.id != two.id
    assert (await service.get_by_name("s1", "promo")).body == "one"
    assert (await service.get_by_name("s2", "promo")).body == "two"
    # A rename in s2 is checked against s2 only.
    other = await service.create("s2", name="other", body="x")
    with pytest.raises(TemplateNameTakenError, match="'s2'"):
        await service.update("s2", other.id, name="promo")


@pytest.mark.anyio
async def test_concurrent_creates_of_one_name(service: TemplateService, data_db: Any) -> None:
    created: list[Template] = []
    taken: list[TemplateNameTakenError] = []

    async def attempt(number: int) -> None:
        try:
            created.append(await service.create("s1", name="race", body=f"body {number}"))
        except TemplateNameTakenError as exc:
            taken.append(exc)

    async with anyio.create_task_group() as group:
        for number in range(10):
            group.start_soon(attempt, number)

    assert len(created) == 1
    assert len(taken) == 9
    assert count_rows(data_db, "s1") == 1
    assert (await service.get_by_name("s1", "race")).id == created[0].id


def test_other_integrity_errors_are_not_name_conflicts(data_db: Any) -> None:
    """Only the unique-name index maps to TemplateNameTakenError; a primary key clash does not."""
    now = datetime.now(UTC)

    def make(template_id: str, name: str) -> Template:
        return Template(
            id=template_id, session_id="s1", name=name, body="b", created_at=now, updated_at=now
        )

    def insert(session: Session, template: Template) -> None:
        session.add(template)
        service_module._flush(session, template)

    data_db.run_sync(insert, make("same-id", "one"))
    with pytest.raises(IntegrityError) as caught:
        data_db.run_sync(insert, make("same-id", "two"))
    assert not isinstance(caught.value, TemplateNameTakenError)
    assert not service_module._is_name_conflict(caught.value)
    with pytest.raises(TemplateNameTakenError):
        data_db.run_sync(insert, make("other-id", "one"))
    assert count_rows(data_db) == 1


@pytest.mark.anyio
async def test_get_by_name(service: TemplateService) -> None:
    await service.create("s1", name="alpha", body="A")
    beta = await service.create("s1", name="beta", body="B")
    await service.create("s2", name="beta", body="other session")
    found = await service.get_by_name("s1", "beta")
    assert (found.id, found.body) == (beta.id, "B")
    assert (await service.get_by_name("s1", "  beta ")).id == beta.id
    with pytest.raises(TemplateNotFoundError, match="'gamma'"):
        await service.get_by_name("s1", "gamma")
    with pytest.raises(TemplateNotFoundError):
        await service.get_by_name("s3", "beta")


@pytest.mark.anyio
async def test_templates_of_another_session_are_not_found(service: TemplateService) -> None:
    mine = await service.create("s1", name="mine", body="secret {{ x }}")
    with pytest.raises(TemplateNotFoundError) as caught:
        await service.get("s2", mine.id)
    assert (caught.value.status_code, caught.value.code) == (404, "template_not_found")
    with pytest.raises(TemplateNotFoundError):
        await service.update("s2", mine.id, body="hijacked")
    with pytest.raises(TemplateNotFoundError):
        await service.delete("s2", mine.id)
    with pytest.raises(TemplateNotFoundError):
        await service.render("s2", template_id=mine.id, variables={"x": 1})
    with pytest.raises(TemplateNotFoundError):
        await service.render("s2", name="mine", variables={"x": 1})
    still = await service.get("s1", mine.id)
    assert still.body == "secret {{ x }}"


@pytest.mark.anyio
async def test_unknown_ids_and_odd_lookups_are_not_found(service: TemplateService) -> None:
    for template_id in ("missing", "x" * 500, "nul\x00id", ""):
        with pytest.raises(TemplateNotFoundError):
            await service.get("s1", template_id)
        with pytest.raises(TemplateNotFoundError):
            await service.delete("s1", template_id)
        with pytest.raises(TemplateNotFoundError):
            await service.update("s1", template_id, body="b")
    with pytest.raises(TemplateNotFoundError):
        await service.get_by_name("s1", "nul\x00name")
    assert await service.list("nul\x00session") == []


def _long(limit: int) -> str:
    return "é" * (limit + 1)  # characters, not bytes, are what is limited


@pytest.mark.parametrize(
    ("fields", "field", "fragment"),
    [
        ({"name": ""}, "name", "empty"),
        ({"name": "   \t"}, "name", "empty"),
        ({"name": _long(NAME_MAX)}, "name", f"at most {NAME_MAX}"),
        ({"name": "a\x00b"}, "name", "NUL"),
        ({"body": ""}, "body", "empty"),
        ({"body": " \n "}, "body", "empty"),
        ({"body": _long(BODY_MAX)}, "body", f"at most {BODY_MAX}"),
        ({"header": _long(HEADER_FOOTER_MAX)}, "header", f"at most {HEADER_FOOTER_MAX}"),
        ({"footer": _long(HEADER_FOOTER_MAX)}, "footer", f"at most {HEADER_FOOTER_MAX}"),
        ({"footer": "\x00"}, "footer", "NUL"),
        ({"name": 5}, "name", "must be a string"),
    ],
)
@pytest.mark.anyio
async def test_validation_errors_name_the_field(
    service: TemplateService, data_db: Any, fields: dict[str, Any], field: str, fragment: str
) -> None:
    values: dict[str, Any] = {"name": "ok", "body": "ok", **fields}
    with pytest.raises(TemplateValidationError) as caught:
        await service.create("s1", **values)
    error = caught.value
    assert (error.status_code, error.code, error.field) == (422, "validation_failed", field)
    assert error.message.startswith(f"{field}: ") and fragment in error.message
    assert error.extra == {"errors": [{"path": field, "message": error.problem}]}

    existing = await service.create("s1", name="existing", body="body")
    with pytest.raises(TemplateValidationError) as caught:
        await service.update("s1", existing.id, **fields)
    assert caught.value.field == field
    assert (await service.get("s1", existing.id)).name == "existing"
    assert count_rows(data_db) == 1


@pytest.mark.anyio
async def test_limits_are_inclusive(service: TemplateService) -> None:
    template = await service.create(
        "s" * 64,
        name="é" * NAME_MAX,
        body="é" * BODY_MAX,
        header="é" * HEADER_FOOTER_MAX,
        footer="é" * HEADER_FOOTER_MAX,
    )
    fetched = await service.get("s" * 64, template.id)
    assert (len(fetched.name), len(fetched.body)) == (NAME_MAX, BODY_MAX)
    assert (len(fetched.header or ""), len(fetched.footer or "")) == (HEADER_FOOTER_MAX,) * 2
    with pytest.raises(TemplateValidationError) as caught:
        await service.create("s" * 65, name="n", body="b")
    assert caught.value.field == "session_id"
    with pytest.raises(TemplateValidationError):
        await service.create("", name="n", body="b")


@pytest.mark.anyio
async def test_render_by_id_and_by_name(service: TemplateService) -> None:
    template = await service.create(
        "s1", name="order", header="Order {{ id }}", body="Hi {{name}}", footer="\\{{ raw }}"
    )
    variables = {"id": 7, "name": "Ada", "unused": None}
    expected = "Order 7\n\nHi Ada\n\n{{ raw }}"
    assert await service.render("s1", template_id=template.id, variables=variables) == expected
    assert await service.render("s1", name="order", variables=variables) == expected
    assert await service.render("s1", name=" order ", variables=variables) == expected
    with pytest.raises(TemplateRenderError) as caught:
        await service.render("s1", name="order", variables={})
    assert caught.value.missing == ["id", "name"]
    with pytest.raises(TemplateRenderError) as caught:
        await service.render("s1", name="order", variables={"id": None, "name": "x"})
    assert (caught.value.code, caught.value.invalid) == ("invalid_variable", ["id"])


@pytest.mark.anyio
async def test_render_needs_exactly_one_of_id_and_name(service: TemplateService) -> None:
    template = await service.create("s1", name="t", body="b")
    with pytest.raises(TemplateValidationError, match="both") as caught:
        await service.render("s1", template_id=template.id, name="t", variables={})
    assert caught.value.field == "template_id"
    with pytest.raises(TemplateValidationError, match="neither"):
        await service.render("s1", variables={})


@pytest.mark.anyio
async def test_render_unknown_template(service: TemplateService) -> None:
    with pytest.raises(TemplateNotFoundError):
        await service.render("s1", template_id="nope", variables={})
    with pytest.raises(TemplateNotFoundError):
        await service.render("s1", name="nope", variables={})


@pytest.mark.anyio
async def test_render_cap_of_the_service(data_db: Any) -> None:
    service = TemplateService(data_db, render_max_bytes=1024)
    await service.create("s1", name="t", body="{{ v }}")
    at_limit = "€" * 341 + "x"  # 342 characters, 1024 bytes
    assert len(at_limit.encode("utf-8")) == 1024
    assert await service.render("s1", name="t", variables={"v": at_limit}) == at_limit
    with pytest.raises(TemplateRenderError) as caught:
        await service.render("s1", name="t", variables={"v": at_limit + "x"})
    assert (caught.value.code, caught.value.size, caught.value.max_bytes) == (
        "too_large",
        1025,
        1024,
    )


# ============================================================================ migration

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
LONG_NAME = "n" * 95


def uid(number: int) -> str:
    return f"00000000-0000-4000-8000-{number:012d}"


# (id, session, name, created_at, header, footer)
SEED = [
    # s1 "promo" x3: the earliest keeps the name although it has the highest id.
    (uid(9), "s1", "promo", T0, "H9", None),
    (uid(1), "s1", "promo", T0 + timedelta(hours=1), None, "F1"),
    (uid(5), "s1", "promo", T0 + timedelta(hours=2), "H5", "F5"),
    # s1 "tie" x2 with the same created_at: the lowest id keeps it (inserted last).
    (uid(3), "s1", "tie", T0 + timedelta(minutes=5), None, None),
    (uid(2), "s1", "tie", T0 + timedelta(minutes=5), "H2", None),
    # s2 "promo": another session, created later than s1's: untouched.
    (uid(4), "s2", "promo", T0 + timedelta(hours=3), None, None),
    # A 95-character name, duplicated: the renamed one must still fit 100 characters.
    (uid(6), "s1", LONG_NAME, T0, None, None),
    (uid(7), "s1", LONG_NAME, T0 + timedelta(seconds=1), None, None),
    # No duplicate at all.
    (uid(8), "s1", "solo", T0, None, "F8"),
]


def dup(name: str, template_id: str) -> str:
    suffix = f"-dup-{template_id}"
    return name[: NAME_MAX - len(suffix)] + suffix


EXPECTED_NAMES = {
    uid(9): "promo",
    uid(1): dup("promo", uid(1)),
    uid(5): dup("promo", uid(5)),
    uid(2): "tie",
    uid(3): dup("tie", uid(3)),
    uid(4): "promo",
    uid(6): LONG_NAME,
    uid(7): dup(LONG_NAME, uid(7)),
    uid(8): "solo",
}

TEMPLATES = sa.table(
    "templates",
    sa.column("id", sa.String()),
    sa.column("session_id", sa.String()),
    sa.column("name", sa.String()),
    sa.column("body", sa.Text()),
    sa.column("header", sa.String()),
    sa.column("footer", sa.String()),
    sa.column("created_at", Template.__table__.c.created_at.type),  # type: ignore[attr-defined]
    sa.column("updated_at", Template.__table__.c.updated_at.type),  # type: ignore[attr-defined]
)


def insert_raw(
    database: Any, *rows: tuple[str, str, str, datetime, str | None, str | None]
) -> None:
    """Plain SQL inserts, as an older enginehost (or an operator) would have made them."""
    with database.engine.begin() as connection:
        connection.execute(
            sa.insert(TEMPLATES),
            [
                {
                    "id": template_id,
                    "session_id": session_id,
                    "name": name,
                    "body": f"body of {template_id} {{{{ x }}}}",
                    "header": header,
                    "footer": footer,
                    "created_at": created_at,
                    "updated_at": created_at + timedelta(days=1),
                }
                for template_id, session_id, name, created_at, header, footer in rows
            ],
        )


def read_raw(database: Any) -> dict[str, dict[str, Any]]:
    with database.engine.connect() as connection:
        rows = connection.execute(sa.select(TEMPLATES)).mappings().all()
    return {row["id"]: dict(row) for row in rows}


def index_names(database: Any) -> set[str]:
    return {index["name"] for index in sa.inspect(database.engine).get_indexes("templates")}


@pytest.fixture
def legacy_db(database_url: str, tmp_path: Path) -> Iterator[Any]:
    """The data database at ``data_0001`` (names not yet unique), seeded with duplicates."""
    database = open_database(database_url, "data", tmp_path)
    upgrade(database, "data_0001")
    # Insertion order is not the order the migration decides by.
    insert_raw(database, *reversed(SEED))
    yield database
    database.dispose()


def test_migration_deduplicates_losslessly(legacy_db: Any) -> None:
    assert UNIQUE_NAME_INDEX not in index_names(legacy_db)
    before = read_raw(legacy_db)
    assert len(before) == len(SEED)

    upgrade(legacy_db)

    assert schema_status(legacy_db).ok
    after = read_raw(legacy_db)
    assert set(after) == set(before)
    for template_id, row in after.items():
        assert row["name"] == EXPECTED_NAMES[template_id], template_id
        assert len(row["name"]) <= NAME_MAX
        for column in ("session_id", "body", "header", "footer", "created_at", "updated_at"):
            assert row[column] == before[template_id][column], (template_id, column)
    long_dup = after[uid(7)]["name"]
    assert len(long_dup) == NAME_MAX
    assert long_dup.endswith(f"-dup-{uid(7)}") and long_dup.startswith("n" * 59)

    # The unique index now exists and is enforced.
    assert UNIQUE_NAME_INDEX in index_names(legacy_db)
    with pytest.raises(IntegrityError):
        insert_raw(legacy_db, (uid(99), "s1", "promo", T0, None, None))
    assert len(read_raw(legacy_db)) == len(SEED)


@pytest.mark.anyio
async def test_service_on_a_migrated_database(legacy_db: Any) -> None:
    upgrade(legacy_db)
    service = TemplateService(legacy_db, render_max_bytes=MAX_BYTES)
    assert (await service.get_by_name("s1", "promo")).id == uid(9)
    assert (await service.get_by_name("s1", "tie")).id == uid(2)
    # Equal created_at: ordered by id.
    assert [t.id for t in await service.list("s1")][:3] == [uid(6), uid(8), uid(9)]
    with pytest.raises(TemplateNameTakenError):
        await service.create("s1", name="tie", body="again")
    rendered = await service.render("s1", name="promo", variables={"x": 1})
    assert rendered == f"H9\n\nbody of {uid(9)} 1"


def test_migration_is_idempotent(legacy_db: Any) -> None:
    upgrade(legacy_db)
    first = read_raw(legacy_db)

    downgrade(legacy_db, "data_0001")
    assert UNIQUE_NAME_INDEX not in index_names(legacy_db)
    assert read_raw(legacy_db) == first
    upgrade(legacy_db)
    assert read_raw(legacy_db) == first
    assert UNIQUE_NAME_INDEX in index_names(legacy_db)
    assert not any("-dup-" in name.split("-dup-", 1)[1] for name in _dup_names(first))

    # A duplicate made while downgraded is renamed on the next upgrade; nothing else moves.
    downgrade(legacy_db, "data_0001")
    insert_raw(legacy_db, (uid(10), "s1", "promo", T0 + timedelta(hours=9), None, None))
    upgrade(legacy_db)
    again = read_raw(legacy_db)
    assert again[uid(10)]["name"] == dup("promo", uid(10))
    assert {k: v for k, v in again.items() if k != uid(10)} == first


def _dup_names(rows: dict[str, dict[str, Any]]) -> list[str]:
    return [row["name"] for row in rows.values() if "-dup-" in row["name"]]


@pytest.mark.anyio
async def test_downgrade_to_base_and_upgrade_again(legacy_db: Any) -> None:
    upgrade(legacy_db)
    downgrade(legacy_db, "base")
    assert not sa.inspect(legacy_db.engine).has_table("templates")
    upgrade(legacy_db)
    assert schema_status(legacy_db).ok
    assert UNIQUE_NAME_INDEX in index_names(legacy_db)
    service = TemplateService(legacy_db, render_max_bytes=MAX_BYTES)
    assert await service.list("s1") == []
    await service.create("s1", name="fresh", body="b")
    with pytest.raises(TemplateNameTakenError):
        await service.create("s1", name="fresh", body="b")


def test_migration_without_templates_table_is_a_no_op(database_url: str, tmp_path: Path) -> None:
    database = open_database(database_url, "data", tmp_path)
    try:
        upgrade(database, "data_0001")
        with database.engine.begin() as connection:
            connection.execute(sa.text("DROP TABLE templates"))
        upgrade(database)
        assert schema_status(database).ok
        assert not sa.inspect(database.engine).has_table("templates")
        downgrade(database, "data_0001")
        assert schema_status(database).current == ("data_0001",)
    finally:
        database.dispose()
