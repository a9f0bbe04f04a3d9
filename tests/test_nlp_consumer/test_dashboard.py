"""The dashboard: its HTTP API, and the page driven in headless Chromium against the real broker."""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, expect, sync_playwright

from contract.events import rfc3339_utc
from contract.kafka import KafkaClientSettings
from devtools.processes import ROOT, ServiceProcess, free_port, http_ready
from nlp_consumer.config import DashboardSettings
from nlp_consumer.dashboard import create_app
from nlp_consumer.dashboard.state import CallBoard
from nlp_consumer.enrich import Enricher
from nlp_consumer.summary import CallSummarizer, CallTurns, HeardTurn, load_embedder
from tests.kafka import TopicFactory
from tests.test_nlp_consumer.conftest import Turn, produce, transcript_event
from tests.test_nlp_consumer.test_call_summary import call_ended, two_speaker_call
from tests.test_nlp_consumer.test_state import enriched

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
ARTIFACTS = ROOT / "tests" / "artifacts"
EXPIRE_S = 15
ENRICHMENT = ("sentiment", "explanation", "keywords")


def test_api_serves_snapshot_detail_and_stream() -> None:
    board = CallBoard(expire_s=60)
    board.add(enriched("call-a", 0, "POSITIVE", "thanks a lot"))
    app = create_app(DashboardSettings(KafkaClientSettings("unused"), push_ms=50), board)
    client = app.test_client()

    calls = client.get("/api/calls").get_json()
    assert [c["id"] for c in calls["calls"]] == ["call-a"]
    assert client.get("/api/calls/call-a").get_json()["transcript"][0]["text"] == "thanks a lot"
    assert client.get("/api/calls/nope").status_code == 404
    assert b"<table" in client.get("/").data and client.get("/static/app.js").status_code == 200

    stream = client.get("/api/stream", buffered=False)
    chunk = next(iter(stream.response))
    first = chunk.decode() if isinstance(chunk, bytes) else str(chunk)
    assert first.startswith("event: snapshot") and '"call-a"' in first
    app.extensions["dashboard_closing"].set()
    stream.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class DashboardFactory:
    """``start(expire_s)``: a dashboard process reading a fresh topic; (page URL, topic)."""

    def __init__(self, bootstrap: str, topic_factory: TopicFactory, log_dir: Path) -> None:
        self.bootstrap = bootstrap
        self.topic_factory = topic_factory
        self.log_dir = log_dir
        self.processes: list[ServiceProcess] = []
        self.summary_topics: dict[str, str] = {}  # page URL -> its call summaries topic

    def start(self, expire_s: float) -> tuple[str, str]:
        topic, summaries = self.topic_factory("enriched"), self.topic_factory("summary")
        port = free_port()
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "DASHBOARD_TOPIC": topic,
            "DASHBOARD_SUMMARY_TOPIC": summaries,
            "DASHBOARD_PORT": str(port),
            "DASHBOARD_EXPIRE_S": str(expire_s),
            "DASHBOARD_PUSH_MS": "200",
        }
        url = f"http://127.0.0.1:{port}"
        log = self.log_dir / f"dashboard-{port}.log"
        ready = http_ready(f"{url}/healthz")
        process = ServiceProcess("dashboard", ["-m", "nlp_consumer.dashboard"], env, log, ready)
        self.processes.append(process.start())
        self.summary_topics[url] = summaries
        return url, topic


@pytest.fixture
def dashboards(
    kafka_bootstrap: str, topic_factory: TopicFactory, tmp_path: Path
) -> Iterator[DashboardFactory]:
    factory = DashboardFactory(kafka_bootstrap, topic_factory, tmp_path)
    yield factory
    for process in factory.processes:
        assert process.stop() == 0, process.tail()


def publish(bootstrap: str, topic: str, documents: list[dict[str, Any]]) -> None:
    """Produce enriched documents as if their utterances were spoken just now."""
    now = rfc3339_utc()
    records = [(d["session_id"].encode(), json.dumps(d | {"produced_at": now}).encode()) for d in documents]
    produce(bootstrap, topic, records)


def enriched_document(session_id: str, utterance: int, label: str, text: str) -> dict[str, Any]:
    """A valid transcript.enriched.v1 document without running the model."""
    return (
        transcript_event(session_id, utterance, text).to_dict()
        | {k: v for k, v in enriched(session_id, utterance, label, text).items() if k in ENRICHMENT}
        | {
            "schema": "transcript.enriched.v1",
            "analyzer": {"model": "test", "version": "1"},
            "enriched_at": rfc3339_utc(),
        }
    )


def enrich_turns(enricher: Enricher, session_id: str, turns: list[Turn]) -> list[dict[str, Any]]:
    events = [transcript_event(session_id, t.utterance, t.text, user_id=f"agent-{t.call[-1]}") for t in turns]
    return enricher.enrich([e.to_dict() for e in events])


@pytest.mark.timeout(1800)
def test_a_call_appears_updates_and_expires_in_the_browser(
    browser: Browser,
    dashboards: DashboardFactory,
    kafka_bootstrap: str,
    enricher: Enricher,
    manifest_turns: list[Turn],
) -> None:
    call0 = [t for t in manifest_turns if t.call == "call0"]
    session = f"call0-{uuid.uuid4().hex[:6]}"
    others = [
        [t for t in manifest_turns if t.call == other][:4] for other in ("call1", "call3", "call4", "call5")
    ]
    url, topic = dashboards.start(expire_s=EXPIRE_S)
    page: Page = browser.new_page(viewport={"width": 1440, "height": 900})
    page.goto(url)
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")

    documents = enrich_turns(enricher, session, call0)
    background = [enrich_turns(enricher, f"{t[0].call}-{uuid.uuid4().hex[:6]}", t) for t in others]
    publish(kafka_bootstrap, topic, documents[:1])
    row = page.locator(f'tr[data-call-id="{session}"]')
    expect(row).to_be_visible(timeout=30_000)
    expect(row).to_contain_text(call0[0].text)

    for call in background:
        publish(kafka_bootstrap, topic, call)
    publish(kafka_bootstrap, topic, documents[1:7])
    expect(row).to_contain_text(call0[6].text, timeout=30_000)
    expect(row).to_have_attribute("data-label", documents[6]["sentiment"]["label"])
    expect(page.locator("#call-rows tr")).to_have_count(5)
    assert page.locator("#call-rows tr").first.get_attribute("data-call-id") == session

    row.click()
    expect(page.locator("#timeline circle")).to_have_count(7)
    expect(page.locator("#transcript li")).to_have_count(7)
    negative = page.locator('#transcript li[data-utterance="2"] mark.w-neg')
    expect(negative.first).to_have_text("frustrating,")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

    publish(kafka_bootstrap, topic, documents[7:])
    expect(page.locator("#transcript li")).to_have_count(len(call0), timeout=30_000)
    expect(row).to_be_hidden(timeout=(EXPIRE_S + 20) * 1000)  # expired after EXPIRE_S without a turn
    expect(page.locator("#detail")).to_be_hidden()
    expect(page.locator("#empty")).to_be_visible(timeout=30_000)
    page.close()


def test_many_calls_at_once_keep_the_page_responsive(
    browser: Browser, dashboards: DashboardFactory, kafka_bootstrap: str
) -> None:
    url, topic = dashboards.start(expire_s=300)
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    page.goto(url)
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    calls, turns = 300, 5
    documents = [
        enriched_document(
            f"bulk-{n:03d}", u, ("POSITIVE", "NEUTRAL", "NEGATIVE")[(n + u) % 3], f"turn {u} of call {n}"
        )
        for u in range(turns)
        for n in range(calls)
    ]
    publish(kafka_bootstrap, topic, documents)
    expect(page.locator("#count-all")).to_have_text(str(calls), timeout=60_000)
    expect(page.locator('tr[data-call-id="bulk-000"]')).to_contain_text(
        f"turn {turns - 1} of call 0", timeout=30_000
    )
    started = time.monotonic()
    assert page.evaluate("document.querySelectorAll('#call-rows tr').length") == calls
    assert time.monotonic() - started < 2  # the main thread is not stalled
    page.close()


def pixel(png: bytes, x: float, y: float) -> tuple[int, int, int]:
    with Image.open(io.BytesIO(png)) as image:
        r, g, b = image.convert("RGB").getpixel((int(x), int(y)))  # type: ignore[misc]
        return int(r), int(g), int(b)


def near(colour: tuple[int, int, int], hex_colour: str, tolerance: int = 40) -> bool:
    wanted = tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return all(abs(a - b) <= tolerance for a, b in zip(colour, wanted, strict=True))


@pytest.mark.timeout(1800)
def test_a_two_speaker_call_shows_two_lanes_and_its_summary_card(
    browser: Browser,
    dashboards: DashboardFactory,
    kafka_bootstrap: str,
    enricher: Enricher,
    manifest_turns: list[Turn],
) -> None:
    session = f"stereo-{uuid.uuid4().hex[:6]}"
    events = two_speaker_call(session, manifest_turns)
    documents = enricher.enrich([e.to_dict() for e in events])
    call = CallTurns(session, events[0].user_id)
    for document in documents:
        call.add(HeardTurn.from_enriched(document))
    summarizer = CallSummarizer(load_embedder(None), enricher.analyzer.info.to_dict())
    summary = summarizer.summarize(call, call_ended(events, ("agent", "customer"))).to_dict()
    url, topic = dashboards.start(expire_s=300)
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    page.goto(url)
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")

    publish(kafka_bootstrap, topic, documents)
    row = page.locator(f'tr[data-call-id="{session}"]')
    expect(row).to_contain_text(events[-1].text, timeout=30_000)
    row.click()
    lanes = page.locator("#lanes")
    for speaker in ("agent", "customer"):
        expect(lanes.locator(f'rect.turn-bar[data-speaker="{speaker}"]')).to_have_count(5)
        expect(page.locator(f'#conversation li.turn[data-speaker="{speaker}"]')).to_have_count(5)
    expect(page.locator("#conversation li.turn.lane-0").first).to_have_attribute("data-speaker", "agent")
    expect(page.locator("#conversation li.turn.lane-1").first).to_have_attribute("data-speaker", "customer")
    for document in documents:  # each sentence's sentiment, as the consumer gave it
        label = document["sentiment"]["label"]
        bar = lanes.locator(f'rect.turn-bar[data-utterance="{document["utterance"]}"]')
        expect(bar).to_have_attribute("class", f"turn-bar {label}")
        bubble = page.locator(f'#conversation li[data-utterance="{document["utterance"]}"] .badge')
        expect(bubble).to_have_class(f"badge {label}")
    expect(page.locator("#transcript-section")).to_be_hidden()
    expect(page.locator("#summary-card")).to_be_hidden()

    produce(
        kafka_bootstrap, dashboards.summary_topics[url], [(session.encode(), json.dumps(summary).encode())]
    )
    card = page.locator("#summary-card")
    expect(card).to_be_visible(timeout=30_000)
    expect(card.locator("tr[data-speaker]")).to_have_count(2)
    customer = summary["speakers"][1]
    expect(card.locator('tr[data-speaker="customer"] td.overall .badge')).to_have_class(
        f"badge {customer['sentiment']['overall']['label']}"
    )
    expect(card.locator('.moment[data-speaker="customer"]')).to_contain_text(
        customer["most_negative"]["text"]
    )
    expect(card.locator(".extract li")).to_have_count(len(summary["summary"]["sentences"]))
    expect(row.locator(".ended")).to_be_visible()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-call.png"), full_page=True)

    # The picture, not only the DOM: each bar is drawn in its sentiment's colour on its lane.
    lanes.scroll_into_view_if_needed()
    origin = lanes.bounding_box()
    assert origin is not None
    png = lanes.screenshot()
    colours = {"POSITIVE": "#16a34a", "NEUTRAL": "#64748b", "NEGATIVE": "#dc2626"}
    for document in documents:
        box = lanes.locator(f'rect.turn-bar[data-utterance="{document["utterance"]}"]').bounding_box()
        assert box is not None
        centre = pixel(
            png, box["x"] - origin["x"] + box["width"] / 2, box["y"] - origin["y"] + box["height"] / 2
        )
        assert near(centre, colours[document["sentiment"]["label"]]), (document["utterance"], centre)
    agent_lane = lanes.locator('rect.lane[data-speaker="agent"]').bounding_box()
    customer_lane = lanes.locator('rect.lane[data-speaker="customer"]').bounding_box()
    assert agent_lane is not None and customer_lane is not None and customer_lane["y"] > agent_lane["y"]
    assert near(
        pixel(png, agent_lane["x"] - origin["x"] + 2, agent_lane["y"] - origin["y"] + 2), "#eef2ff", 12
    )
    assert near(
        pixel(png, customer_lane["x"] - origin["x"] + 2, customer_lane["y"] - origin["y"] + 2), "#fdf4e7", 12
    )
    page.close()
