"""gunicorn settings: ONE worker process with threads, because recognizer state cannot move
between processes; scale by running more pods. Values come from ``DECODER_*`` variables."""

from __future__ import annotations

import os
from typing import Any

from decoder_api.config import load_settings

_settings = load_settings(os.environ)

wsgi_app = "decoder_api.http.app:create_app()"
bind = [f"{_settings.host}:{_settings.port}"]
workers = 1
worker_class = "decoder_api.http.worker.StreamingThreadWorker"  # gthread, see its docstring
threads = _settings.threads
graceful_timeout = _settings.graceful_timeout_s
timeout = 120
keepalive = 75
limit_request_line = 8190
errorlog = "-"
loglevel = os.environ.get("DECODER_LOG_LEVEL", "info")
proc_name = "decoder_api"
control_socket_disable = True
# The worker's heartbeat file is touched on every pass of its main loop, i.e. for every keep-alive
# HTTP request; on a disk-backed /tmp that was about a tenth of the worker's samples with small
# chunks. In memory where there is one (every Linux host and OpenShift pod has /dev/shm).
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
# Kaldi and CTranslate2 allocate from many threads; few malloc arenas keep RSS from creeping.
raw_env = ["MALLOC_ARENA_MAX=2"]


def worker_exit(server: Any, worker: Any) -> None:
    """After in-flight requests finished: flush every open session's finals, then free them."""
    app = getattr(worker, "wsgi", None)
    service = getattr(app, "extensions", {}).get("decoder") if app is not None else None
    if service is not None:
        server.log.info("draining sessions before exit")
        service.close()
