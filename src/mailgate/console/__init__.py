"""The web console at `/ui`: server-rendered pages on the API's own rules and store."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from mailgate.console.pages import HERE, console_router

if TYPE_CHECKING:
    from mailgate.api.context import ApiContext


def install_console(app: FastAPI, ctx: ApiContext) -> None:
    """The console's routes, its stylesheet and script, and `/` sending browsers to it."""
    app.include_router(console_router(ctx))
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="console-static")

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/ui", status_code=307)
