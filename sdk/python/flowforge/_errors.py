"""Errors user code raises, and the one the SDK raises into it."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone


class NonRetriableError(Exception):
    """Fails the step (or the function) at once: no further attempts."""


class RetryAfterError(Exception):
    """Fails this attempt and asks for the next one no sooner than `retry_after`
    (seconds, a timedelta, or a point in time)."""

    def __init__(self, message: str, retry_after: float | timedelta | datetime) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def header(self) -> str:
        after = self.retry_after
        if isinstance(after, datetime):
            if after.tzinfo is None:
                after = after.replace(tzinfo=timezone.utc)
            return after.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        if isinstance(after, timedelta):
            after = after.total_seconds()
        return str(max(1, int(after)))


class StepError(Exception):
    """A step failed for good (after its last attempt): raised where the step is awaited,
    so the function may catch it and go on."""

    def __init__(self, name: str, message: str, stack: str | None = None) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message
        self.stack = stack


class _Interrupt(BaseException):
    """Stops a function at a step that has not run yet.

    It derives from BaseException, not Exception, so that `except Exception:` in user
    code never swallows it; the SDK also decides what to answer from the steps it saw
    *before* the function could react, so even a bare `except:` cannot change it."""
