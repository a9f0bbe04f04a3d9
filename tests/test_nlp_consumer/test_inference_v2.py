"""Sentiment over the Open Inference Protocol: the dashboard's /v2 endpoints served over real HTTP,
driven by tritonclient, chained after the decoder's own v2 transcript of a recorded turn."""

from __future__ import annotations

import io
import json
import threading
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.http as oip_client
from flask import Flask
from werkzeug.serving import make_server

from contract.kafka import KafkaClientSettings
from devtools.evaluation import ManifestEntry
from devtools.processes import DecoderServer
from nlp_consumer.config import DashboardSettings, ModelSettings
from nlp_consumer.dashboard import create_app
from nlp_consumer.dashboard.inference import SentimentModel
from nlp_consumer.dashboard.state import CallBoard
from nlp_consumer.enrich import load_enricher

DECODER_MODEL = "whisper-tiny.en"


def serve(app: Flask) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def sentiment_url(trained_model: Path) -> Iterator[str]:
    model = SentimentModel(lambda: load_enricher(ModelSettings(model=str(trained_model)))).start()
    assert model.wait(300) and model.ready, model.state
    app = create_app(DashboardSettings(KafkaClientSettings("unused")), CallBoard(60), model)
    yield from serve(app)


def turn_wav(entry: ManifestEntry) -> bytes:
    """One turn of a recorded call, cut out as a WAV file of its own."""
    with wave.open(str(entry.path), "rb") as source:
        rate = source.getframerate()
        source.setpos(int(entry.start_s * rate))
        frames = source.readframes(int(entry.seconds * rate))
        params = source.getparams()
    out = io.BytesIO()
    with wave.open(out, "wb") as target:
        target.setparams(params)
        target.writeframes(frames)
    return out.getvalue()


def text_of(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def test_speech_to_sentiment_runs_over_the_protocol_without_glue(
    sentiment_url: str, whisper_server: DecoderServer, manifest: list[ManifestEntry]
) -> None:
    turn = next(e for e in manifest if e.path.name == "call0.wav" and e.turn == 2)
    assert turn.sentiment == "NEGATIVE"
    speech = oip_client.InferenceServerClient(url=f"127.0.0.1:{whisper_server.port}", network_timeout=300)
    audio = oip_client.InferInput("audio", [1], "BYTES")
    audio.set_data_from_numpy(np.array([turn_wav(turn)], dtype=np.object_))
    transcript = speech.infer(DECODER_MODEL, [audio]).as_numpy("text")

    sentiment = oip_client.InferenceServerClient(url=sentiment_url)
    assert sentiment.is_server_ready() and sentiment.is_model_ready("sentiment")
    assert sentiment.get_model_metadata("sentiment")["inputs"][0]["datatype"] == "BYTES"
    sentences = oip_client.InferInput("text", [1], "BYTES")
    sentences.set_data_from_numpy(transcript.astype(np.object_), binary_data=False)
    result = sentiment.infer("sentiment", [sentences])
    assert [text_of(v) for v in result.as_numpy("label")] == ["NEGATIVE"]
    assert result.as_numpy("polarity")[0] < 0
    explanation = json.loads(text_of(result.as_numpy("explanation")[0]))
    assert "frustrating" in [w["word"].lower() for w in explanation]
    speech.close()
    sentiment.close()


def test_a_batch_is_answered_in_order(sentiment_url: str) -> None:
    body = {
        "id": "batch",
        "inputs": [
            {
                "name": "text",
                "datatype": "BYTES",
                "shape": [2],
                "data": ["Thank you so much, you have been very kind.", "Nobody sent me an update."],
            }
        ],
    }
    response = requests.post(f"http://{sentiment_url}/v2/models/sentiment/infer", json=body, timeout=120)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
    assert outputs["label"][0] == "POSITIVE" and outputs["polarity"][0] > outputs["polarity"][1]
    assert response.json()["id"] == "batch"


def one(text: str) -> dict[str, object]:
    return {"inputs": [{"name": "t", "datatype": "BYTES", "shape": [1], "data": [text]}]}


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("sentiment", {"inputs": [{"name": "text", "datatype": "FP32", "shape": [1], "data": [1]}]}, 400),
        ("sentiment", {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["a"]}]}, 400),
        ("sentiment", {"inputs": []}, 400),
        (
            "sentiment",
            {"inputs": [{"name": "t", "datatype": "BYTES", "shape": [1], "data": ["a" * 3000]}]},
            400,
        ),
        (
            "whisper-tiny.en",
            {"inputs": [{"name": "t", "datatype": "BYTES", "shape": [1], "data": ["a"]}]},
            404,
        ),
    ],
)
def test_mistakes_get_4xx_in_the_protocol_shape(
    sentiment_url: str, path: str, body: dict[str, object], status: int
) -> None:
    response = requests.post(f"http://{sentiment_url}/v2/models/{path}/infer", json=body, timeout=60)
    assert response.status_code == status, response.text
    assert isinstance(response.json()["error"], str)
    too_large = requests.post(f"http://{sentiment_url}/v2/models/sentiment/infer", data=b"x" * (2 << 20))
    assert too_large.status_code == 413 and "error" in too_large.json()


def test_a_model_that_cannot_load_is_not_ready_and_refuses_inference(tmp_path: Path) -> None:
    model = SentimentModel(lambda: load_enricher(ModelSettings(model=str(tmp_path / "none")))).start()
    assert model.wait(120) and not model.ready
    client = create_app(DashboardSettings(KafkaClientSettings("unused")), CallBoard(60), model).test_client()
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 503
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["fine"]}]}
    refused = client.post("/v2/models/sentiment/infer", json=body)
    assert refused.status_code == 503 and "cannot load sentiment model" in refused.get_json()["error"]
