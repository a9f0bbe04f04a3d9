"""Where the sentiment classifier's forward pass runs: ONNX Runtime, or torch.

``OnnxClassifier`` runs a graph of the model exported once by torch's TorchScript exporter (fp32,
the softmax included) with ONNX Runtime's graph optimizations; on the sample calls it takes about a
fifth less CPU than torch for the same probabilities (within 1e-6). The graph is cached as
``<directory>/<model version>-<EXPORT_VERSION>.onnx`` (``python -m nlp_consumer.train`` writes the
trained model's; any other model's is written on first use). A cache that cannot be written is not
an error: the graph is then exported for this process alone.

With ``int8`` the graph's weights are quantized to 8-bit integers once more, by ONNX Runtime's
dynamic quantization (a scale per output channel of each weight; activations quantized per batch as
it runs), into ``<model version>-<EXPORT_VERSION>-<INT8_VERSION>.onnx`` beside the fp32 graph: about
2.3 times less CPU per forward pass for the trained model, with its held-out accuracy (86.5 % on
both: ``bench/results/accuracy.md``). On the sample calls' turns and their occlusion variants single
polarities move by 0.02 on average (0.06 with one scale per weight, as first shipped, at the same
CPU; it cost 0.2 points of held-out accuracy). The activations' scale is computed over the whole
input of a run, so rows run one at a time (``SentimentAnalyzer``): a text's probabilities then do
not depend on the texts batched with it, and cost no more than batched.

Both classifiers take a padded batch (``input_ids``, ``attention_mask``, … as int64 arrays, rows ×
tokens) and return the class probabilities (rows × classes, float32).
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

EXPORT_VERSION = "onnx1"  # part of the cache name: change it when the exported graph changes
INT8_VERSION = "int8c"  # part of the quantized graph's name: change it when the quantization changes
OPSET = 17
Batch = Mapping[str, npt.NDArray[np.int64]]
Probabilities = npt.NDArray[np.float32]


def graph_dir(cache_dir: Path) -> Path:
    """Where the exported graphs of ``cache_dir``'s models (and any other model used) are kept."""
    return cache_dir / "onnx"


def graph_path(directory: Path, version: str, int8: bool = False) -> Path:
    return directory / f"{version}-{EXPORT_VERSION}{f'-{INT8_VERSION}' if int8 else ''}.onnx"


class Classifier(Protocol):
    def __call__(self, batch: Batch) -> Probabilities: ...


class TorchClassifier:
    """The model's own forward pass (no gradients)."""

    def __init__(self, model: Any) -> None:
        import torch

        self._torch, self._model = torch, model

    def __call__(self, batch: Batch) -> Probabilities:
        inputs = {name: self._torch.from_numpy(np.asarray(array)) for name, array in batch.items()}
        with self._torch.inference_mode():
            logits = self._model(**inputs).logits
        return np.asarray(logits.softmax(-1).numpy(), dtype=np.float32)


class OnnxClassifier:
    """An exported graph in an ONNX Runtime session with ``threads`` intra-op threads (0: one per
    physical core), which sleep rather than spin between runs (the machine is shared)."""

    def __init__(self, graph: bytes | Path, threads: int) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        source = str(graph) if isinstance(graph, Path) else graph
        self._session = onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self._session.get_inputs()]

    def __call__(self, batch: Batch) -> Probabilities:
        feed = {name: np.asarray(batch[name], dtype=np.int64) for name in self.input_names}
        return np.asarray(self._session.run(None, feed)[0], dtype=np.float32)


def onnx_classifier(
    model: Any, input_names: Sequence[str], version: str, directory: Path, threads: int, int8: bool = False
) -> OnnxClassifier:
    """The cached graph of ``model`` (version ``version``), exported (and quantized, with ``int8``)
    first when missing."""
    path = graph_path(directory, version, int8)
    if not path.is_file():
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=directory, prefix=f".{path.name}-") as tmp:
                build_graph(model, input_names, directory, version, int8, Path(tmp))
            logger.info("onnx_exported path=%s", path)
        except OSError as exc:
            logger.warning(
                "onnx_cache_unwritable path=%s error=%s: exported for this process only", path, exc
            )
            with tempfile.TemporaryDirectory() as tmp:
                built = build_graph(model, input_names, Path(tmp), version, int8, Path(tmp))
                return OnnxClassifier(built.read_bytes(), threads)
    return OnnxClassifier(path, threads)


def build_graph(
    model: Any, input_names: Sequence[str], directory: Path, version: str, int8: bool, work: Path
) -> Path:
    """``directory``'s fp32 graph of ``model``, exported unless it is there, and with ``int8`` its
    quantized graph; each written in ``work`` and moved in whole (a consumer beside this one may
    read it). Returns the path of the graph asked for."""
    fp32 = graph_path(directory, version)
    if not fp32.is_file():
        export_graph(model, input_names, work / fp32.name)
        os.replace(work / fp32.name, fp32)
    if not int8:
        return fp32
    quantized = graph_path(directory, version, int8=True)
    quantize_graph(fp32, work / quantized.name)
    os.replace(work / quantized.name, quantized)
    return quantized


def quantize_graph(source: Path, target: Path) -> None:
    """``source``'s graph with int8 weights (MatMul and Gather, a scale per channel; dynamic
    activations) at ``target``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()

    def quiet(record: logging.LogRecord) -> bool:  # its advice to run shape inference first
        return "pre-processing before quantization" not in record.getMessage()

    root.addFilter(quiet)
    try:
        quantize_dynamic(source, target, weight_type=QuantType.QInt8, per_channel=True)
    finally:
        root.removeFilter(quiet)


def export_graph(model: Any, input_names: Sequence[str], path: Path) -> None:
    """``model``'s probabilities as an ONNX graph at ``path`` (batch and sequence length dynamic)."""
    import torch

    class Probabilities(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: Any) -> Any:
            return self.model(**dict(zip(input_names, inputs, strict=True))).logits.softmax(-1)

    # two rows of different lengths: the traced graph must apply the attention mask to padding
    rows = {"input_ids": [[101, 2000, 102], [101, 102, 0]], "attention_mask": [[1, 1, 1], [1, 1, 0]]}
    example = tuple(torch.tensor(rows.get(name, [[0, 0, 0], [0, 0, 0]])) for name in input_names)
    axes = {name: {0: "batch", 1: "tokens"} for name in input_names} | {"probabilities": {0: "batch"}}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Python conditions it fixes in the graph
        torch.onnx.export(
            Probabilities().eval(),
            example,
            str(path),
            input_names=list(input_names),
            output_names=["probabilities"],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,  # the TorchScript exporter: needs the onnx package, not onnxscript
        )
