"""FastAPI (or any ASGI app): the client lives in the lifespan and is shut down asynchronously.

    export FLAMEUP_API_KEY=... FLAMEUP_WORKSPACE_ID=...   # and FLAMEUP_HOST for a local server
    uvicorn --app-dir examples fastapi_app:app

See docs/runtimes/asyncio.md.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, Request

import flameup_analytics as fa


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # One client per process, tied to the server's lifetime rather than to the import, so every
    # uvicorn worker (and every TestClient) gets its own and shuts it down itself.
    app.state.analytics = fa.Client()
    yield
    # shutdown() waits for delivery (at most shutdown_timeout); ashutdown() does that wait in a
    # thread, so the event loop keeps serving whatever else is still finishing.
    await app.state.analytics.ashutdown()


app = FastAPI(lifespan=lifespan)


def get_analytics(request: Request) -> fa.Client:
    client: fa.Client = request.app.state.analytics
    return client


Analytics = Annotated[fa.Client, Depends(get_analytics)]


@app.post("/orders/{order_id}/complete")
async def complete_order(order_id: str, user: str, analytics: Analytics) -> dict[str, str]:
    # track() never does I/O in the caller, so it is safe to call straight from a coroutine:
    # no await, no thread, the event loop is not blocked.
    analytics.track(user, "order_completed", {"order_id": order_id})
    return {"order": order_id, "status": "completed"}
