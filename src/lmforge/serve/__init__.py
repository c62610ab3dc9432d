"""`lmforge serve`: an OpenAI-compatible HTTP server with dynamic batching, classification and a playground."""

from lmforge.serve.app import create_app, server_config

__all__ = ["create_app", "server_config"]
