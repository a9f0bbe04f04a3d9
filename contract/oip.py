"""The Open Inference Protocol (KServe V2) REST shapes, shared by the decoder and the NLP service.

Only what both need and nothing of HTTP frameworks: parsing an inference request (JSON, or JSON
followed by binary tensor data when the ``Inference-Header-Content-Length`` header is present, as
``tritonclient`` sends by default), reading the elements of a ``BYTES`` tensor, and building the
response, metadata and error bodies. Anything a client got wrong raises ``ProtocolError``, which
each component answers with ``400 {"error": "..."}``.

A ``BYTES`` element is one of: a JSON string, taken as UTF-8 text unless the tensor's
``parameters.content_type`` is ``"base64"`` (the OIP / MLServer convention for binary content);
or, with the binary extension, a 4-byte little-endian length followed by that many bytes.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

HEADER_LENGTH = "Inference-Header-Content-Length"
BYTES = "BYTES"
BASE64 = "base64"
PROTOCOL = "v2"
MAX_ELEMENTS = 10_000
_LENGTH_PREFIX = struct.Struct("<I")


class ProtocolError(ValueError):
    """The request does not follow the protocol; ``message`` says what to fix."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class Tensor:
    """One input tensor: ``data`` from the JSON, or ``raw`` from the binary part of the body."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    parameters: Mapping[str, Any] = field(default_factory=dict)
    data: Any = None
    raw: bytes | None = None

    @property
    def element_count(self) -> int:
        return math.prod(self.shape)

    @property
    def content_type(self) -> str | None:
        value = self.parameters.get("content_type")
        return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class InferenceRequest:
    """A parsed ``POST /v2/models/<name>/infer`` body; ``outputs`` None means every output."""

    inputs: tuple[Tensor, ...]
    id: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)
    outputs: tuple[str, ...] | None = None

    def single_input(self) -> Tensor:
        """The one input a single-input model takes."""
        if len(self.inputs) != 1:
            raise ProtocolError(f"the model takes exactly one input tensor; got {len(self.inputs)}")
        return self.inputs[0]


def parse_request(body: bytes, header_length: str | None = None) -> InferenceRequest:
    """The request in ``body``; ``header_length`` is the ``Inference-Header-Content-Length`` header."""
    json_part, binary = split_body(body, header_length)
    try:
        document = json.loads(json_part)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise ProtocolError("the inference request is not a JSON object") from None
    if not isinstance(document, dict):
        raise ProtocolError("the inference request is not a JSON object")
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ProtocolError("inputs: a non-empty list of tensors is required")
    blobs = _Blobs(binary)
    tensors = tuple(_tensor(item, index, blobs) for index, item in enumerate(inputs))
    blobs.check_consumed()
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError("id must be a string")
    return InferenceRequest(
        tensors, request_id, _parameters(document.get("parameters"), "parameters"), _outputs(document)
    )


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON part and the binary part of the body."""
    if header_length is None:
        return body, b""
    if not header_length.strip().isdigit():
        raise ProtocolError(f"{HEADER_LENGTH} must be a non-negative integer")
    length = int(header_length)
    if length > len(body):
        raise ProtocolError(f"{HEADER_LENGTH} ({length}) is longer than the body ({len(body)} bytes)")
    return body[:length], body[length:]


class _Blobs:
    """The binary part of a body, handed out to tensors in input order."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._offset = 0

    def take(self, size: int, name: str) -> bytes:
        if self._offset + size > len(self._data):
            raise ProtocolError(f"input {name}: binary_data_size {size} runs past the end of the body")
        chunk = self._data[self._offset : self._offset + size]
        self._offset += size
        return chunk

    def check_consumed(self) -> None:
        if self._offset != len(self._data):
            raise ProtocolError("the body holds binary data that no input's binary_data_size accounts for")


def _tensor(item: Any, index: int, blobs: _Blobs) -> Tensor:
    if not isinstance(item, dict):
        raise ProtocolError(f"inputs/{index}: a tensor must be a JSON object")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise ProtocolError(f"inputs/{index}: name must be a non-empty string")
    datatype = item.get("datatype")
    if not isinstance(datatype, str):
        raise ProtocolError(f"input {name}: datatype must be a string")
    shape = item.get("shape")
    if (
        not isinstance(shape, list)
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        or math.prod(shape) > MAX_ELEMENTS
    ):
        raise ProtocolError(f"input {name}: shape must be a list of non-negative integers")
    parameters = _parameters(item.get("parameters"), f"input {name}: parameters")
    size = parameters.get("binary_data_size")
    if size is None:
        if "data" not in item:
            raise ProtocolError(f"input {name}: data is missing")
        return Tensor(name, datatype, tuple(shape), parameters, data=item["data"])
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ProtocolError(f"input {name}: binary_data_size must be a non-negative integer")
    if "data" in item:
        raise ProtocolError(f"input {name}: data and binary_data_size are exclusive")
    return Tensor(name, datatype, tuple(shape), parameters, raw=blobs.take(size, name))


def _parameters(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(f"{where} must be a JSON object")
    return value


def _outputs(document: Mapping[str, Any]) -> tuple[str, ...] | None:
    outputs = document.get("outputs")
    if outputs is None:
        return None
    if not isinstance(outputs, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs
    ):
        raise ProtocolError("outputs must be a list of objects with a name")
    return tuple(o["name"] for o in outputs)


def bytes_elements(tensor: Tensor, json_strings_are_base64: bool = False) -> list[bytes]:
    """The elements of a ``BYTES`` tensor, in row-major order.

    Content typed ``base64`` is decoded. ``json_strings_are_base64`` makes base64 the default for
    JSON strings (for binary content such as audio, which JSON cannot carry raw).
    """
    if tensor.datatype != BYTES:
        raise ProtocolError(f"input {tensor.name}: datatype must be BYTES, not {tensor.datatype[:20]}")
    content_type = tensor.content_type
    if content_type not in (None, BASE64, "str"):
        raise ProtocolError(f"input {tensor.name}: content_type must be base64 or str")
    if tensor.raw is not None:
        elements = list(_binary_elements(tensor.raw, tensor.name))
        base64_encoded = content_type == BASE64
    else:
        elements = [_json_element(value, tensor.name) for value in _flatten(tensor.data)]
        base64_encoded = content_type == BASE64 or (content_type is None and json_strings_are_base64)
    if len(elements) != tensor.element_count:
        raise ProtocolError(
            f"input {tensor.name}: shape {list(tensor.shape)} holds {tensor.element_count} elements, "
            f"the data {len(elements)}"
        )
    return [_from_base64(e, tensor.name) for e in elements] if base64_encoded else elements


def _binary_elements(raw: bytes, name: str) -> Iterator[bytes]:
    offset = 0
    while offset < len(raw):
        if offset + _LENGTH_PREFIX.size > len(raw):
            raise ProtocolError(f"input {name}: binary BYTES data ends inside a length prefix")
        (length,) = _LENGTH_PREFIX.unpack_from(raw, offset)
        offset += _LENGTH_PREFIX.size
        if offset + length > len(raw):
            raise ProtocolError(f"input {name}: a binary BYTES element runs past its binary_data_size")
        yield raw[offset : offset + length]
        offset += length


def _flatten(data: Any) -> Iterator[Any]:
    if isinstance(data, list):
        for item in data:
            yield from _flatten(item)
    else:
        yield data


def _json_element(value: Any, name: str) -> bytes:
    if not isinstance(value, str):
        raise ProtocolError(f"input {name}: BYTES data must be strings")
    return value.encode("utf-8")


def _from_base64(value: bytes, name: str) -> bytes:
    try:
        return base64.b64decode(b"".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(f"input {name}: the data is not valid base64") from None


def bytes_output(name: str, values: Sequence[str], **parameters: Any) -> dict[str, Any]:
    """A ``BYTES`` output tensor of strings, shape ``[len(values)]``."""
    tensor: dict[str, Any] = {"name": name, "datatype": BYTES, "shape": [len(values)], "data": list(values)}
    if parameters:
        tensor["parameters"] = parameters
    return tensor


def select_outputs(request: InferenceRequest, outputs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The outputs the request asked for (all when it named none); an unknown name is refused."""
    if request.outputs is None:
        return list(outputs)
    by_name = {o["name"]: o for o in outputs}
    unknown = [name for name in request.outputs if name not in by_name]
    if unknown:
        raise ProtocolError(f"outputs: no output named {unknown[0][:64]!r}; outputs: {', '.join(by_name)}")
    return [by_name[name] for name in request.outputs]


def infer_response(
    model_name: str,
    model_version: str,
    request: InferenceRequest,
    outputs: Sequence[dict[str, Any]],
    parameters: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The response body: the requested outputs, the request's id echoed."""
    body: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.id is not None:
        body["id"] = request.id
    if parameters:
        body["parameters"] = dict(parameters)
    body["outputs"] = select_outputs(request, outputs)
    return body


def tensor_metadata(name: str, datatype: str, shape: Sequence[int]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": list(shape)}


def model_metadata(
    name: str,
    version: str,
    platform: str,
    inputs: Sequence[dict[str, Any]],
    outputs: Sequence[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "name": name,
        "versions": [version],
        "platform": platform,
        "inputs": list(inputs),
        "outputs": list(outputs),
    }


def server_metadata(name: str, version: str, extensions: Sequence[str] = ()) -> dict[str, Any]:
    return {"name": name, "version": version, "extensions": list(extensions)}


def error_body(message: str, **extra: Any) -> dict[str, Any]:
    """The protocol's error shape, ``{"error": "<message>"}``, plus optional fields (e.g. a code)."""
    return {"error": message, **extra}


def request_parameter_bool(request: InferenceRequest, name: str, default: bool = False) -> bool:
    """A boolean request parameter (JSON true/false, or the strings "true"/"false")."""
    value = request.parameters.get(name, default)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if not isinstance(value, bool):
        raise ProtocolError(f"parameters.{name} must be true or false")
    return value
