"""The service over HTTP and WebSocket: routes, sessions, limits, metrics, logs, the demo page."""
