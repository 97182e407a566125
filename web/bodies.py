"""The JSON bodies of the POSTs, and how they are read without FastAPI's routing.

Each body is a pydantic model (``Body``): the model is its documentation on the
OpenAPI page, but no request is parsed by pydantic. An endpoint registered with
``post_with_body`` reads its request's body with ``fields_of`` (msgspec, with
pydantic's messages), and ``Guard`` (``web/guard.py``) calls it directly from
``app.state.plain_posts``, skipping FastAPI's routing, dependency solving and
validation. The query parameters of the GETs (``ServerQuery``, ``LimitQuery``)
are FastAPI's as usual.
"""
from __future__ import annotations

from typing import Annotated

import msgspec
from fastapi import FastAPI, Query, Request
from pydantic import BaseModel, ConfigDict

from clients.connection import ClientError
from common import protocol


class Body(BaseModel):
    """A JSON body of string fields, all required: unknown fields are refused, as on the
    wire (``forbid_unknown_fields``); the values are checked by ``protocol.request``.

    The model is the body's documentation (the OpenAPI page); ``fields_of`` reads a
    request's body against it without pydantic, with pydantic's messages."""
    model_config = ConfigDict(extra="forbid", strict=True)


class Credentials(Body):
    user: str
    password: str


class PostBody(Body):
    text: str


class TargetBody(Body):
    user: str


class DmBody(Body):
    to: str
    text: str


NOT_AN_OBJECT = "body: Input should be a valid dictionary or object to extract fields from"


async def fields_of(request: Request, model: type[Body]) -> dict[str, str]:
    """The request's JSON body, checked against ``model`` (every field present and a
    string, no other): ClientError(bad_request) naming the first problem, missing and
    mistyped fields first, in the model's order, then unknown ones."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if not (media_type == "application/json" or
            (media_type.startswith("application/") and media_type.endswith("+json"))):
        raise ClientError(protocol.ERR_BAD_REQUEST, NOT_AN_OBJECT)
    raw = await request.body()
    if not raw:
        raise ClientError(protocol.ERR_BAD_REQUEST, "body: Field required")
    try:
        data = protocol.loads(raw)
    except msgspec.DecodeError:
        raise ClientError(protocol.ERR_BAD_REQUEST, "body: JSON decode error") from None
    if not isinstance(data, dict):
        raise ClientError(protocol.ERR_BAD_REQUEST, NOT_AN_OBJECT)
    for name in model.model_fields:
        if name not in data:
            raise ClientError(protocol.ERR_BAD_REQUEST, f"{name}: Field required")
        if not isinstance(data[name], str):
            raise ClientError(protocol.ERR_BAD_REQUEST, f"{name}: Input should be a valid string")
    for name in data:
        if name not in model.model_fields:
            raise ClientError(protocol.ERR_BAD_REQUEST,
                              f"{name[:40]}: Extra inputs are not permitted")
    return data


def documented_body(model: type[Body]) -> dict:
    """``openapi_extra`` of a route whose endpoint reads ``model`` with ``fields_of``."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": model.model_json_schema()}}}}


def post_with_body(app: FastAPI, path: str, model: type[Body], **doc):
    """``@app.post(path)`` for an endpoint ``f(request)`` that reads a ``model`` body
    with ``fields_of``. FastAPI documents it (OpenAPI) and would answer it, but
    ``Guard`` answers it first (``app.state.plain_posts``): FastAPI's per-request
    machinery cost ~60 of the ~90 µs a post took in-process, and four times that
    in a loaded gateway."""
    def register(endpoint):
        app.post(path, openapi_extra=documented_body(model), **doc)(endpoint)
        app.state.plain_posts[path] = endpoint
        return endpoint
    return register


ServerQuery = Annotated[int | None, Query(description="Ask this server only (1-99).")]
LimitQuery = Annotated[int, Query(description=f"1 to {protocol.MAX_LIMIT}.")]
