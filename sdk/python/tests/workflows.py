"""The functions the tests run, one per behaviour. Counters record how often each
piece of user code really ran (the app and the tests share this process)."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter

import flowforge
from flowforge import step

COUNTS: Counter[str] = Counter()
_lock = threading.Lock()


def count(name: str) -> int:
    with _lock:
        COUNTS[name] += 1
        return COUNTS[name]


@flowforge.function(id="memo", trigger=flowforge.trigger.event("py/memo"))
async def memo(ctx: flowforge.Context):
    key = ctx.event.data["key"]
    count(f"{key}:calls")

    async def add(a: int, b: int) -> int:
        count(f"{key}:add")
        return a + b

    first = await step.run("add", add, 1, 2)
    second = await step.run("add", add, first, 10)  # the same id again: its own step
    third = await step.run("double", lambda: count(f"{key}:double") and second * 2)
    return {"first": first, "second": second, "third": third}


@flowforge.function(id="flaky", trigger=flowforge.trigger.event("py/flaky"), retries=3)
async def flaky(ctx: flowforge.Context):
    key = ctx.event.data["key"]

    def sometimes() -> str:
        if count(f"{key}:attempts") < 3:
            raise RuntimeError("not yet")
        return "done"

    return await step.run("sometimes", sometimes)


@flowforge.function(id="fatal", trigger=flowforge.trigger.event("py/fatal"), retries=3)
async def fatal(ctx: flowforge.Context):
    key = ctx.event.data["key"]

    def refuse() -> None:
        count(f"{key}:attempts")
        raise flowforge.NonRetriableError("card declined")

    await step.run("refuse", refuse)
    return "unreachable"


@flowforge.function(id="caught", trigger=flowforge.trigger.event("py/caught"), retries=1)
async def caught(ctx: flowforge.Context):
    key = ctx.event.data["key"]

    def broken() -> None:
        count(f"{key}:attempts")
        raise ValueError("always broken")

    try:
        await step.run("broken", broken)
    except flowforge.StepError as error:
        return {"recovered": True, "name": error.name, "message": error.message}
    return {"recovered": False}


@flowforge.function(id="nap", trigger=flowforge.trigger.event("py/nap"))
async def nap(ctx: flowforge.Context):
    before = await step.run("before", lambda: asyncio.get_running_loop().time())
    await step.sleep("nap", "1s")
    return {"slept": True, "before": before}


@flowforge.function(id="wait", trigger=flowforge.trigger.event("py/order"))
async def wait(ctx: flowforge.Context):
    shipped = await step.wait_for_event(
        "shipped", event="py/shipped", match="data.order_id",
        timeout=ctx.event.data.get("timeout", "30s"))
    return {"shipped": None if shipped is None else shipped.data}


@flowforge.function(id="refund", trigger=flowforge.trigger.event("py/refund"))
async def refund(ctx: flowforge.Context):
    decision = await step.wait_for_approval(
        "approve-refund", title=f"Refund {ctx.event.data['amount']} EUR?",
        timeout=ctx.event.data.get("timeout", "30s"))
    if not decision["approved"]:
        return {"refunded": False, "decision": decision}
    await step.run("pay", lambda: "paid")
    return {"refunded": True, "decision": decision}


@flowforge.function(id="child", trigger=flowforge.trigger.event("py/child"))
async def child(ctx: flowforge.Context):
    return await step.run("square", lambda: ctx.event.data["n"] ** 2)


@flowforge.function(id="parent", trigger=flowforge.trigger.event("py/parent"))
async def parent(ctx: flowforge.Context):
    squared = await step.invoke("call-child", function_id="child",
                                data={"n": ctx.event.data["n"]}, timeout="30s")
    return {"squared": squared}


@flowforge.function(id="announce", trigger=flowforge.trigger.event("py/announce"))
async def announce(ctx: flowforge.Context):
    ids = await step.send_event("tell", name="py/announced",
                                data={"key": ctx.event.data["key"]})
    return {"sent": ids}


@flowforge.function(id="listener", trigger=flowforge.trigger.event("py/announced"))
async def listener(ctx: flowforge.Context):
    return {"heard": ctx.event.data["key"]}


@flowforge.function(id="fan-out", trigger=flowforge.trigger.event("py/parallel"))
async def fan_out(ctx: flowforge.Context):
    key = ctx.event.data["key"]

    async def part(n: int) -> int:
        count(f"{key}:part{n}")
        return n * 10

    parts = await asyncio.gather(*(step.run(f"part-{n}", part, n) for n in (1, 2, 3)))
    total = await step.run("sum", lambda: sum(parts))
    return {"parts": parts, "total": total}


@flowforge.function(id="plain", trigger=flowforge.trigger.event("py/plain"))
def plain(ctx: flowforge.Context):
    key = ctx.event.data["key"]
    greeting = step.run("greet", lambda: count(f"{key}:greet") and f"hello {key}")
    step.sleep("pause", "10ms")
    return {"greeting": greeting}


@flowforge.function(id="greedy", trigger=flowforge.trigger.event("py/greedy"))
async def greedy(ctx: flowforge.Context):
    # `except Exception` around a step cannot swallow how the SDK stops the function.
    try:
        first = await step.run("first", lambda: 1)
        second = await step.run("second", lambda: 2)
    except Exception:  # noqa: BLE001 - the point of the test
        return "swallowed"
    return first + second


@flowforge.function(id="once-per-order", trigger=flowforge.trigger.event("py/once"),
                    idempotency="event.data.order_id",
                    rate_limit={"limit": 5, "period": "1m", "key": "event.data.order_id"})
async def once_per_order(ctx: flowforge.Context):
    return await step.run("charge", lambda: ctx.event.data["order_id"])


# Step bodies of `one-per-customer` executing right now, and the most there ever were.
IN_FLIGHT = {"now": 0, "most": 0}


async def _exclusive_work(customer: str) -> str:
    IN_FLIGHT["now"] += 1
    IN_FLIGHT["most"] = max(IN_FLIGHT["most"], IN_FLIGHT["now"])
    await asyncio.sleep(0.1)
    IN_FLIGHT["now"] -= 1
    return customer


@flowforge.function(id="one-per-customer", trigger=flowforge.trigger.event("py/exclusive"),
                    concurrency={"limit": 1, "key": "event.data.customer"})
async def one_per_customer(ctx: flowforge.Context):
    return await step.run("work", _exclusive_work, ctx.event.data["customer"])
