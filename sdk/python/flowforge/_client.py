"""A client for applications: send events, read runs. Standard library only; the
`*_async` methods run the same request in a worker thread."""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8288"


class FlowForgeError(Exception):
    """The server refused a request: its status and its JSON error."""

    def __init__(self, status: int, body: Any) -> None:
        message = body.get("error", body) if isinstance(body, dict) else body
        super().__init__(f"FlowForge answered {status}: {message}")
        self.status = status
        self.body = body


class Client:
    """`Client(url=, api_key=)`; both default to `FLOWFORGE_URL` / `FLOWFORGE_API_KEY`.
    `event_key` (default `FLOWFORGE_EVENT_KEY`) sends through the Inngest-style
    `POST /e/{key}` instead, as apps do."""

    def __init__(self, url: str | None = None, api_key: str | None = None,
                 event_key: str | None = None, timeout: float = 30.0) -> None:
        self.url = (url or os.environ.get("FLOWFORGE_URL") or DEFAULT_URL).rstrip("/")
        self.api_key = api_key or os.environ.get("FLOWFORGE_API_KEY")
        self.event_key = event_key or os.environ.get("FLOWFORGE_EVENT_KEY")
        self.timeout = timeout

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("content-type", "application/json")
        if self.api_key:
            request.add_header("authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
                return json.loads(raw) if raw else None
        except urllib.error.HTTPError as refused:
            raw = refused.read()
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = raw.decode(errors="replace")
            raise FlowForgeError(refused.code, parsed) from None

    # ---------------------------------------------------------------- events

    def send(self, name: str, data: dict[str, Any] | None = None, *,
             id: str | None = None) -> str:
        """Sends one event; returns its id. An `id` makes re-sending harmless."""
        event: dict[str, Any] = {"name": name, "data": data or {}}
        if id is not None:
            event["id"] = id
        return self.send_events([event])[0]

    def send_events(self, events: list[dict[str, Any]]) -> list[str]:
        if self.event_key:
            answer = self._request("POST", f"/e/{urllib.parse.quote(self.event_key)}", events)
        else:
            answer = self._request("POST", "/api/v1/events", events)
        return list(answer["ids"])

    async def send_async(self, name: str, data: dict[str, Any] | None = None, *,
                         id: str | None = None) -> str:
        return await asyncio.to_thread(self.send, name, data, id=id)

    async def send_events_async(self, events: list[dict[str, Any]]) -> list[str]:
        return await asyncio.to_thread(self.send_events, events)

    # ---------------------------------------------------------------- runs

    def run(self, run_id: str) -> dict[str, Any]:
        """One run with its step timeline."""
        return self._request("GET", f"/api/v1/runs/{urllib.parse.quote(run_id)}")

    def runs(self, **filters: Any) -> list[dict[str, Any]]:
        """Runs, newest first; filters as `GET /api/v1/runs` takes them (`event=`,
        `function=`, `status=`, `limit=`)."""
        query = urllib.parse.urlencode({k: v for k, v in filters.items() if v is not None})
        answer = self._request("GET", "/api/v1/runs" + (f"?{query}" if query else ""))
        return list(answer["items"])

    def runs_of_event(self, event_id: str, count: int = 1,
                      timeout: float = 30.0) -> list[dict[str, Any]]:
        """Waits until the event has started `count` runs; returns them."""
        deadline = time.monotonic() + timeout
        while True:
            runs = self.runs(event=event_id)
            if len(runs) >= count:
                return runs
            if time.monotonic() > deadline:
                raise TimeoutError(f"event {event_id} started {len(runs)} of {count} runs")
            time.sleep(0.05)

    def wait_for_run(self, run_id: str, timeout: float = 30.0) -> dict[str, Any]:
        """Waits until the run has ended (completed, failed, cancelled or skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.run(run_id)
            if run["status"] in ("completed", "failed", "cancelled", "skipped"):
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} is still {run['status']}")
            time.sleep(0.05)

    def approvals(self, **filters: Any) -> list[dict[str, Any]]:
        """Approvals runs asked for, newest first (`status=`, `assignee=`)."""
        query = urllib.parse.urlencode({k: v for k, v in filters.items() if v is not None})
        answer = self._request("GET", "/api/v1/approvals" + (f"?{query}" if query else ""))
        return list(answer["items"])

    def approve(self, approval_id: str, comment: str | None = None) -> dict[str, Any]:
        """Approves; the waiting run resumes with `approved: True`."""
        return self._request("POST", f"/api/v1/approvals/{urllib.parse.quote(approval_id)}/approve",
                             {"comment": comment})

    def reject(self, approval_id: str, comment: str | None = None) -> dict[str, Any]:
        """Rejects; the waiting run resumes with `approved: False`."""
        return self._request("POST", f"/api/v1/approvals/{urllib.parse.quote(approval_id)}/reject",
                             {"comment": comment})

    async def run_async(self, run_id: str) -> dict[str, Any]:
        return await asyncio.to_thread(self.run, run_id)

    async def wait_for_run_async(self, run_id: str, timeout: float = 30.0) -> dict[str, Any]:
        return await asyncio.to_thread(self.wait_for_run, run_id, timeout)
