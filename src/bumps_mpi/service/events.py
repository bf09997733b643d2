"""A fit's live state as Server-Sent Events, for the API and the pages' scripts: its state and progress
whenever they change (from the monitor's record and the store, never a walk of its directory), `end`
when it ends or is deleted; at most MAX_STREAMS_PER_USER open per user."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator

from fastapi import HTTPException

from .controller import Controller
from .runner import job_of
from .schemas import finite

STREAM_S = 3600  # an event stream's longest life: a client that still wants it reconnects
MAX_STREAMS_PER_USER = 8  # event streams one user may hold open at once


class Streams:
    """The open event streams, counted per user (one user's tabs must not starve the others)."""

    def __init__(self, c: Controller):
        self.c = c
        self.open: dict[str, int] = {}
        self.lock = threading.Lock()

    def room_for(self, user: str) -> None:
        with self.lock:
            if self.open.get(user, 0) >= MAX_STREAMS_PER_USER:
                raise HTTPException(
                    429,
                    f"you have {MAX_STREAMS_PER_USER} event streams open: close one",
                    headers={"Retry-After": "15"},
                )

    def look(self, fit_id: str) -> tuple[dict | None, dict | None]:
        """(the fit's row, what its event shows); in a worker thread, never on the event loop."""
        c = self.c
        current = c.store.fit(fit_id)
        if current is None:
            return None, None
        out = c.summary(current).model_dump(include={"state", "chisq", "message"})
        record = (c.monitor.record(current) if job_of(c.config, current) is not None else None) or {}
        out["state"] = record.get("state", out["state"])
        out["progress"] = finite(record.get("progress"))
        out["reason"] = c.public(record.get("reason"))
        out["elapsed_s"] = record.get("elapsed_s")
        out["drawing"] = bool(record.get("finishing"))
        out["terminal"] = c.terminal(out["state"])
        if isinstance(record.get("chisq"), float):
            out["chisq"] = record["chisq"]
        return current, finite(out)

    async def stream(self, fit_id: str, who: str) -> AsyncIterator[str]:
        """Async: an open stream holds no thread; it ends after STREAM_S (clients reconnect)."""
        with self.lock:  # counted from its first byte to its end: a stream that never began is none
            self.open[who] = self.open.get(who, 0) + 1
        try:
            async for text in self._stream(fit_id):
                yield text
        finally:
            with self.lock:
                self.open[who] = max(self.open.get(who, 1) - 1, 0)

    async def _stream(self, fit_id: str) -> AsyncIterator[str]:
        monitor = self.c.monitor
        last, seen, until = None, -1, time.monotonic() + STREAM_S
        quiet = time.monotonic()
        while time.monotonic() < until:
            if monitor.round != seen:
                seen = monitor.round
                current, shown = await asyncio.to_thread(self.look, fit_id)
                if current is None:  # deleted meanwhile
                    break
                if shown != last:
                    yield f"data: {json.dumps(shown)}\n\n"
                    last, quiet = shown, time.monotonic()
                if self.c.over(current):
                    break
            if time.monotonic() - quiet > 15:
                yield ": still here\n\n"
                quiet = time.monotonic()
            await asyncio.sleep(0.25)
        yield "event: end\ndata: {}\n\n"
