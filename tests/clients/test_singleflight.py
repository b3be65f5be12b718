"""clients/sdk/singleflight.py: callers arriving during a run share it (its result or its
exception); a cancelled caller does not cancel it for the others; a later call runs again."""

from __future__ import annotations

import asyncio

import pytest

from clients.sdk.singleflight import SingleFlight


async def test_callers_arriving_during_a_run_share_its_result() -> None:
    flight: SingleFlight[int] = SingleFlight()
    runs = 0

    async def operation() -> int:
        nonlocal runs
        runs += 1
        return runs

    # gather starts the five callers before the operation's first step (tasks run in order).
    assert await asyncio.gather(*(flight.run(operation) for _ in range(5))) == [1] * 5
    assert runs == 1
    assert await flight.run(operation) == 2  # the run ended: the next call runs again


async def test_callers_share_the_exception_of_the_run() -> None:
    flight: SingleFlight[int] = SingleFlight()
    runs = 0

    async def operation() -> int:
        nonlocal runs
        runs += 1
        raise LookupError("refused")

    results = await asyncio.gather(*(flight.run(operation) for _ in range(3)),
                                   return_exceptions=True)
    assert all(isinstance(r, LookupError) and str(r) == "refused" for r in results)
    assert (len(results), runs) == (3, 1)


async def test_a_cancelled_caller_does_not_cancel_the_run_for_the_others() -> None:
    flight: SingleFlight[str] = SingleFlight()
    started, release = asyncio.Event(), asyncio.Event()

    async def operation() -> str:
        started.set()
        await release.wait()
        return "pair"

    leaving = asyncio.ensure_future(flight.run(operation))
    staying = asyncio.ensure_future(flight.run(operation))
    await started.wait()
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    release.set()
    assert await staying == "pair"
