"""The app as an ASGI application (what FastAPI or Starlette mount), driven with the
ASGI messages a server sends; its call answered in the protocol's shape."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time

import flowforge
from flowforge import step

KEY = "signkey-test-" + "12" * 32


@flowforge.function(id="asgi-echo", trigger=flowforge.trigger.event("asgi/echo"))
async def asgi_echo(ctx: flowforge.Context):
    said = await step.run("say", lambda: ctx.event.data["word"].upper())
    return {"said": said}


APP = flowforge.App("asgi", [asgi_echo], serve_url="http://app.test/api/flowforge",
                    signing_key=KEY)


def call(method: str, query: str = "", body: bytes = b"",
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], object]:
    sent: list[dict] = []
    chunks = [{"type": "http.request", "body": body[:5], "more_body": True},
              {"type": "http.request", "body": body[5:], "more_body": False}]

    async def receive():
        return chunks.pop(0)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "query_string": query.encode(),
             "headers": [(k.encode(), v.encode()) for k, v in (headers or {}).items()]}
    asyncio.run(APP(scope, receive, send))
    start, payload = sent
    response_headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], response_headers, json.loads(payload["body"])


def signed(body: bytes) -> dict[str, str]:
    t = int(time.time())
    mac = hmac.new(KEY.split("-", 2)[2].encode(), body + str(t).encode(), hashlib.sha256)
    return {"x-inngest-signature": f"t={t}&s={mac.hexdigest()}",
            "content-type": "application/json"}


def test_get_describes_the_app():
    status, _, body = call("GET")
    assert status == 200
    assert body["app_id"] == "asgi" and body["function_count"] == 1 and body["mode"] == "cloud"


def test_a_signed_call_runs_the_first_step_then_completes():
    request = {"event": {"name": "asgi/echo", "data": {"word": "hi"}}, "steps": {},
               "ctx": {"run_id": "r1", "attempt": 0}}
    body = json.dumps(request).encode()
    status, headers, ops = call("POST", "fnId=asgi-asgi-echo&stepId=step", body, signed(body))
    assert status == 206, ops
    assert headers["content-type"] == "application/json"
    assert ops == [{"id": hashlib.sha1(b"say").hexdigest(), "name": "say", "displayName": "say",
                    "op": "StepRun", "opts": None, "data": "HI"}]
    request["steps"] = {ops[0]["id"]: {"data": "HI"}}
    body = json.dumps(request).encode()
    status, _, result = call("POST", "fnId=asgi-asgi-echo&stepId=step", body, signed(body))
    assert (status, result) == (200, {"said": "HI"})


def test_an_unsigned_call_is_refused_and_an_unknown_function_is_final():
    body = b'{"event": {}, "steps": {}, "ctx": {}}'
    status, _, answer = call("POST", "fnId=asgi-asgi-echo&stepId=step", body)
    assert status == 401, answer
    status, headers, answer = call("POST", "fnId=asgi-nope&stepId=step", body, signed(body))
    assert status == 500 and headers["x-inngest-no-retry"] == "true", answer
    assert answer["name"] == "FunctionNotFound"
