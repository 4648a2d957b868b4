"""Small asyncio tools the service's resources share."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def settle(aw: Awaitable[T]) -> T:
    """Run `aw` to its end even if the caller is cancelled meanwhile, any number of times,
    then re-raise the cancellation: for work that must not stop halfway (ending a database
    transaction, writing a job's final state). `asyncio.shield` alone lets a second cancel
    abandon the wait, and with it whatever the caller meant to do after."""
    inner = asyncio.ensure_future(aw)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(inner)
            break
        except asyncio.CancelledError:
            if inner.done():
                raise  # nothing left to wait for
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return result
