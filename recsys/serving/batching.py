"""Micro-batching for a server's event loop: calls that arrive together share one batch call.

Work whose cost per call has a large fixed part serves concurrent requests cheaper in one call:
XGBoost's `inplace_predict` takes about as long for 400 rows as for 200, and an HTTP exchange
with a stage costs about the same for one user as for eight. `MicroBatcher` collects the calls
made while a batch is pending and runs the batch function once for all of them, at the next
turn of the event loop (`max_wait_s=0`: no call waits for one that has not arrived yet) or
after `max_wait_s`, or as soon as `max_size` calls are waiting. The batch function may be a
plain function (run in the event loop) or a coroutine function (awaited in a task).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class MicroBatcher(Generic[Item, Result]):
    """`await batcher.submit(item)` -> that item's result from one `run(items)` call.

    `run` takes the waiting items in arrival order and returns one result per item. An
    exception raised by `run` fails every call of that batch; `on_batch` (if given) is told the
    size of each batch run.
    """

    def __init__(
        self,
        run: Callable[[list[Item]], Sequence[Result] | Awaitable[Sequence[Result]]],
        max_size: int = 16,
        max_wait_s: float = 0.0,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_size < 1 or max_wait_s < 0:
            raise ValueError("max_size must be >= 1 and max_wait_s >= 0")
        self.run = run
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self.on_batch = on_batch
        self._waiting: list[tuple[Item, asyncio.Future]] = []
        self._timer: asyncio.Handle | None = None
        self._tasks: set[asyncio.Task] = set()

    async def submit(self, item: Item) -> Result:
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        self._waiting.append((item, future))
        if len(self._waiting) >= self.max_size:
            self._flush()
        elif self._timer is None:
            if self.max_wait_s > 0:
                self._timer = loop.call_later(self.max_wait_s, self._flush)
            else:
                self._timer = loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._waiting = self._waiting, []
        if not batch:
            return
        if self.on_batch is not None:
            self.on_batch(len(batch))
        try:
            results = self.run([item for item, _ in batch])
        except Exception as exc:
            _settle(batch, exc)
            return
        if inspect.isawaitable(results):
            task = asyncio.ensure_future(_awaited(results, batch))
            self._tasks.add(task)  # keep a reference until it is done
            task.add_done_callback(self._tasks.discard)
        else:
            _settle(batch, results)


async def _awaited(results: Awaitable[Sequence], batch: list) -> None:
    try:
        _settle(batch, await results)
    except Exception as exc:
        _settle(batch, exc)


def _settle(batch: list[tuple[object, asyncio.Future]], results: Sequence | Exception) -> None:
    """Give each waiting call its result, or the batch's exception to all of them."""
    if not isinstance(results, Exception) and len(results) != len(batch):
        results = RuntimeError(f"batch of {len(batch)} returned {len(results)} results")
    for position, (_, future) in enumerate(batch):
        if future.done():  # a caller that gave up (cancelled) is skipped
            continue
        if isinstance(results, Exception):
            future.set_exception(results)
        else:
            future.set_result(results[position])
