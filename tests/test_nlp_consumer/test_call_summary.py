"""Call summaries: the summariser on its own, and once per call through the real consumer and broker,
with the consumer SIGKILLed mid-call and again between producing a summary and committing it."""

from __future__ import annotations

import json
import signal
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Message, TopicPartition

from contract.events import CallEndedEvent, CallSummaryEvent, TranscriptEvent, rfc3339_utc
from devtools.clients import HttpSession
from devtools.processes import start_decoder
from nlp_consumer.calls import OpenCalls
from nlp_consumer.summary import CallSummarizer, CallTurns, HeardTurn, SentenceEmbedder, load_embedder
from tests.conftest import RATE_HZ, StereoCall
from tests.kafka import PARTITIONS, TopicFactory, wait_for
from tests.test_nlp_consumer.conftest import ConsumerRunner, Turn, produce

pytestmark = pytest.mark.timeout(1800)  # the first test of a fresh machine trains the model

AGENT_LINES = (
    "Thank you for calling the customer care line, my name is Sam.",
    "Could you give me your order number, please?",
    "I can see the order, it was delivered to your address on Tuesday.",
    "I will send a replacement today and arrange a courier to collect the broken one.",
    "The courier will come tomorrow morning, and the return label is in your inbox.",
)
MS_PER_WORD = 330


@pytest.fixture(scope="module")
def embedder() -> SentenceEmbedder:
    return load_embedder(None)


def two_speaker_call(session_id: str, manifest_turns: list[Turn]) -> list[TranscriptEvent]:
    """An agent (channel 0) and an unhappy customer (channel 1, call4's first turns), turn about,
    with gaps between the turns and one answer overlapping the question before it."""
    customer = [t.text for t in manifest_turns if t.call == "call4"][:5]
    lines = [line for pair in zip(AGENT_LINES, customer, strict=True) for line in pair]
    events, start_ms = [], 400
    for utterance, text in enumerate(lines):
        channel = utterance % 2
        duration_ms = len(text.split()) * MS_PER_WORD
        if utterance == 5:
            start_ms -= 1200  # starts 500 ms before the agent's turn before it ends
        events.append(
            TranscriptEvent(
                session_id=session_id,
                user_id="agent-7",
                utterance=utterance,
                text=text,
                start_ms=start_ms,
                end_ms=start_ms + duration_ms,
                engine="whisper",
                model="tiny.en",
                language="en",
                produced_at=rfc3339_utc(),
                channel=channel,
                speaker=("agent", "customer")[channel],
            )
        )
        start_ms += duration_ms + 700
    return events


def call_ended(
    events: Sequence[TranscriptEvent], speakers: tuple[str, ...], tail_ms: int = 1500
) -> CallEndedEvent:
    first = events[0]
    return CallEndedEvent(
        session_id=first.session_id,
        user_id=first.user_id,
        reason="normal",
        started_at=rfc3339_utc(),
        ended_at=rfc3339_utc(),
        audio_ms=max(e.end_ms for e in events) + tail_ms,
        channels=len(speakers) or 1,
        speakers=speakers,
        finals=len(events),
        engine=first.engine,
        model=first.model,
        language=first.language,
        produced_at=rfc3339_utc(),
    )


def mono_call(session_id: str, manifest_turns: list[Turn]) -> list[TranscriptEvent]:
    texts = [t.text for t in manifest_turns if t.call == "call1"][:4]
    return [
        TranscriptEvent(session_id, "", u, text, u * 4000, u * 4000 + 3000, "vosk", "en", "en", rfc3339_utc())
        for u, text in enumerate(texts)
    ]


def heard(event: TranscriptEvent, polarity: float) -> HeardTurn:
    document = event.to_dict() | {
        "sentiment": {"label": "NEUTRAL", "polarity": polarity, "score": 1.0},
        "explanation": [],
    }
    return HeardTurn.from_enriched(document)


def test_the_summariser_counts_each_speaker_and_picks_central_sentences_in_call_order(
    embedder: SentenceEmbedder, manifest_turns: list[Turn]
) -> None:
    events = two_speaker_call("unit-call", manifest_turns)
    call = CallTurns("unit-call", "agent-7")
    for event in events:
        call.add(heard(event, -0.8 if event.speaker == "customer" and event.utterance in (3, 5) else 0.4))
    ended = call_ended(events, ("agent", "customer"))
    summary = CallSummarizer(embedder, {"model": "m", "version": "1"}).summarize(call, ended)

    assert CallSummaryEvent.from_json(summary.to_json()).to_dict() == summary.to_dict()  # valid
    agent, customer = summary.speakers
    assert (agent.speaker, agent.channel, customer.speaker, customer.channel) == ("agent", 0, "customer", 1)
    for speaker in summary.speakers:
        own = [e for e in events if e.speaker == speaker.speaker]
        assert speaker.turns == len(own) and speaker.talk_ms == sum(e.end_ms - e.start_ms for e in own)
    assert customer.most_negative is not None and customer.most_negative.utterance == 3  # first of the lows
    assert agent.most_negative is None and agent.overall is not None and agent.overall.label == "POSITIVE"
    spoken = sum(e.end_ms - e.start_ms for e in events) - 500  # the overlap counts once
    assert summary.silence_share == pytest.approx(1 - spoken / summary.duration_ms, abs=1e-3)
    texts = [e.text for e in events]
    chosen = [s.text for s in summary.sentences]
    assert len(chosen) == 3 and all(text in texts for text in chosen)
    assert [s.utterance for s in summary.sentences] == sorted(s.utterance for s in summary.sentences)


def test_a_mono_call_is_one_caller_and_an_empty_call_is_summarised_too(
    embedder: SentenceEmbedder, manifest_turns: list[Turn]
) -> None:
    events = mono_call("mono", manifest_turns)
    call = CallTurns("mono", "")
    for event in events:
        call.add(heard(event, 0.0))
    summarizer = CallSummarizer(embedder, {"model": "m", "version": "1"})
    summary = summarizer.summarize(call, call_ended(events, ()))
    [caller] = summary.speakers
    assert (caller.speaker, caller.channel, caller.turns) == ("caller", None, len(events))
    empty = summarizer.summarize(None, call_ended(events, ()))
    assert (empty.finals, empty.finals_expected, empty.sentences, empty.silence_share) == (0, 4, (), 1.0)


def test_open_calls_hold_the_commit_at_their_first_message() -> None:
    calls = OpenCalls(max_calls=2)
    turn = HeardTurn(0, "hello there", 0, 1000, "caller", None, "NEUTRAL", 0.0)
    calls.add(("t", 0), 10, "a", "", turn)
    calls.add(("t", 0), 12, "b", "", turn)
    calls.add(("t", 1), 3, "c", "", turn)  # a third call: the least recently active (a) is abandoned
    assert calls.resume_offset(("t", 0), 20) == 12 and calls.resume_offset(("t", 1), 5) == 3
    assert calls.pop("b") is not None and calls.resume_offset(("t", 0), 20) == 20
    calls.drop_partitions([("t", 1)])
    assert len(calls) == 0


# --- through the consumer ------------------------------------------------------------------------


def read_all(bootstrap: str, topic: str) -> list[Message]:
    """Every message of ``topic``, up to the current end."""
    reader = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"read-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "log_level": 0,
        }
    )
    try:
        ends = {
            p: reader.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(PARTITIONS)
        }
        reader.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        messages: list[Message] = []

        def caught_up() -> bool:
            for message in reader.consume(100, 0.2):
                if message.error() is None:
                    messages.append(message)
            positions = reader.position([TopicPartition(topic, p) for p in range(PARTITIONS)])
            return all(p.offset >= ends[p.partition] or ends[p.partition] == 0 for p in positions)

        wait_for(caught_up, 60, f"the end of {topic}")
        return messages
    finally:
        reader.close()


def event_ids(messages: list[Message]) -> Counter[str]:
    return Counter(json.loads(m.value() or b"")["event_id"] for m in messages)


def records(events: Sequence[TranscriptEvent | CallEndedEvent]) -> list[tuple[bytes | None, bytes | None]]:
    return [(e.key, e.to_json()) for e in events]


def test_one_summary_per_call_though_the_consumer_is_killed_mid_call_and_before_committing_it(
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    consumer_runner: ConsumerRunner,
    manifest_turns: list[Turn],
) -> None:
    source, enriched, dlq, summaries = (topic_factory(p) for p in ("in", "enriched", "dlq", "summary"))
    tag = uuid.uuid4().hex[:6]
    stereo = two_speaker_call(f"stereo-{tag}", manifest_turns)
    mono = mono_call(f"mono-{tag}", manifest_turns)
    env = {
        "NLP_SUMMARY_TOPIC": summaries,
        "NLP_SESSION_TIMEOUT_MS": "6000",
        "NLP_BATCH_SIZE": "4",
    }
    group = f"nlp-{tag}"

    def run(module: str = "nlp_consumer") -> Any:
        return consumer_runner(source, enriched, dlq, group, module=module, **env)

    # 1. half of the stereo call is enriched, then the consumer is SIGKILLed with the call open
    produce(kafka_bootstrap, source, records(stereo[:5]))
    first = run()
    wait_for(lambda: len(read_all(kafka_bootstrap, enriched)) >= 5, 300, "5 enriched finals")
    first.process.stop(signal.SIGKILL)

    # 2. the rest of both calls and their ends; this consumer dies between producing a summary
    #    (acknowledged by the broker) and committing its offsets
    produce(kafka_bootstrap, source, records([*stereo[5:], call_ended(stereo, ("agent", "customer"))]))
    mono_end = call_ended(mono, ())
    produce(kafka_bootstrap, source, records([*mono, mono_end, mono_end]))  # the end redelivered
    crashing = run("tests.test_nlp_consumer.crashing_consumer")
    wait_for(lambda: not crashing.process.alive, 300, "the consumer to die before its commit")
    assert crashing.process.process is not None and crashing.process.process.returncode == -signal.SIGKILL
    assert "killed before committing a summary" in crashing.process.tail()

    # 3. a healthy consumer finishes the job
    last = run()
    wanted = {f"{stereo[0].session_id}:summary", f"{mono[0].session_id}:summary"}
    wait_for(
        lambda: set(event_ids(read_all(kafka_bootstrap, summaries))) >= wanted,
        300,
        "both summaries",
    )
    assert last.process.stop(signal.SIGTERM) == 0

    found = read_all(kafka_bootstrap, summaries)
    counts = event_ids(found)
    assert set(counts) == wanted and all(n <= 2 for n in counts.values())
    # Only what the killed consumer delivered before its commit was sent again: the same event id,
    # key and content, so a subscriber that drops a seen event id (or the compacted topic) keeps one.
    assert sum(counts.values()) > len(wanted)
    for again in [key for key, n in counts.items() if n == 2]:
        copies = [m for m in found if json.loads(m.value() or b"")["event_id"] == again]
        first, second = (json.loads(m.value() or b"") | {"produced_at": ""} for m in copies)
        assert first == second and copies[0].key() == copies[1].key()
    enriched_ids = event_ids(read_all(kafka_bootstrap, enriched))
    assert set(enriched_ids) == {e.event_id for e in [*stereo, *mono]}  # every final, enriched
    assert sum(enriched_ids.values()) - len(enriched_ids) <= 8  # at most the two killed batches again

    by_id = {json.loads(m.value() or b"")["event_id"]: m for m in found}
    message = by_id[f"{stereo[0].session_id}:summary"]
    assert message.key() == stereo[0].key
    assert dict(message.headers() or [])["schema"] == b"call.summary.v1"
    summary = CallSummaryEvent.from_json(message.value() or b"")
    assert (summary.finals, summary.finals_expected) == (len(stereo), len(stereo))  # every turn
    assert summary.analyzer["runtime"] == "onnx-int8"  # the consumer's default
    agent, customer = summary.speakers
    for speaker in (agent, customer):
        own = [e for e in stereo if e.speaker == speaker.speaker]
        truth = sum(e.end_ms - e.start_ms for e in own)
        assert speaker.turns == len(own)
        assert abs(speaker.talk_ms - truth) <= 0.1 * truth
    # the upset customer's mean polarity is negative (at about -0.3 it sits on the neutral band's edge)
    assert customer.overall is not None and customer.overall.polarity < 0
    assert agent.overall is not None and agent.overall.polarity > customer.overall.polarity
    assert customer.most_negative is not None and customer.most_negative.label == "NEGATIVE"
    assert customer.most_negative.text in [e.text for e in stereo if e.speaker == "customer"]
    assert customer.most_negative.explanation  # the words the explainer found
    texts = [e.text for e in stereo]
    assert 1 <= len(summary.sentences) <= 3
    assert all(s.text in texts for s in summary.sentences)  # extractive: the call's own sentences
    assert [texts.index(s.text) for s in summary.sentences] == sorted(
        texts.index(s.text) for s in summary.sentences
    )

    [caller] = CallSummaryEvent.from_json(by_id[f"{mono[0].session_id}:summary"].value() or b"").speakers
    assert (caller.speaker, caller.turns) == ("caller", len(mono))


def test_a_stereo_call_streamed_through_the_decoder_is_summarised_with_its_talk_times(
    tmp_path: Path,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    consumer_runner: ConsumerRunner,
    stereo_call: StereoCall,
) -> None:
    """The whole pipeline: an unseen two-speaker call streamed over HTTP to the whisper decoder,
    its finals and call.ended through Kafka, the consumer's summary: each speaker's talk time
    within 10 % of what was spoken, their turns, and sentences of the call."""
    source, enriched, dlq, summaries = (topic_factory(p) for p in ("in", "enriched", "dlq", "summary"))
    tag = uuid.uuid4().hex[:6]
    decoder = start_decoder(
        tmp_path,
        {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "KAFKA_TOPIC": source},
        engine="whisper",
        model="tiny.en",
        outbox_dir=str(tmp_path / "outbox"),
    )
    try:
        consumer_runner(source, enriched, dlq, f"nlp-{tag}", NLP_SUMMARY_TOPIC=summaries).wait_assigned()
        call = HttpSession(decoder.url, {"sample_rate": RATE_HZ, "channels": 2}).open()
        chunk = RATE_HZ * 4 // 5  # 200 ms of stereo frames
        for start in range(0, len(stereo_call.pcm), chunk):
            call.send(stereo_call.pcm[start : start + chunk])
        call.end()
        call.close()
    finally:
        decoder.stop()
    found = wait_for(lambda: read_all(kafka_bootstrap, summaries), 180, "the call's summary")
    assert len(found) == 1
    summary = json.loads(found[0].value() or b"")
    assert summary["session_id"] == call.session_id
    assert summary["finals"] == len([f for f in call.finals if f["text"].strip()])
    truth: Counter[str] = Counter()
    turns: Counter[str] = Counter()
    for (channel, _), (start_ms, end_ms) in zip(stereo_call.turns, stereo_call.spans_ms, strict=True):
        truth[("agent", "customer")[channel]] += end_ms - start_ms
        turns[("agent", "customer")[channel]] += 1
    by_speaker = {s["speaker"]: s for s in summary["speakers"]}
    assert set(by_speaker) == {"agent", "customer"}
    for speaker, spoken_ms in truth.items():
        assert abs(by_speaker[speaker]["talk_ms"] - spoken_ms) <= 0.1 * spoken_ms, (
            speaker,
            by_speaker,
            truth,
        )
        assert by_speaker[speaker]["turns"] >= turns[speaker]
    said = " ".join(f["text"] for f in call.finals)
    assert summary["summary"]["sentences"]
    assert all(s["text"] in said for s in summary["summary"]["sentences"])
