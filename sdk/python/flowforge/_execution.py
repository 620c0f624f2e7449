"""Running one call of a function: replaying memoized steps, finding the new ones.

The server calls the function from the top every time. Each step the function reaches
either has a memo (its result from an earlier call: returned at once) or is new. The
first new step ends the call: a single `step.run` is executed right away and its result
reported; several new steps reached together (`asyncio.gather`) are reported as
planned, and the server calls back once per step to execute it; `sleep`,
`wait_for_event`, `invoke` and `ai` are reported for the server to carry out.

How the function is stopped at a new step: an `async` function awaits a future that
never resolves, and the SDK cancels its task once it has seen every step reached in
that turn (`asyncio.CancelledError`); a plain `def` function (run in a worker thread) is
unwound with `flowforge._errors._Interrupt`. Both derive from BaseException, so
`except Exception:` in user code does not catch them; and the SDK's answer is fixed
from the steps seen before the function is stopped, so no handler can change it.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import inspect
import json
import logging
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

from ._durations import Duration, to_text
from ._errors import NonRetriableError, RetryAfterError, StepError, _Interrupt

_current: contextvars.ContextVar["_Execution | None"] = contextvars.ContextVar(
    "flowforge_execution", default=None
)

# How many event-loop turns without a new step end the search for parallel steps.
_QUIET_TURNS = 5


@dataclass
class Context:
    """What a function is called with."""

    event: "Event"
    events: list["Event"]
    run_id: str
    attempt: int
    function_id: str
    logger: logging.Logger


class Event(dict):
    """An event: a dict with attribute access (`ctx.event.data["order_id"]`)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as missing:
            raise AttributeError(name) from missing


@dataclass
class _Found:
    id: str
    name: str
    op: str
    opts: Any = None
    runner: Callable[[], Any] | None = None


@dataclass
class _Execution:
    memos: dict[str, Any]
    is_async: bool
    app: Any
    counters: dict[str, int] = field(default_factory=dict)
    found: list[_Found] = field(default_factory=list)
    reported: asyncio.Event | None = None

    def hashed_id(self, name: str) -> str:
        n = self.counters.get(name, 0)
        self.counters[name] = n + 1
        key = name if n == 0 else f"{name}:{n}"
        return hashlib.sha1(key.encode()).hexdigest()

    def report(self, found: _Found) -> None:
        self.found.append(found)
        if self.reported is not None:
            self.reported.set()


def _execution() -> _Execution:
    execution = _current.get()
    if execution is None:
        raise RuntimeError("flowforge.step is used inside a FlowForge function only")
    return execution


def _unwrap(name: str, memo: Any) -> Any:
    if isinstance(memo, dict) and isinstance(memo.get("error"), dict):
        error = memo["error"]
        raise StepError(
            str(error.get("name", "Error")), str(error.get("message", "")), error.get("stack")
        )
    if isinstance(memo, dict) and set(memo) == {"data"}:
        return memo["data"]
    return memo


async def _call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    result = fn(*args, **kwargs)
    if inspect.isawaitable(result):
        result = await result
    return result


class Step:
    """The `step` of the function being executed (a proxy bound through contextvars:
    `from flowforge import step` works in every function, also in parallel branches).

    In an `async def` function each method returns an awaitable; in a plain `def`
    function it returns the value."""

    def _step(self, name: str, op: str, opts: Any, runner: Callable[[], Any] | None,
              unwrap: Callable[[Any], Any]) -> Any:
        if not isinstance(name, str) or not name:
            raise ValueError("a step needs an id: a non-empty string")
        execution = _execution()
        step_id = execution.hashed_id(name)
        if execution.is_async:
            return self._await(execution, step_id, name, op, opts, runner, unwrap)
        if step_id in execution.memos:
            return unwrap(execution.memos[step_id])
        execution.report(_Found(step_id, name, op, opts, runner))
        raise _Interrupt()

    async def _await(self, execution: _Execution, step_id: str, name: str, op: str,
                     opts: Any, runner: Callable[[], Any] | None,
                     unwrap: Callable[[Any], Any]) -> Any:
        if step_id in execution.memos:
            return unwrap(execution.memos[step_id])
        execution.report(_Found(step_id, name, op, opts, runner))
        await asyncio.get_running_loop().create_future()  # never resolves
        raise _Interrupt()  # unreachable: the task is cancelled first

    def run(self, id: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Runs `fn(*args, **kwargs)` once (retried on failure); later calls return
        its memoized, JSON-serialisable result."""
        execution = _execution()
        if execution.is_async:
            runner: Callable[[], Any] = lambda: _call(fn, *args, **kwargs)  # noqa: E731
        else:
            runner = lambda: fn(*args, **kwargs)  # noqa: E731
        return self._step(id, "StepRun", None, runner, lambda memo: _unwrap(id, memo))

    def sleep(self, id: str, duration: Duration) -> Any:
        """Pauses the run for `duration` (`"10s"`, `"5m"`, a timedelta) without holding
        anything: the server calls the function again when it is over."""
        return self._step(id, "Sleep", {"duration": to_text(duration)}, None, lambda _: None)

    def sleep_until(self, id: str, when: datetime | str) -> Any:
        """Pauses the run until a point in time."""
        if isinstance(when, str):
            when = datetime.fromisoformat(when.replace("Z", "+00:00"))
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        millis = max(0, int((when - datetime.now(timezone.utc)).total_seconds() * 1000))
        return self._step(id, "Sleep", {"duration": f"{millis}ms"}, None, lambda _: None)

    def wait_for_event(self, id: str, *, event: str, timeout: Duration,
                       match: str | None = None, if_: str | None = None) -> Any:
        """Waits for an event named `event` sent after the wait began; returns it, or
        None when `timeout` passes first. `match="data.order_id"` requires that field
        to equal the triggering event's; `if_` is a CEL expression over `event` (the
        trigger) and `async` (the candidate)."""
        expression = if_
        if match is not None:
            same = f"event.{match} == async.{match}"
            expression = same if if_ is None else f"{same} && ({if_})"
        opts = {"event": event, "timeout": to_text(timeout)}
        if expression is not None:
            opts["if"] = expression
        return self._step(id, "WaitForEvent", opts, None,
                          lambda memo: None if memo is None else Event(memo))

    def wait_for_approval(self, id: str, *, title: str, timeout: Duration,
                          assignees: list[str] | tuple[str, ...] = (),
                          description: str | None = None) -> dict[str, Any]:
        """Asks people for a decision (FlowForge approvals) and waits for it. The
        assignees (user ids; none: any member) are notified; the step returns
        `{"approved", "by", "comment", "timed_out"}` once a member answers
        `POST /api/v1/approvals/{id}/approve|reject`, or a rejection with
        `timed_out: True` when `timeout` passes first."""
        if not isinstance(title, str) or not title.strip():
            raise ValueError("wait_for_approval needs a title")
        ask: dict[str, Any] = {"title": title, "assignees": list(assignees)}
        if description is not None:
            ask["description"] = description
        opts = {"event": "flowforge/approval.decided", "timeout": to_text(timeout),
                "approval": ask}
        return self._step(id, "WaitForEvent", opts, None, _approval_outcome)

    def invoke(self, id: str, *, function_id: str, data: dict[str, Any] | None = None,
               timeout: Duration | None = None) -> Any:
        """Runs another function (its id, or the full `<app>-<function>` id) with
        `data` as its event data, and returns its result; raises StepError when it
        fails."""
        execution = _execution()
        full_id = execution.app.full_function_id(function_id)
        opts: dict[str, Any] = {"function_id": full_id, "payload": {"data": data or {}}}
        if timeout is not None:
            opts["timeout"] = to_text(timeout)
        return self._step(id, "InvokeFunction", opts, None, lambda memo: _unwrap(id, memo))

    def send_event(self, id: str, *, name: str | None = None,
                   data: dict[str, Any] | None = None,
                   events: list[dict[str, Any]] | None = None) -> Any:
        """Sends one event (`name`, `data`) or several (`events`) exactly once;
        returns their ids."""
        if events is None:
            if not name:
                raise ValueError("send_event needs a name (or events)")
            events = [{"name": name, "data": data or {}}]
        execution = _execution()
        client = execution.app.client()
        batch = list(events)
        if execution.is_async:
            runner: Callable[[], Any] = lambda: client.send_events_async(batch)  # noqa: E731
        else:
            runner = lambda: client.send_events(batch)  # noqa: E731
        return self._step(id, "StepRun", None, runner, lambda memo: _unwrap(id, memo))

    def ai(self, id: str, *, model: str, prompt: str | None = None,
           messages: list[dict[str, Any]] | None = None, system: str | None = None,
           max_tokens: int = 1024, provider: str = "anthropic", api_key: str | None = None,
           url: str | None = None, body: dict[str, Any] | None = None) -> Any:
        """Asks an LLM through the server (which makes the request, retries it, and
        records the answer and its cost). Returns the provider's JSON answer."""
        opts = ai_request(model=model, prompt=prompt, messages=messages, system=system,
                          max_tokens=max_tokens, provider=provider, api_key=api_key,
                          url=url, body=body)
        return self._step(id, "AIGateway", opts, None, lambda memo: _unwrap(id, memo))


_PROVIDERS = {
    "anthropic": ("https://api.anthropic.com/v1/messages", "anthropic", "ANTHROPIC_API_KEY"),
    "openai": ("https://api.openai.com/v1/chat/completions", "openai-chat", "OPENAI_API_KEY"),
}


def ai_request(*, model: str, prompt: str | None, messages: list[dict[str, Any]] | None,
               system: str | None, max_tokens: int, provider: str, api_key: str | None,
               url: str | None, body: dict[str, Any] | None) -> dict[str, Any]:
    """The `AIGateway` op's options for a provider's documented chat API."""
    import os

    if provider not in _PROVIDERS:
        raise ValueError(f"provider must be one of {sorted(_PROVIDERS)}")
    default_url, fmt, key_variable = _PROVIDERS[provider]
    if messages is None:
        if prompt is None:
            raise ValueError("step.ai needs a prompt or messages")
        messages = [{"role": "user", "content": prompt}]
    if body is None:
        body = {"model": model, "max_tokens": max_tokens, "messages": list(messages)}
        if system is not None:
            if provider == "anthropic":
                body["system"] = system
            else:
                body["messages"] = [{"role": "system", "content": system}, *messages]
    return {
        "url": url or default_url,
        "format": fmt,
        "body": body,
        "auth_key": api_key or os.environ.get(key_variable, ""),
        "headers": {},
    }


step = Step()


@dataclass
class Outcome:
    """What to answer the server: a status, a JSON body, extra headers."""

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


def _error_body(error: BaseException) -> dict[str, Any]:
    name = type(error).__name__
    message = str(error)
    if isinstance(error, StepError):
        name, message = error.name, error.message
    return {
        "name": name,
        "message": message,
        "stack": "".join(traceback.format_exception(type(error), error, error.__traceback__)),
    }


def _failed(error: BaseException) -> Outcome:
    headers = {"x-inngest-no-retry": "false"}
    if isinstance(error, (NonRetriableError, StepError)):
        headers["x-inngest-no-retry"] = "true"
    elif isinstance(error, RetryAfterError):
        headers["retry-after"] = error.header()
    return Outcome(500, _error_body(error), headers)


def _json_or_failure(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError) as not_json:
        raise NonRetriableError(f"the result is not JSON-serialisable: {not_json}") from None
    return value


def _op(found: _Found, op: str, data: Any = None, error: Any = None) -> dict[str, Any]:
    value = {
        "id": found.id,
        "name": found.name,
        "displayName": found.name,
        "op": op,
        "opts": None if op in ("StepPlanned", "StepRun", "StepError") else found.opts,
        "data": data,
    }
    if error is not None:
        value["error"] = error
    return value


async def execute(handler: Callable[[Context], Any], context: Context, memos: dict[str, Any],
                  target: str | None, disable_immediate: bool, app: Any) -> Outcome:
    is_async = inspect.iscoroutinefunction(handler)
    execution = _Execution(memos=memos, is_async=is_async, app=app)
    token = _current.set(execution)
    try:
        if is_async:
            execution.reported = asyncio.Event()
            outcome = await _run_async(handler, context, execution)
        else:
            outcome = await asyncio.to_thread(_run_sync, handler, context)
    finally:
        _current.reset(token)
    if outcome is not None:
        return outcome
    return await _answer_steps(execution, target, disable_immediate)


def _run_sync(handler: Callable[[Context], Any], context: Context) -> Outcome | None:
    try:
        return Outcome(200, _json_or_failure(handler(context)))
    except _Interrupt:
        return None
    except Exception as error:  # the function failed: tell the server
        return _failed(error)


async def _run_async(handler: Callable[[Context], Awaitable[Any]], context: Context,
                     execution: _Execution) -> Outcome | None:
    task = asyncio.ensure_future(handler(context))
    assert execution.reported is not None
    reported = asyncio.ensure_future(execution.reported.wait())
    try:
        await asyncio.wait({task, reported}, return_when=asyncio.FIRST_COMPLETED)
        # Let parallel branches reach their steps too.
        seen, quiet = len(execution.found), 0
        while not task.done() and quiet < _QUIET_TURNS:
            await asyncio.sleep(0)
            quiet = quiet + 1 if len(execution.found) == seen else 0
            seen = len(execution.found)
    finally:
        reported.cancel()
    if task.done():
        error = task.exception()
        if error is None:
            try:
                return Outcome(200, _json_or_failure(task.result()))
            except NonRetriableError as not_json:
                return _failed(not_json)
        if isinstance(error, _Interrupt):
            return None
        return _failed(error)
    task.cancel()
    await asyncio.wait({task}, timeout=1.0)
    return None


async def _answer_steps(execution: _Execution, target: str | None,
                        disable_immediate: bool) -> Outcome:
    found = list(execution.found)
    chosen: _Found | None = None
    if target is not None:
        chosen = next((f for f in found if f.id == target), None)
        if chosen is None:
            return _failed(RuntimeError(
                f"step {target} was not reached; the function's steps changed between calls"))
    elif len(found) == 1 and found[0].op == "StepRun" and not disable_immediate:
        chosen = found[0]
    if chosen is None:
        return Outcome(206, [_op(f, "StepPlanned" if f.op == "StepRun" else f.op) for f in found])
    if chosen.runner is None:
        return Outcome(206, [_op(chosen, chosen.op)])
    try:
        if execution.is_async:
            data = await chosen.runner()
        else:
            data = await asyncio.to_thread(chosen.runner)
        data = _json_or_failure(data)
    except (NonRetriableError, RetryAfterError) as error:
        return _failed(error)
    except Exception as error:  # the step's attempt failed: the server retries it
        return Outcome(206, [_op(chosen, "StepError", error=_error_body(error))])
    return Outcome(206, [_op(chosen, "StepRun", data=data)])


def _approval_outcome(memo: Any) -> dict[str, Any]:
    if memo is None:
        return {"approved": False, "by": None, "comment": None, "timed_out": True}
    data = memo.get("data") or {}
    return {"approved": bool(data.get("approved")), "by": data.get("by"),
            "comment": data.get("comment"), "timed_out": bool(data.get("timed_out"))}
