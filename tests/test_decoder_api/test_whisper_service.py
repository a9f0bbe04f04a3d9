"""The served whisper engine over ``/v1/stream``: partials decoded off the request path reach the caller."""

from __future__ import annotations

import json
import time

from decoder_api.audio import decode_file
from devtools.evaluation import ManifestEntry, normalize, word_error_rate
from devtools.processes import DecoderServer
from tests.conftest import RATE_HZ
from tests.test_decoder_api.test_stream_ws import CHUNK, CHUNK_MS, connect, metric, reply

PACE = 1.0  # real time, as a caller speaks: a background partial (~0.2 s to decode on an idle machine,
# seconds while the other test worker loads both cores) still arrives within a turn


def test_partials_decoded_in_the_background_reach_the_caller_and_the_metrics(
    whisper_server: DecoderServer, manifest: list[ManifestEntry]
) -> None:
    turns = [e for e in manifest if e.path.name == "call0.wav" and e.turn in (0, 1)]
    end_s = turns[-1].start_s + turns[-1].seconds + 1.0  # and the pause that ends the second turn
    pcm = decode_file(turns[0].path, RATE_HZ).pcm[: int(end_s * RATE_HZ) * 2]
    published_before = metric(whisper_server, "decoder_partial_lag_seconds_count")
    ws = connect(whisper_server)
    try:
        ws.send(json.dumps({"config": {"sample_rate": RATE_HZ}}))
        replies = []
        for start in range(0, len(pcm), CHUNK):
            ws.send_binary(pcm[start : start + CHUNK])
            replies.append(reply(ws))
            time.sleep(CHUNK_MS / 1000 / PACE)
        ws.send(json.dumps({"eof": 1}))
        replies.append(reply(ws))
    finally:
        ws.close()
    partials = [r["partial"] for r in replies if r.get("partial")]
    finals = [r["text"] for r in replies if r.get("text")]
    assert partials, replies
    reference = " ".join(t.transcript for t in turns)
    assert len(finals) == len(turns)
    assert word_error_rate([reference], [" ".join(finals)]) <= 0.15, finals
    spoken = set(normalize(reference).split())
    assert any(set(normalize(p).split()) & spoken for p in partials), partials
    assert metric(whisper_server, "decoder_partial_lag_seconds_count") > published_before
    assert metric(whisper_server, "decoder_partial_backlog") == 0
