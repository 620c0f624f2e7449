"""An app written with Inngest's official Python SDK (`inngest` from PyPI), served
with Flask, used by tests/tests/inngest_python.rs to show that such an app runs on
FlowForge unmodified. Configured only through the SDK's own environment variables:
INNGEST_DEV=<FlowForge URL> in dev mode; APP_MODE=production with INNGEST_BASE_URL,
INNGEST_SIGNING_KEY, INNGEST_SIGNING_KEY_FALLBACK and INNGEST_EVENT_KEY in production
mode; PORT for Flask."""

import datetime
import os

import flask
import inngest
import inngest.experimental.ai
import inngest.flask

client = inngest.Inngest(app_id="py-app", is_production=os.environ.get("APP_MODE") == "production")


@client.create_function(fn_id="steps", trigger=inngest.TriggerEvent(event="py/steps"))
def steps(ctx: inngest.ContextSync) -> dict:
    a = ctx.step.run("a", lambda: 1)
    ctx.step.sleep("nap", datetime.timedelta(seconds=1))
    b = ctx.step.run("b", lambda: a + 1)
    return {"a": a, "b": b, "n": ctx.event.data.get("n")}


@client.create_function(fn_id="wait", trigger=inngest.TriggerEvent(event="py/order"))
def wait(ctx: inngest.ContextSync) -> dict:
    shipped = ctx.step.wait_for_event(
        "shipped",
        event="py/shipped",
        if_exp="event.data.order_id == async.data.order_id",
        timeout=datetime.timedelta(seconds=ctx.event.data.get("timeout_s", 30)),
    )
    return {"carrier": shipped.data["carrier"] if shipped else None}


@client.create_function(fn_id="child", trigger=inngest.TriggerEvent(event="py/never-sent"))
def child(ctx: inngest.ContextSync) -> int:
    return ctx.event.data["x"] * 2


@client.create_function(fn_id="parent", trigger=inngest.TriggerEvent(event="py/parent"))
def parent(ctx: inngest.ContextSync) -> dict:
    result = ctx.step.invoke("call-child", function=child, data={"x": 21})
    return {"child": result}


@client.create_function(fn_id="sender", trigger=inngest.TriggerEvent(event="py/send"))
def sender(ctx: inngest.ContextSync) -> dict:
    ids = ctx.step.send_event("ping", inngest.Event(name="py/pinged", data={"from": ctx.run_id}))
    return {"sent": ids}


@client.create_function(fn_id="pinged", trigger=inngest.TriggerEvent(event="py/pinged"))
def pinged(ctx: inngest.ContextSync) -> dict:
    return {"from": ctx.event.data["from"]}


@client.create_function(fn_id="parallel", trigger=inngest.TriggerEvent(event="py/parallel"))
def parallel(ctx: inngest.ContextSync) -> int:
    left, right = ctx.group.parallel(
        (
            lambda: ctx.step.run("left", lambda: 10),
            lambda: ctx.step.run("right", lambda: 32),
        )
    )
    return ctx.step.run("sum", lambda: left + right)


@client.create_function(fn_id="flaky", retries=3, trigger=inngest.TriggerEvent(event="py/flaky"))
def flaky(ctx: inngest.ContextSync) -> dict:
    def attempt() -> int:
        if ctx.attempt < 2:
            raise ValueError(f"attempt {ctx.attempt} failed")
        return ctx.attempt

    return {"succeeded_on_attempt": ctx.step.run("flaky-step", attempt)}


@client.create_function(fn_id="fatal", retries=3, trigger=inngest.TriggerEvent(event="py/fatal"))
def fatal(ctx: inngest.ContextSync) -> str:
    def validate() -> None:
        raise inngest.NonRetriableError("the order has no items")

    ctx.step.run("validate", validate)
    return "unreachable"


@client.create_function(fn_id="doomed", retries=0, trigger=inngest.TriggerEvent(event="py/doomed"))
def doomed(ctx: inngest.ContextSync) -> str:
    def explode() -> None:
        raise ValueError("boom")

    ctx.step.run("explode", explode)
    return "unreachable"


@client.create_function(fn_id="ask", retries=2, trigger=inngest.TriggerEvent(event="py/ask"))
def ask(ctx: inngest.ContextSync) -> dict:
    # The provider's URL comes with the event: in tests it is a local stand-in.
    adapter = inngest.experimental.ai.anthropic.Adapter(
        auth_key="sk-ant-test-secret", base_url=ctx.event.data["llm"], model="claude-test-1"
    )
    answer = ctx.step.ai.infer(
        "ask-model",
        adapter=adapter,
        body={
            "max_tokens": 64,
            "messages": [{"role": "user", "content": ctx.event.data["prompt"]}],
        },
    )
    return {"text": answer["content"][0]["text"], "model": answer["model"]}


app = flask.Flask(__name__)
inngest.flask.serve(
    app, client, [steps, wait, child, parent, sender, pinged, parallel, flaky, fatal, doomed, ask]
)

if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ["PORT"]), threaded=True)
