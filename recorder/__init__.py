"""The recorder: streams a microphone, audio files or simulated callers to the decoder service.

It talks to the decoder only over its public API (HTTP ``/v1/sessions`` or the Vosk-protocol
WebSocket ``/v1/stream``) and never imports ``decoder_api``: it ships in its own container.
Run ``python -m recorder --help`` for the command line.
"""
