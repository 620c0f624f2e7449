"""The SDK's pure parts: durations, step ids, signatures, function declarations."""

from __future__ import annotations

import hashlib
import hmac
import time
from datetime import timedelta

import pytest

import flowforge
from flowforge._app import signature_valid
from flowforge._durations import to_millis, to_text
from flowforge._execution import _Execution


def test_durations_read_the_protocol_forms_and_timedeltas():
    assert to_millis("10s") == 10_000
    assert to_millis("1h30m") == 5_400_000
    assert to_millis("500ms") == 500
    assert to_millis(timedelta(minutes=5)) == 300_000
    assert to_millis(2) == 2_000
    assert to_text(timedelta(seconds=90)) == "90s"
    assert to_text("250ms") == "250ms"
    for bad in ("", "10", "ten seconds", "5x", "1h 30m"):
        with pytest.raises(ValueError):
            to_millis(bad)


def test_step_ids_are_sha1_of_the_name_then_name_colon_n():
    execution = _Execution(memos={}, is_async=True, app=None)
    assert execution.hashed_id("a") == hashlib.sha1(b"a").hexdigest()
    assert execution.hashed_id("a") == hashlib.sha1(b"a:1").hexdigest()
    assert execution.hashed_id("b") == hashlib.sha1(b"b").hexdigest()


def test_signatures_are_checked_with_either_key_and_expire():
    key, old = "signkey-test-" + "ab" * 32, "signkey-test-" + "cd" * 32
    body = b'{"x":1}'
    t = int(time.time())

    def sign(k: str, at: int) -> str:
        mac = hmac.new(k.split("-", 2)[2].encode(), body + str(at).encode(), hashlib.sha256)
        return f"t={at}&s={mac.hexdigest()}"

    assert signature_valid(sign(key, t), body, [key])
    assert signature_valid(sign(old, t), body, [key, old])
    assert not signature_valid(sign(old, t), body, [key])
    assert not signature_valid(sign(key, t - 3600), body, [key])
    assert not signature_valid(sign(key, t), body + b" ", [key])
    assert not signature_valid(None, body, [key])


def test_hashed_signing_keys_keep_their_prefix():
    key = "signkey-live-" + "00" * 32
    assert flowforge.hashed_signing_key(key) == \
        "signkey-live-" + hashlib.sha256(bytes(32)).hexdigest()


def test_function_settings_take_the_servers_shape():
    @flowforge.function(id="settings", trigger=flowforge.trigger.cron("0 * * * *", tz="Europe/Paris"),
                        concurrency=2, throttle={"limit": 1, "period": timedelta(seconds=2)},
                        singleton={"key": "event.data.user", "mode": "cancel"},
                        batch_events={"max_size": 10, "timeout": "2s"},
                        cancel_on={"event": "x/cancel", "match": "data.id", "timeout": "1h"})
    async def settings(ctx):
        return None

    assert settings.triggers == [{"cron": "TZ=Europe/Paris 0 * * * *"}]
    assert settings.config["concurrency"] == [{"limit": 2}]
    assert settings.config["throttle"] == {"limit": 1, "period": "2s"}
    assert settings.config["singleton"] == {"key": "event.data.user", "mode": "cancel"}
    assert settings.config["batchEvents"] == {"maxSize": 10, "timeout": "2s"}
    assert settings.config["cancel"] == [
        {"event": "x/cancel", "if": "event.data.id == async.data.id", "timeout": "3600s"}]
    app = flowforge.App("unit", [settings], serve_url="http://app.test/api/flowforge")
    synced = app.sync_body()["functions"][0]
    assert synced["id"] == "unit-settings"
    assert synced["steps"]["step"]["runtime"]["url"].endswith("?fnId=unit-settings&stepId=step")
    assert synced["throttle"] == {"limit": 1, "period": "2s"}


def test_steps_outside_a_function_say_so():
    with pytest.raises(RuntimeError, match="inside a FlowForge function"):
        flowforge.step.run("x", lambda: 1)
