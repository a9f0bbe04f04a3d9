"""The OpenAPI document: a valid OpenAPI 3.0 document that documents every route the app serves."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
from flask import Flask

from decoder_api.http.app import create_app
from decoder_api.http.openapi import openapi_document
from decoder_api.http.routes.compat import DECODE_SCHEMA
from decoder_api.http.routes.stream import CONFIG_SCHEMA
from decoder_api.http.routes.v1 import SESSION_SCHEMA
from decoder_api.http.service import EXTENSION

METHODS = ("get", "put", "post", "delete", "patch", "options", "head", "trace")

# Enough of the OpenAPI 3.0 structure to catch a broken document where the full validator is missing.
OPENAPI_SHAPE: dict[str, Any] = {
    "type": "object",
    "required": ["openapi", "info", "paths", "components"],
    "properties": {
        "openapi": {"type": "string", "pattern": r"^3\.0\.\d+$"},
        "info": {"type": "object", "required": ["title", "version"]},
        "paths": {
            "type": "object",
            "additionalProperties": False,
            "patternProperties": {
                "^/": {
                    "type": "object",
                    "patternProperties": {
                        f"^({'|'.join(METHODS)})$": {
                            "type": "object",
                            "required": ["responses"],
                            "properties": {
                                "responses": {
                                    "type": "object",
                                    "minProperties": 1,
                                    "additionalProperties": False,
                                    "patternProperties": {r"^([1-5]\d\d|default)$": {"type": "object"}},
                                }
                            },
                        }
                    },
                }
            },
        },
        "components": {"type": "object"},
    },
}


@pytest.fixture(scope="module")
def app() -> Iterator[Flask]:
    app = create_app({"engine": "vosk", "model": "ko"})
    yield app
    svc = app.extensions[EXTENSION]
    svc.engine.wait(60)
    svc.close()


@pytest.fixture(scope="module")
def document(app: Flask) -> dict[str, Any]:
    response = app.test_client().get("/openapi.json")
    assert response.status_code == 200
    body = response.get_json()
    assert isinstance(body, dict)
    return body


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method]


def openapi_path(rule: str) -> str:
    """Flask's ``/v1/sessions/<session_id>`` as OpenAPI's ``/v1/sessions/{session_id}``."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def served_operations(app: Flask) -> set[tuple[str, str]]:
    return {
        (openapi_path(rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods or ()
        if method not in {"HEAD", "OPTIONS"}
    }


def test_the_document_validates_with_openapi_spec_validator(document: dict[str, Any]) -> None:
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(document)


def test_the_document_has_the_openapi_structure(document: dict[str, Any]) -> None:
    jsonschema.validate(document, OPENAPI_SHAPE)


def test_every_reference_resolves(document: dict[str, Any]) -> None:
    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                yield node["$ref"]
            for value in node.values():
                yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    found = list(refs(document))
    assert found
    for target in found:
        node: Any = document
        for part in target.removeprefix("#/").split("/"):
            assert part in node, target
            node = node[part]


def test_every_route_is_documented_and_nothing_else(app: Flask, document: dict[str, Any]) -> None:
    documented = {(path, method) for path, method, _ in operations(document)}
    assert served_operations(app) == documented


def test_the_websocket_is_described(document: dict[str, Any]) -> None:
    stream = document["paths"]["/v1/stream"]["get"]
    assert "101" in stream["responses"]
    assert "Vosk" in document["info"]["description"]
    assert set(document["x-websocket"]["close_codes"]) >= {"1000", "1001", "1008", "1011", "1013"}


def test_request_schemas_are_the_ones_the_routes_validate_with(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    assert schemas["SessionOptions"] == SESSION_SCHEMA
    assert schemas["DecodeRequest"] == DECODE_SCHEMA
    assert schemas["StreamConfig"] == CONFIG_SCHEMA
    assert openapi_document() == document
    audio = document["paths"]["/v1/sessions/{session_id}/audio"]["post"]["requestBody"]["content"]
    assert set(audio) == {"application/octet-stream", "audio/L16"}


def test_statuses_errors_and_security_are_documented(document: dict[str, Any]) -> None:
    responses = document["components"]["responses"]
    schemes = document["components"]["securitySchemes"]
    assert schemes["apiKey"]["scheme"] == "bearer"
    assert schemes["sessionToken"] == {**schemes["sessionToken"], "in": "header", "name": "X-Session-Token"}
    assert "Retry-After" in responses["Unavailable"]["headers"]
    for response in responses.values():
        assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    seen: set[str] = set()
    for path, method, op in operations(document):
        codes = set(op["responses"])
        seen |= codes
        assert codes & {"101", "200", "201", "204"}, (path, method)
        if "requestBody" in op:
            assert {"400", "401", "408", "413"} <= codes, (path, method)
        if path.startswith("/v1/sessions/"):
            assert {"401", "403", "404"} <= codes, (path, method)
    assert {"200", "201", "204", "400", "401", "403", "404", "408", "409", "413", "415", "422", "503"} <= seen
