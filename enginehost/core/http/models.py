"""Base classes of the API's JSON models, and the type of a route's error responses.

The API speaks camelCase (OpenWA's contract) while the code uses snake_case: every
model takes and gives camelCase aliases and accepts the field names as well. Request
bodies refuse unknown fields, so a misspelt field is a 422 rather than silently ignored.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

__all__ = ["CamelModel", "RequestModel", "Responses"]


class CamelModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class RequestModel(CamelModel):
    model_config = ConfigDict(extra="forbid")  # merged with CamelModel's


Responses = dict[int | str, dict[str, Any]]
"""A route's documented responses beyond its success (FastAPI's ``responses=``)."""
