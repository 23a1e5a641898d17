"""Template routes: CRUD by session id and by name, rendering, errors, roles and scopes.

Every test runs on both backends of the data database (PostgreSQL when
ENGINEHOST_TEST_POSTGRES_URL is set).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from enginehost.core.sessions.models import SessionRecord
from enginehost.core.templates.models import BODY_MAX, HEADER_FOOTER_MAX, NAME_MAX
from tests.support.api import ApiHarness, api_harness, assert_error

pytestmark = pytest.mark.anyio

TEMPLATE_FIELDS = {"id", "sessionId", "name", "body", "header", "footer", "createdAt", "updatedAt"}


@pytest.fixture
async def api(tmp_path: Path, database_url: str) -> AsyncIterator[ApiHarness]:
    async with api_harness(tmp_path, database_url=database_url) as harness:
        yield harness


@pytest.fixture
async def alpha(api: ApiHarness) -> SessionRecord:
    return await api.session("alpha")


@pytest.fixture
async def beta(api: ApiHarness) -> SessionRecord:
    return await api.session("beta")


@pytest.fixture
def admin(api: ApiHarness) -> httpx.AsyncClient:
    return api.client(api.admin_secret)


def templates_url(session: str, *rest: str) -> str:
    return "/".join([f"/api/sessions/{session}/templates", *rest])


async def create(client: httpx.AsyncClient, session: str, **fields: Any) -> dict[str, Any]:
    payload = {"name": "greeting", "body": "Hi {{ name }}", **fields}
    response = await client.post(templates_url(session), json=payload)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


# ------------------------------------------------------------------------------ CRUD


async def test_crud_by_session_id(admin: httpx.AsyncClient, alpha: SessionRecord) -> None:
    created = await create(admin, alpha.id, header="Shop", footer="Bye")
    assert set(created) == TEMPLATE_FIELDS  # camelCase, nothing else
    assert created["sessionId"] == alpha.id
    assert (created["name"], created["body"]) == ("greeting", "Hi {{ name }}")
    assert (created["header"], created["footer"]) == ("Shop", "Bye")
    assert created["createdAt"] == created["updatedAt"]
    assert datetime.fromisoformat(created["createdAt"]).utcoffset() is not None

    listed = await admin.get(templates_url(alpha.id))
    assert listed.status_code == 200
    assert listed.json() == [created]

    fetched = await admin.get(templates_url(alpha.id, created["id"]))
    assert fetched.status_code == 200
    assert fetched.json() == created

    updated = await admin.put(templates_url(alpha.id, created["id"]), json={"body": "Hello"})
    assert updated.status_code == 200, updated.text
    changed = updated.json()
    assert changed["body"] == "Hello"
    assert (changed["name"], changed["header"], changed["footer"]) == ("greeting", "Shop", "Bye")
    assert changed["createdAt"] == created["createdAt"]
    assert datetime.fromisoformat(changed["updatedAt"]) >= datetime.fromisoformat(
        created["updatedAt"]
    )

    deleted = await admin.delete(templates_url(alpha.id, created["id"]))
    assert deleted.status_code == 204
    assert deleted.content == b""
    assert (await admin.get(templates_url(alpha.id))).json() == []
    gone = await admin.get(templates_url(alpha.id, created["id"]))
    assert_error(gone, 404, "template_not_found")
    again = await admin.delete(templates_url(alpha.id, created["id"]))
    assert_error(again, 404, "template_not_found")


async def test_session_name_and_id_reach_the_same_templates(
    admin: httpx.AsyncClient, alpha: SessionRecord
) -> None:
    by_name = await create(admin, "alpha", name="first")
    assert by_name["sessionId"] == alpha.id  # stored under the id, not the name
    by_id = await create(admin, alpha.id, name="second")

    names_by_name = [t["name"] for t in (await admin.get(templates_url("alpha"))).json()]
    names_by_id = [t["name"] for t in (await admin.get(templates_url(alpha.id))).json()]
    assert names_by_name == names_by_id == ["first", "second"]

    fetched = await admin.get(templates_url("alpha", by_id["id"]))
    assert fetched.json() == by_id
    renamed = await admin.put(templates_url("alpha", by_id["id"]), json={"name": "renamed"})
    assert renamed.json()["name"] == "renamed"
    assert (await admin.get(templates_url(alpha.id, by_id["id"]))).json()["name"] == "renamed"
    assert (await admin.delete(templates_url(alpha.id, by_name["id"]))).status_code == 204
    assert (await admin.get(templates_url("alpha", by_name["id"]))).status_code == 404

    # The duplicate check does not care how the session was named either.
    duplicate = await admin.post(templates_url(alpha.id), json={"name": "renamed", "body": "x"})
    assert_error(duplicate, 409, "template_name_taken")


async def test_partial_update_and_clearing_header_and_footer(
    admin: httpx.AsyncClient, alpha: SessionRecord
) -> None:
    template = await create(admin, "alpha", header="H", footer="F")
    url = templates_url("alpha", template["id"])

    only_footer = await admin.put(url, json={"footer": None})
    assert only_footer.status_code == 200
    assert (only_footer.json()["header"], only_footer.json()["footer"]) == ("H", None)

    both = await admin.put(url, json={"header": "New", "footer": "Foot", "name": "n2"})
    assert {k: both.json()[k] for k in ("name", "header", "footer")} == {
        "name": "n2",
        "header": "New",
        "footer": "Foot",
    }
    assert both.json()["body"] == template["body"]

    cleared = await admin.put(url, json={"header": None})
    assert (cleared.json()["header"], cleared.json()["footer"]) == (None, "Foot")


async def test_empty_update_is_422_nothing_to_update(
    admin: httpx.AsyncClient, alpha: SessionRecord
) -> None:
    template = await create(admin, "alpha")
    response = await admin.put(templates_url("alpha", template["id"]), json={})
    body = assert_error(response, 422, "nothing_to_update")
    assert "nothing to update" in body["message"]


async def test_name_and_body_cannot_be_set_to_null(
    admin: httpx.AsyncClient, alpha: SessionRecord
) -> None:
    template = await create(admin, "alpha")
    response = await admin.put(
        templates_url("alpha", template["id"]), json={"name": None, "body": None}
    )
    body = assert_error(response, 422, "validation_failed")
    assert [e["path"] for e in body["errors"]] == ["name", "body"]
    unchanged = await admin.get(templates_url("alpha", template["id"]))
    assert unchanged.json() == template


async def test_duplicate_name_is_409_on_create_and_rename(
    admin: httpx.AsyncClient, alpha: SessionRecord, beta: SessionRecord
) -> None:
    await create(admin, "alpha", name="dup")
    conflict = await admin.post(templates_url("alpha"), json={"name": "dup", "body": "x"})
    body = assert_error(conflict, 409, "template_name_taken")
    assert body["error"] == "Conflict"
    assert body["name"] == "dup"
    # Names are stripped before the comparison.
    spaced = await admin.post(templates_url("alpha"), json={"name": "  dup ", "body": "x"})
    assert_error(spaced, 409, "template_name_taken")

    other = await create(admin, "alpha", name="other")
    rename = await admin.put(templates_url("alpha", other["id"]), json={"name": "dup"})
    assert_error(rename, 409, "template_name_taken")
    assert (await admin.get(templates_url("alpha", other["id"]))).json()["name"] == "other"

    # Another session may use the same name.
    assert (await create(admin, "beta", name="dup"))["sessionId"] == beta.id


# -------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("payload", "paths"),
    [
        ({"body": "x"}, {"name"}),
        ({"name": "x"}, {"body"}),
        ({"name": "x" * (NAME_MAX + 1), "body": "x"}, {"name"}),
        ({"name": "x", "body": "x" * (BODY_MAX + 1)}, {"body"}),
        ({"name": "x", "body": "x", "header": "h" * (HEADER_FOOTER_MAX + 1)}, {"header"}),
        ({"name": "x", "body": "x", "footer": "f" * (HEADER_FOOTER_MAX + 1)}, {"footer"}),
        ({"name": 5, "body": True}, {"name", "body"}),
        ({"name": "x", "body": ["a"]}, {"body"}),
        ({"name": "   ", "body": "x"}, {"name"}),
        ({"name": "x", "body": "  \n "}, {"body"}),
        ({"name": "x", "body": "nul \x00 inside"}, {"body"}),
        ({"name": "x", "body": "x", "mediaUrl": "http://x"}, {"mediaUrl"}),
        ({"name": "x", "body": "x", "session_id": "other"}, {"session_id"}),
    ],
)
async def test_create_validation_names_the_field(
    admin: httpx.AsyncClient, alpha: SessionRecord, payload: dict[str, Any], paths: set[str]
) -> None:
    response = await admin.post(templates_url("alpha"), json=payload)
    body = assert_error(response, 422, "validation_failed")
    assert {e["path"] for e in body["errors"]} == paths
    assert all(e["message"] for e in body["errors"])
    for path in paths:
        assert path in body["message"]
    assert (await admin.get(templates_url("alpha"))).json() == []


async def test_update_validation_names_the_field(
    admin: httpx.AsyncClient, alpha: SessionRecord
) -> None:
    template = await create(admin, "alpha")
    url = templates_url("alpha", template["id"])
    too_long = await admin.put(url, json={"header": "h" * (HEADER_FOOTER_MAX + 1)})
    assert {e["path"] for e in assert_error(too_long, 422, "validation_failed")["errors"]} == {
        "header"
    }
    unknown = await admin.put(url, json={"name": "ok", "colour": "red"})
    assert {e["path"] for e in assert_error(unknown, 422, "validation_failed")["errors"]} == {
        "colour"
    }
    blank = await admin.put(url, json={"body": "   "})
    assert {e["path"] for e in assert_error(blank, 422, "validation_failed")["errors"]} == {"body"}
    assert (await admin.get(url)).json() == template


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"{not json", "application/json"),
        (b"", "application/json"),
        (b"[1, 2]", "application/json"),
        (b'"a string"', "application/json"),
        (b"null", "application/json"),
        (b'{"name": "x", "body": "y"}', "text/plain"),
        (b"name=x&body=y", "application/x-www-form-urlencoded"),
        (b"\xff\xfe\x00garbage", "application/json"),
    ],
)
async def test_a_body_that_is_not_a_json_object_is_4xx(
    admin: httpx.AsyncClient, alpha: SessionRecord, content: bytes, content_type: str
) -> None:
    template = await create(admin, "alpha")
    for method, url in [
        ("POST", templates_url("alpha")),
        ("PUT", templates_url("alpha", template["id"])),
        ("POST", templates_url("alpha", template["id"], "render")),
    ]:
        response = await admin.request(
            method, url, content=content, headers={"content-type": content_type}
        )
        assert 400 <= response.status_code < 500, (method, url, response.text)
        assert response.json()["statusCode"] == response.status_code
    assert [t["id"] for t in (await admin.get(templates_url("alpha"))).json()] == [template["id"]]


@pytest.mark.parametrize(
    "template_id",
    [
        "x" * 5000,
        "0" * 37,
        "%00",
        "nul%00inside",
        "%F0%9F%98%80",
        "not-a-uuid",
        "00000000-0000-0000-0000-000000000000",
        "'; DROP TABLE templates; --",
    ],
)
async def test_odd_template_ids_are_404_never_500(
    admin: httpx.AsyncClient, alpha: SessionRecord, template_id: str
) -> None:
    await create(admin, "alpha")
    for method, suffix, payload in [
        ("GET", [], None),
        ("PUT", [], {"body": "x"}),
        ("DELETE", [], None),
        ("POST", ["render"], {"variables": {}}),
    ]:
        url = templates_url("alpha", template_id, *suffix)
        response = await admin.request(method, url, json=payload)
        body = assert_error(response, 404, "template_not_found")
        assert len(body["message"]) < 300  # a huge id is not echoed in full
    assert len((await admin.get(templates_url("alpha"))).json()) == 1


async def test_an_overlong_session_key_is_404(admin: httpx.AsyncClient) -> None:
    response = await admin.get(templates_url("s" * 5000))
    assert_error(response, 404, "session_not_found")


# ------------------------------------------------------------------------------ render


async def test_render_preview(admin: httpx.AsyncClient, alpha: SessionRecord) -> None:
    template = await create(
        admin, "alpha", body="Hi {{ name }}, order {{order}} ✓", header="Shop", footer="Bye"
    )
    response = await admin.post(
        templates_url("alpha", template["id"], "render"),
        json={"variables": {"name": "Ada", "order": 42, "unused": "x"}},
    )
    assert response.status_code == 200, response.text
    text = "Shop\n\nHi Ada, order 42 ✓\n\nBye"
    assert response.json() == {"text": text, "bytes": len(text.encode("utf-8"))}
    # Addressed by the session's id, the same template renders the same text.
    by_id = await admin.post(
        templates_url(alpha.id, template["id"], "render"),
        json={"variables": {"name": "Ada", "order": 42}},
    )
    assert by_id.json()["text"] == text


async def test_render_without_placeholders_needs_no_variables(
    admin: httpx.AsyncClient, alpha: SessionRecord
) -> None:
    template = await create(admin, "alpha", body="Static text, literal \\{{ kept }}")
    response = await admin.post(templates_url("alpha", template["id"], "render"), json={})
    assert response.status_code == 200
    assert response.json()["text"] == "Static text, literal {{ kept }}"


async def test_render_missing_variables_are_named(
    admin: httpx.AsyncClient, alpha: SessionRecord
) -> None:
    template = await create(admin, "alpha", body="{{ b }} {{ a }} {{ c }}")
    response = await admin.post(
        templates_url("alpha", template["id"], "render"), json={"variables": {"c": "x"}}
    )
    body = assert_error(response, 422, "missing_variables")
    assert body["missing"] == ["a", "b"]
    assert "a, b" in body["message"]


async def test_render_invalid_variables_are_named(
    admin: httpx.AsyncClient, alpha: SessionRecord
) -> None:
    template = await create(admin, "alpha", body="{{ a }} {{ b }} {{ c }}")
    response = await admin.post(
        templates_url("alpha", template["id"], "render"),
        json={"variables": {"a": None, "b": [1], "c": {"x": 1}}},
    )
    body = assert_error(response, 422, "invalid_variable")
    assert body["invalid"] == ["a", "b", "c"]


async def test_render_over_the_cap_is_422_never_truncated(
    api: ApiHarness, admin: httpx.AsyncClient, alpha: SessionRecord
) -> None:
    cap = api.settings.template_render_max_bytes
    template = await create(admin, "alpha", body="{{ big }}!")
    url = templates_url("alpha", template["id"], "render")
    at_cap = await admin.post(url, json={"variables": {"big": "x" * (cap - 1)}})
    assert at_cap.status_code == 200
    assert at_cap.json()["bytes"] == cap

    over = await admin.post(url, json={"variables": {"big": "é" * cap}})
    body = assert_error(over, 422, "too_large")
    assert body["size"] == 2 * cap + 1
    assert body["maxBytes"] == cap
    assert str(cap) in body["message"]
    assert "text" not in body


async def test_render_body_validation(admin: httpx.AsyncClient, alpha: SessionRecord) -> None:
    template = await create(admin, "alpha")
    url = templates_url("alpha", template["id"], "render")
    unknown = await admin.post(url, json={"vars": {"name": "x"}})
    assert [e["path"] for e in assert_error(unknown, 422, "validation_failed")["errors"]] == [
        "vars"
    ]
    not_an_object = await admin.post(url, json={"variables": ["name"]})
    assert [e["path"] for e in assert_error(not_an_object, 422, "validation_failed")["errors"]] == [
        "variables"
    ]


# ------------------------------------------------------------------ sessions and keys


async def test_unknown_template_and_unknown_session_are_404(
    admin: httpx.AsyncClient, alpha: SessionRecord
) -> None:
    missing = await admin.get(templates_url("alpha", "00000000-0000-0000-0000-000000000000"))
    assert_error(missing, 404, "template_not_found")
    no_session = await admin.get(templates_url("nope"))
    assert_error(no_session, 404, "session_not_found")
    no_session_create = await admin.post(templates_url("nope"), json={"name": "a", "body": "b"})
    assert_error(no_session_create, 404, "session_not_found")


async def test_a_template_of_one_session_is_invisible_through_another(
    admin: httpx.AsyncClient, alpha: SessionRecord, beta: SessionRecord
) -> None:
    template = await create(admin, "alpha")
    tid = template["id"]
    assert (await admin.get(templates_url("beta"))).json() == []
    for session in ("beta", beta.id):
        assert_error(await admin.get(templates_url(session, tid)), 404, "template_not_found")
        assert_error(
            await admin.put(templates_url(session, tid), json={"body": "hacked"}),
            404,
            "template_not_found",
        )
        assert_error(
            await admin.post(templates_url(session, tid, "render"), json={"variables": {}}),
            404,
            "template_not_found",
        )
        assert_error(await admin.delete(templates_url(session, tid)), 404, "template_not_found")
    assert (await admin.get(templates_url("alpha", tid))).json() == template


async def test_a_session_scoped_key_sees_only_its_sessions(
    api: ApiHarness, admin: httpx.AsyncClient, alpha: SessionRecord, beta: SessionRecord
) -> None:
    beta_template = await create(admin, "beta")
    scoped = api.client(await api.key("operator", sessions=["alpha"]))

    own = await create(scoped, "alpha")
    assert own["sessionId"] == alpha.id
    assert (await scoped.get(templates_url(alpha.id, own["id"]))).status_code == 200
    changed = await scoped.put(templates_url("alpha", own["id"]), json={"body": "Yo {{ name }}"})
    assert changed.status_code == 200
    rendered = await scoped.post(
        templates_url("alpha", own["id"], "render"), json={"variables": {"name": "x"}}
    )
    assert rendered.json()["text"] == "Yo x"

    for session in ("beta", beta.id):
        forbidden = [
            await scoped.get(templates_url(session)),
            await scoped.post(templates_url(session), json={"name": "n", "body": "b"}),
            await scoped.get(templates_url(session, beta_template["id"])),
            await scoped.put(templates_url(session, beta_template["id"]), json={"body": "b"}),
            await scoped.post(
                templates_url(session, beta_template["id"], "render"), json={"variables": {}}
            ),
            await scoped.delete(templates_url(session, beta_template["id"])),
        ]
        for response in forbidden:
            assert_error(response, 404, "session_not_found")
    assert (await admin.get(templates_url("beta", beta_template["id"]))).json() == beta_template
    assert (await scoped.delete(templates_url("alpha", own["id"]))).status_code == 204


async def test_a_viewer_reads_and_renders_but_cannot_change(
    api: ApiHarness, admin: httpx.AsyncClient, alpha: SessionRecord
) -> None:
    template = await create(admin, "alpha")
    viewer = api.client(await api.key("viewer"))

    assert (await viewer.get(templates_url("alpha"))).json() == [template]
    assert (await viewer.get(templates_url("alpha", template["id"]))).json() == template
    rendered = await viewer.post(
        templates_url("alpha", template["id"], "render"), json={"variables": {"name": "V"}}
    )
    assert rendered.status_code == 200
    assert rendered.json()["text"] == "Hi V"

    changes = [
        await viewer.post(templates_url("alpha"), json={"name": "v", "body": "b"}),
        await viewer.put(templates_url("alpha", template["id"]), json={"body": "b"}),
        await viewer.delete(templates_url("alpha", template["id"])),
    ]
    for response in changes:
        assert_error(response, 403, "forbidden_role")
    assert (await admin.get(templates_url("alpha"))).json() == [template]


async def test_no_key_or_a_bad_key_is_401(
    api: ApiHarness, admin: httpx.AsyncClient, alpha: SessionRecord
) -> None:
    template = await create(admin, "alpha")
    for client in (api.client(), api.client("ehk_not-a-real-key")):
        for method, url, payload in [
            ("GET", templates_url("alpha"), None),
            ("POST", templates_url("alpha"), {"name": "n", "body": "b"}),
            ("GET", templates_url("alpha", template["id"]), None),
            ("PUT", templates_url("alpha", template["id"]), {"body": "b"}),
            ("DELETE", templates_url("alpha", template["id"]), None),
            ("POST", templates_url("alpha", template["id"], "render"), {"variables": {}}),
            ("GET", templates_url("nope"), None),  # 401 first: no session names leak
        ]:
            response = await client.request(method, url, json=payload)
            assert_error(response, 401, "unauthorized")
    assert (await admin.get(templates_url("alpha"))).json() == [template]


# ----------------------------------------------------------------------------- OpenAPI


async def test_openapi_documents_the_routes_and_camel_case_models(
    admin: httpx.AsyncClient,
) -> None:
    spec = (await admin.get("/api/openapi.json")).json()
    collection = spec["paths"]["/api/sessions/{sessionId}/templates"]
    item = spec["paths"]["/api/sessions/{sessionId}/templates/{templateId}"]
    render_path = spec["paths"]["/api/sessions/{sessionId}/templates/{templateId}/render"]
    assert set(collection) == {"get", "post"}
    assert set(item) == {"get", "put", "delete"}
    assert set(render_path) == {"post"}
    assert "201" in collection["post"]["responses"]
    assert "204" in item["delete"]["responses"]
    assert {p["name"] for p in item["put"]["parameters"]} >= {"sessionId", "templateId"}

    schemas = spec["components"]["schemas"]
    assert set(schemas["TemplateOut"]["properties"]) == TEMPLATE_FIELDS
    assert schemas["TemplateCreate"]["additionalProperties"] is False
    assert schemas["TemplateCreate"]["properties"]["name"]["maxLength"] == NAME_MAX
    assert set(schemas["RenderResult"]["properties"]) == {"text", "bytes"}
    ok = collection["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok["items"]["$ref"].endswith("/TemplateOut")
