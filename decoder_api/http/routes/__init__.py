"""HTTP routes: native v1 API, Vosk-protocol WebSocket, seed-compatible /decode, operations."""
