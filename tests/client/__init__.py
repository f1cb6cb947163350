"""The Python client library (service.client) against a real server."""
