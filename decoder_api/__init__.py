import os

# Libraries that report usage to their vendors by default stay quiet unless a deployment sets these:
# ONNX Runtime (whisper's voice activity detector runs on it) from its import on, with a device id
# it keeps under ~/.cache; MLflow (``export mlflow``) from its API calls.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
