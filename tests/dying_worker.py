"""A grid worker for tests, in a module of its own so that spawned pool processes import nothing heavy."""

from __future__ import annotations

import os


def worker_that_dies(req: dict) -> dict:
    """Return the request's ``n``; the process dies outright on the request marked ``die`` (as a native
    crash or the OOM killer would end it)."""
    if req["die"]:
        os._exit(3)
    return {"status": "ran", "n": req["n"]}
