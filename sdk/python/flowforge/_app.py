"""Functions, the app that serves them, and how the server reaches it.

An `App` answers the server's calls (the SDK protocol, `docs/sdk-protocol.md`) as a
plain ASGI application — mount it in FastAPI or Starlette — or with `App.serve()`, a
small HTTP/1.1 server of its own. It syncs its functions with `POST /fn/register` on
start, and again whenever it receives a `PUT` (what `flowforge dev -u URL` sends).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Callable

from . import _execution
from ._client import DEFAULT_URL, Client, FlowForgeError
from ._durations import Duration, to_text

SDK = "py-flowforge:v0.1.0"
logger = logging.getLogger("flowforge")


# ------------------------------------------------------------------------- triggers


class trigger:  # noqa: N801 - used as a namespace: flowforge.trigger.event(...)
    """Triggers: `trigger.event(name, expression=None)`, `trigger.cron(schedule, tz=None)`."""

    @staticmethod
    def event(name: str, expression: str | None = None) -> dict[str, Any]:
        """Runs on every event named `name` (`*` wildcards allowed), optionally only
        when the CEL `expression` over `event` is true."""
        value: dict[str, Any] = {"event": name}
        if expression is not None:
            value["expression"] = expression
        return value

    @staticmethod
    def cron(schedule: str, tz: str | None = None) -> dict[str, Any]:
        """Runs on a cron schedule (5 or 6 fields), in time zone `tz` (default UTC)."""
        return {"cron": f"TZ={tz} {schedule}" if tz else schedule}


@dataclass
class Function:
    """A function as declared with `@flowforge.function`."""

    id: str
    handler: Callable[..., Any]
    name: str | None = None
    triggers: list[dict[str, Any]] = field(default_factory=list)
    retries: int | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.handler(*args, **kwargs)


# Functions declared anywhere in the process, for `flowforge dev DIR`.
_declared: list[Function] = []


def _limit(value: Any, what: str) -> dict[str, Any]:
    if isinstance(value, dict):
        return {("if" if k == "if_" else k): v for k, v in value.items() if v is not None}
    raise TypeError(f"{what} must be a dict, e.g. {{'limit': 10, 'period': '1m'}}")


def _with_period(value: dict[str, Any]) -> dict[str, Any]:
    return {k: (to_text(v) if k in ("period", "timeout") else v) for k, v in value.items()}


def function(*, id: str, trigger: dict[str, Any] | list[dict[str, Any]],
             name: str | None = None, retries: int | None = None,
             concurrency: int | dict[str, Any] | list[dict[str, Any]] | None = None,
             rate_limit: dict[str, Any] | None = None, throttle: dict[str, Any] | None = None,
             debounce: dict[str, Any] | None = None, idempotency: str | None = None,
             priority: dict[str, Any] | None = None, batch_events: dict[str, Any] | None = None,
             singleton: dict[str, Any] | None = None,
             cancel_on: dict[str, Any] | list[dict[str, Any]] | None = None,
             timeouts: dict[str, Duration] | None = None,
             ) -> Callable[[Callable[..., Any]], Function]:
    """Declares a durable function.

    `trigger`: `flowforge.trigger.event(...)` or `.cron(...)` (or a list). `retries`:
    retries per step and per call (default: the server's, 3). Flow control takes the
    server's function settings: `concurrency=5` or `{"limit": 5, "key": "event.data.user"}`,
    `rate_limit={"limit": 10, "period": "1m", "key": ...}`,
    `throttle={"limit": 1, "period": "1s", "burst": 2}`, `debounce={"period": "5s"}`,
    `idempotency="event.data.order_id"`, `singleton={"key": "event.data.user",
    "mode": "skip" | "cancel"}`, `cancel_on={"event": "order/cancelled",
    "match": "data.order_id", "timeout": "1h"}`. The server checks them all when the app
    syncs; rate limits, idempotency and singletons are enforced (see the README).
    """
    if not isinstance(id, str) or not id:
        raise ValueError("a function needs an id")
    triggers = trigger if isinstance(trigger, list) else [trigger]
    config: dict[str, Any] = {}
    if concurrency is not None:
        if isinstance(concurrency, int):
            concurrency = {"limit": concurrency}
        items = concurrency if isinstance(concurrency, list) else [concurrency]
        config["concurrency"] = [_limit(c, "concurrency") for c in items]
    if rate_limit is not None:
        config["rateLimit"] = _with_period(_limit(rate_limit, "rate_limit"))
    if throttle is not None:
        config["throttle"] = _with_period(_limit(throttle, "throttle"))
    if debounce is not None:
        config["debounce"] = _with_period(_limit(debounce, "debounce"))
    if idempotency is not None:
        config["idempotency"] = idempotency
    if priority is not None:
        config["priority"] = _limit(priority, "priority")
    if singleton is not None:
        config["singleton"] = _limit(singleton, "singleton")
    if batch_events is not None:
        batch = _with_period(_limit(batch_events, "batch_events"))
        if "max_size" in batch:
            batch["maxSize"] = batch.pop("max_size")
        config["batchEvents"] = batch
    if timeouts is not None:
        config["timeouts"] = {k: to_text(v) for k, v in timeouts.items()}
    if cancel_on is not None:
        rules = []
        for rule in cancel_on if isinstance(cancel_on, list) else [cancel_on]:
            cancel: dict[str, Any] = {"event": rule["event"]}
            expression = rule.get("if") or rule.get("if_")
            if rule.get("match"):
                same = f"event.{rule['match']} == async.{rule['match']}"
                expression = same if not expression else f"{same} && ({expression})"
            if expression:
                cancel["if"] = expression
            if rule.get("timeout") is not None:
                cancel["timeout"] = to_text(rule["timeout"])
            rules.append(cancel)
        config["cancel"] = rules

    def declare(handler: Callable[..., Any]) -> Function:
        declared = Function(id=id, handler=handler, name=name, triggers=triggers,
                            retries=retries, config=config)
        _declared.append(declared)
        return declared

    return declare


def declared_functions() -> list[Function]:
    return list(_declared)


# ------------------------------------------------------------------------- signatures


def _hmac_key(signing_key: str) -> str:
    if signing_key.startswith("signkey-"):
        rest = signing_key[len("signkey-"):]
        env, sep, key = rest.partition("-")
        if sep and env and all(c.isalnum() or c == "_" for c in env):
            return key
    return signing_key


def hashed_signing_key(signing_key: str) -> str:
    """What apps present to the server: `signkey-<env>-<sha256 of the key's bytes>`."""
    raw = _hmac_key(signing_key)
    try:
        data = bytes.fromhex(raw)
    except ValueError:
        data = raw.encode()
    prefix = signing_key[: len(signing_key) - len(raw)]
    return prefix + hashlib.sha256(data).hexdigest()


def signature_valid(header: str | None, body: bytes, keys: list[str],
                    max_age_seconds: int = 300) -> bool:
    """Checks `X-Inngest-Signature: t=<unix>&s=<hex hmac-sha256(body + t)>`."""
    if not header:
        return False
    parts = dict(p.split("=", 1) for p in header.split("&") if "=" in p)
    try:
        t = int(parts["t"])
        signature = bytes.fromhex(parts["s"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - t) > max_age_seconds:
        return False
    for key in keys:
        mac = hmac.new(_hmac_key(key).encode(), body + str(t).encode(), hashlib.sha256)
        if hmac.compare_digest(mac.digest(), signature):
            return True
    return False


# ------------------------------------------------------------------------- the app


class App:
    """An app: a set of functions served at one URL.

    `App(id, functions=None, server_url=None, serve_url=None, signing_key=None,
    signing_key_fallback=None, event_key=None, api_key=None)`. Unset options come from
    `FLOWFORGE_URL` (the server; default http://127.0.0.1:8288), `FLOWFORGE_SERVE_URL`
    (where the server reaches this app), `FLOWFORGE_SIGNING_KEY` /
    `FLOWFORGE_SIGNING_KEY_FALLBACK`, `FLOWFORGE_EVENT_KEY` and `FLOWFORGE_API_KEY`.
    Without `functions`, every function declared with `@flowforge.function` is served.
    """

    def __init__(self, id: str, functions: list[Function] | None = None, *,
                 server_url: str | None = None, serve_url: str | None = None,
                 signing_key: str | None = None, signing_key_fallback: str | None = None,
                 event_key: str | None = None, api_key: str | None = None) -> None:
        env = os.environ.get
        self.id = id
        self.server_url = (server_url or env("FLOWFORGE_URL") or DEFAULT_URL).rstrip("/")
        self.serve_url = serve_url or env("FLOWFORGE_SERVE_URL")
        self.signing_key = signing_key or env("FLOWFORGE_SIGNING_KEY")
        self.signing_key_fallback = signing_key_fallback or env("FLOWFORGE_SIGNING_KEY_FALLBACK")
        self.event_key = event_key or env("FLOWFORGE_EVENT_KEY")
        self.api_key = api_key or env("FLOWFORGE_API_KEY")
        chosen = functions if functions is not None else declared_functions()
        self.functions: dict[str, Function] = {}
        for f in chosen:
            full = f"{self.id}-{f.id}"
            if full in self.functions:
                raise ValueError(f"two functions have the id {f.id!r}")
            self.functions[full] = f

    def full_function_id(self, function_id: str) -> str:
        """The protocol's id of a function to invoke: `<app id>-<function id>` for one of
        this app's functions, the id as given otherwise (another app's full id)."""
        local = f"{self.id}-{function_id}"
        return local if local in self.functions else function_id

    def client(self) -> Client:
        return Client(url=self.server_url, api_key=self.api_key,
                      event_key=self.event_key or ("NO_EVENT_KEY_SET" if not self.api_key else None))

    # ---------------------------------------------------------------- sync

    def sync_body(self) -> dict[str, Any]:
        if not self.serve_url:
            raise ValueError("the app needs serve_url (or FLOWFORGE_SERVE_URL): where the "
                             "server reaches it")
        separator = "&" if "?" in self.serve_url else "?"
        functions = []
        for full_id, f in self.functions.items():
            step: dict[str, Any] = {
                "id": "step",
                "name": "step",
                "runtime": {"type": "http",
                            "url": f"{self.serve_url}{separator}fnId={full_id}&stepId=step"},
            }
            if f.retries is not None:
                step["retries"] = {"attempts": f.retries}
            functions.append({"id": full_id, "name": f.name or f.id, "triggers": f.triggers,
                              "steps": {"step": step}, **f.config})
        return {"url": self.serve_url, "appname": self.id, "deploy_type": "ping",
                "sdk": SDK, "framework": "asgi", "v": "0.1", "functions": functions}

    def register(self) -> dict[str, Any]:
        """Syncs the app's functions with the server."""
        request = urllib.request.Request(f"{self.server_url}/fn/register",
                                         data=json.dumps(self.sync_body()).encode(),
                                         method="POST")
        request.add_header("content-type", "application/json")
        if self.signing_key:
            request.add_header("authorization", f"Bearer {hashed_signing_key(self.signing_key)}")
        elif self.api_key:
            request.add_header("authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as refused:
            raise FlowForgeError(refused.code, _json_or_text(refused.read())) from None

    async def register_async(self) -> dict[str, Any]:
        return await asyncio.to_thread(self.register)

    # ---------------------------------------------------------------- calls

    async def handle(self, method: str, query: str, headers: dict[str, str],
                     body: bytes) -> tuple[int, Any, dict[str, str]]:
        """Answers one request to the app's endpoint: (status, JSON body, headers)."""
        params = dict(urllib.parse.parse_qsl(query))
        if method == "GET":
            return 200, {"app_id": self.id, "sdk": SDK, "function_count": len(self.functions),
                         "mode": "cloud" if self.signing_key else "dev"}, {}
        if method == "PUT":
            try:
                return 200, await self.register_async(), {}
            except (FlowForgeError, OSError, ValueError) as error:
                return 500, {"message": f"cannot sync: {error}"}, {}
        if method != "POST":
            return 405, {"message": "GET, PUT or POST"}, {}
        if self.signing_key:
            keys = [k for k in (self.signing_key, self.signing_key_fallback) if k]
            if not signature_valid(headers.get("x-inngest-signature"), body, keys):
                return 401, {"message": "invalid or missing X-Inngest-Signature"}, {}
        function_id = params.get("fnId", "")
        f = self.functions.get(function_id)
        if f is None:
            return 500, {"name": "FunctionNotFound",
                         "message": f"this app serves no function {function_id!r}"}, \
                {"x-inngest-no-retry": "true"}
        try:
            request = json.loads(body)
        except ValueError as not_json:
            return 500, {"name": "BadRequest", "message": f"the call is not JSON: {not_json}"}, {}
        if request.get("use_api") or (request.get("ctx") or {}).get("use_api"):
            request = await asyncio.to_thread(self._fetch_run_data, request)
        ctx = request.get("ctx") or {}
        event = _execution.Event(request.get("event") or {})
        events = [_execution.Event(e) for e in (request.get("events") or [event])]
        context = _execution.Context(
            event=event, events=events, run_id=str(ctx.get("run_id", "")),
            attempt=int(ctx.get("attempt", 0)), function_id=function_id,
            logger=logger.getChild(f.id))
        target = params.get("stepId")
        outcome = await _execution.execute(
            f.handler, context, dict(request.get("steps") or {}),
            None if target in (None, "step") else target,
            bool(ctx.get("disable_immediate_execution")), self)
        return outcome.status, outcome.body, outcome.headers

    def _fetch_run_data(self, request: dict[str, Any]) -> dict[str, Any]:
        """A call too large to carry its data (`use_api`): fetch it from the server."""
        run_id = (request.get("ctx") or {}).get("run_id", "")
        headers = {}
        if self.signing_key:
            headers["authorization"] = f"Bearer {hashed_signing_key(self.signing_key)}"
        elif self.api_key:
            headers["authorization"] = f"Bearer {self.api_key}"

        def get(path: str) -> Any:
            req = urllib.request.Request(f"{self.server_url}{path}", headers=headers)
            with urllib.request.urlopen(req, timeout=30) as response:
                return json.loads(response.read())

        events = get(f"/v0/runs/{run_id}/batch")
        steps = get(f"/v0/runs/{run_id}/actions")
        return {**request, "events": events, "event": events[0] if events else {},
                "steps": steps}

    # ---------------------------------------------------------------- ASGI

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any],
                       send: Callable[..., Any]) -> None:
        """The ASGI application: `fastapi_app.mount("/api/flowforge", app)`."""
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        status, answer, extra = await self.handle(
            scope["method"], scope.get("query_string", b"").decode(), headers, body)
        payload = json.dumps(answer).encode()
        response_headers = [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode())]
        response_headers += [(k.encode(), v.encode()) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": payload})

    # ---------------------------------------------------------------- standalone

    async def serve_async(self, host: str = "127.0.0.1", port: int = 8000,
                          path: str = "/api/flowforge", register: bool = True) -> None:
        """Serves the app on its own (HTTP/1.1, keep-alive) and syncs it."""
        server = await asyncio.start_server(self._connection, host, port)
        bound = server.sockets[0].getsockname()[1]
        if not self.serve_url:
            self.serve_url = f"http://{host}:{bound}{path}"
        self._path = path
        async with server:
            if register:
                answer = await self.register_async()
                logger.info("synced %s functions with %s: %s", len(self.functions),
                            self.server_url, answer)
            await server.serve_forever()

    def serve(self, host: str = "127.0.0.1", port: int = 8000,
              path: str = "/api/flowforge", register: bool = True) -> None:
        asyncio.run(self.serve_async(host, port, path, register))

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request_line = await reader.readline()
                if not request_line:
                    return
                method, target, _ = request_line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while True:
                    line = (await reader.readline()).decode("latin-1")
                    if line in ("\r\n", "\n", ""):
                        break
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                path, _, query = target.partition("?")
                if path.rstrip("/") != getattr(self, "_path", path).rstrip("/"):
                    status, answer, extra = 404, {"message": f"nothing at {path}"}, {}
                else:
                    status, answer, extra = await self.handle(method, query, headers, body)
                payload = json.dumps(answer).encode()
                head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}",
                        "content-type: application/json", f"content-length: {len(payload)}"]
                head += [f"{k}: {v}" for k, v in extra.items()]
                writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    return
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            return
        finally:
            writer.close()


_REASONS = {200: "OK", 206: "Partial Content", 401: "Unauthorized", 404: "Not Found",
            405: "Method Not Allowed", 500: "Internal Server Error"}


def _json_or_text(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")
