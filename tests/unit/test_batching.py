"""MicroBatcher: concurrent calls share one batch call; results and errors reach each caller."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from recsys.serving.batching import MicroBatcher


def test_calls_made_together_share_one_batch_in_order():
    batches: list[list[int]] = []

    def run(items: list[int]) -> list[int]:
        batches.append(items)
        return [item * 10 for item in items]

    async def main():
        batcher = MicroBatcher(run, max_size=4)
        first = await asyncio.gather(*(batcher.submit(n) for n in range(6)))
        alone = await batcher.submit(7)
        return first, alone

    first, alone = asyncio.run(main())
    assert first == [0, 10, 20, 30, 40, 50] and alone == 70
    assert batches == [[0, 1, 2, 3], [4, 5], [7]]  # max_size flushes at once, the rest next turn


def test_a_bounded_wait_collects_calls_that_arrive_later():
    sizes: list[int] = []

    async def main():
        batcher = MicroBatcher(
            lambda items: items, max_size=8, max_wait_s=0.05, on_batch=sizes.append
        )

        async def late(n: int) -> int:
            await asyncio.sleep(0.01 * n)
            return await batcher.submit(n)

        return await asyncio.gather(*(late(n) for n in range(3)))

    assert asyncio.run(main()) == [0, 1, 2]
    assert sizes == [3]


def test_a_failed_batch_fails_each_of_its_calls_and_the_next_batch_runs():
    calls = 0

    def run(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("model exploded")
        return items

    async def main():
        batcher = MicroBatcher(run)
        failed = await asyncio.gather(
            *(batcher.submit(n) for n in range(3)), return_exceptions=True
        )
        return failed, await batcher.submit(5)

    failed, later = asyncio.run(main())
    assert all(isinstance(result, ValueError) for result in failed) and later == 5


def test_a_wrong_result_count_is_an_error_not_a_silent_mismatch():
    async def main():
        batcher = MicroBatcher(lambda items: items[:1])
        return await asyncio.gather(*(batcher.submit(n) for n in range(2)), return_exceptions=True)

    results = asyncio.run(main())
    assert all(isinstance(r, RuntimeError) and "returned 1 results" in str(r) for r in results)


@pytest.mark.parametrize(("size", "wait"), [(0, 0.0), (1, -1.0)])
def test_bad_settings_are_refused(size, wait):
    with pytest.raises(ValueError, match="max_size"):
        MicroBatcher(lambda items: items, max_size=size, max_wait_s=wait)


def test_batched_ranking_equals_one_request_at_a_time(tiny_result):
    from recsys.model.ranking import rank_columns, rank_columns_many

    retrieval, ranker = tiny_result.retrieval, tiny_result.ranker
    users = [str(u) for u in retrieval.users.ids[:6]] + ["nobody-knows-this-user"]
    requests = [(user, retrieval.retrieve_columns(user, 50)) for user in users]
    unknown = {
        "item_ids": ["no-such-item"],
        "scores": [0.5],
        "sources": ["ann"],
        "categories": [""],
    }
    requests += [("u-empty", {key: [] for key in unknown}), ("u-unknown", unknown)]
    batched = rank_columns_many(ranker, requests)
    for (user, columns), verdict in zip(requests, batched, strict=True):
        alone = rank_columns(ranker, user, columns)
        assert verdict["order"] == alone["order"]
        np.testing.assert_allclose(verdict["scores"], alone["scores"], rtol=1e-6)
    assert batched[-2] == {"order": [], "scores": []} and batched[-1] == {"order": [], "scores": []}


def test_an_async_batch_function_is_awaited_once_per_batch():
    batches: list[list[str]] = []

    async def remote(items: list[str]) -> list[str]:
        batches.append(items)
        await asyncio.sleep(0.01)  # an HTTP call
        return [item.upper() for item in items]

    async def failing(items: list[str]) -> list[str]:
        raise ConnectionError("stage down")

    async def main():
        ok = await asyncio.gather(*(MicroBatcher(remote).submit(x) for x in "a"))
        batcher = MicroBatcher(remote)
        together = await asyncio.gather(*(batcher.submit(x) for x in "xyz"))
        down = MicroBatcher(failing)
        failed = await asyncio.gather(*(down.submit(x) for x in "pq"), return_exceptions=True)
        return ok, together, failed

    ok, together, failed = asyncio.run(main())
    assert ok == ["A"] and together == ["X", "Y", "Z"] and batches == [["a"], ["x", "y", "z"]]
    assert all(isinstance(result, ConnectionError) for result in failed)
