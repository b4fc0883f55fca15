"""The pages of `vml serve`: server-rendered HTML that works without JavaScript."""

from __future__ import annotations

from starlette.routing import BaseRoute


def page_routes(server) -> list[BaseRoute]:
    return []
