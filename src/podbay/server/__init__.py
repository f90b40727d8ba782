"""podbay as a service: a FastAPI app over one AsyncPlatform (`podbay serve`), tenants and tokens in SQLite."""

from podbay.server.app import create_app

__all__ = ["create_app"]
