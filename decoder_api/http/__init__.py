"""The HTTP edge: the Flask app, its routes (v1, WebSocket stream, the seed's /decode, ops),
authentication, request limits and the OpenAPI document."""
