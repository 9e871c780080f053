"""The HTTP edge: the server (/metrics, health, reload), the JSON site API and its OpenAPI document, the
current-state sink it reads, and the web config (TLS, basic auth).
"""
