import os

# ONNX Runtime, which whisper's voice activity detector runs on, reports usage to Microsoft with a
# device id it keeps under ~/.cache from the moment it is imported, unless this is set before.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
