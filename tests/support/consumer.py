"""A FastStream consumer of tracetags run inside the test's event loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from tracetags import Settings, TagProducer
from tracetags.client import Client
from tracetags.consumer import create_app


@contextlib.asynccontextmanager
async def consumer(settings: Settings, name: str = "test-consumer") -> AsyncIterator[None]:
    """Run the consumer app for the duration of the ``async with`` block."""
    app = create_app(settings, name=name)
    await app.start()
    try:
        yield
    finally:
        await app.stop()


async def wait_applied(client: Client, producer: TagProducer, timeout: float = 30.0) -> None:
    """Flush ``producer`` and wait (off the loop) until the fold applied what it wrote."""
    receipt = producer.flush()
    await asyncio.to_thread(client.wait_applied, receipt, timeout)
