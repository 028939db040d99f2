"""The HTTP API (FastAPI)."""

from mailgate.api.app import create_app

__all__ = ["create_app"]
