"""``GET /api/webhooks/events``: the event catalogue, for receivers and tooling.

The answer is the same for every caller and changes only with the code, so it is
encoded once (:func:`~enginehost.core.webhooks.catalogue.catalogue_json`) and sent as is.
Any valid key may read it: it names no session and holds no secret.
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from enginehost.core.auth.roles import Role
from enginehost.core.http.auth import Scope, requires
from enginehost.core.webhooks.catalogue import CATALOGUE_VERSION, catalogue_json

__all__ = ["router"]

router = APIRouter(tags=["webhooks"])

_EXAMPLE_EVENT = {
    "event": "session.qr",
    "description": "A QR code to scan while pairing; a new one follows each time it rotates.",
    "subscribable": True,
    "dataSchema": {"type": "object", "properties": {"sessionName": {"type": "string"}}},
}


@router.get(
    "/webhooks/events",
    summary="The event catalogue: every event and the JSON schema of its data",
    dependencies=[requires(Role.VIEWER, Scope.ANY)],
    response_class=Response,
    responses={
        200: {
            "description": "The catalogue: `version`, `allEvents` (the subscription to every "
            "event), the JSON schemas of the delivery `envelope` and of the `truncation` "
            "marker, and `events`: each event's name, description, whether webhooks can "
            "subscribe to it, and the JSON schema of its `data`.",
            "content": {
                "application/json": {
                    "example": {
                        "version": CATALOGUE_VERSION,
                        "allEvents": "*",
                        "envelope": {"type": "object"},
                        "truncation": {"type": "object"},
                        "events": [_EXAMPLE_EVENT],
                    }
                }
            },
        }
    },
)
async def event_catalogue() -> Response:
    """The events webhooks and the live stream carry, version `version` of the catalogue
    (see docs/events.md for examples). Adding events or fields keeps the version;
    removing or renaming anything bumps it."""
    return Response(content=catalogue_json(), media_type="application/json")
