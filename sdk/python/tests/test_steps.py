"""Every step kind through the Python SDK, over real HTTP, against a real server."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid

import flowforge
from workflows import COUNTS

TIMEOUT = 30


def run_of(client: flowforge.Client, name: str, data: dict) -> dict:
    event_id = client.send(name, data)
    run = client.runs_of_event(event_id, 1, TIMEOUT)[0]
    return client.wait_for_run(run["id"], TIMEOUT)


def key() -> str:
    return uuid.uuid4().hex[:12]


def test_steps_are_memoized_across_calls(client):
    k = key()
    run = run_of(client, "py/memo", {"key": k})
    assert run["status"] == "completed", run
    assert run["output"] == {"first": 3, "second": 13, "third": 26}
    # The function was called once per step plus the final call, but each step ran once.
    assert COUNTS[f"{k}:add"] == 2
    assert COUNTS[f"{k}:double"] == 1
    assert COUNTS[f"{k}:calls"] >= 4
    names = [s["name"] for s in run["steps"]]
    assert names == ["add", "add", "double"], names


def test_a_failing_step_is_retried_until_it_succeeds(client):
    k = key()
    run = run_of(client, "py/flaky", {"key": k})
    assert run["status"] == "completed", run
    assert run["output"] == "done"
    assert COUNTS[f"{k}:attempts"] == 3


def test_a_non_retriable_error_fails_the_run_at_once(client):
    k = key()
    run = run_of(client, "py/fatal", {"key": k})
    assert run["status"] == "failed", run
    assert "card declined" in json.dumps(run["error"])
    assert COUNTS[f"{k}:attempts"] == 1


def test_a_step_that_fails_for_good_raises_where_it_is_awaited(client):
    k = key()
    run = run_of(client, "py/caught", {"key": k})
    assert run["status"] == "completed", run
    assert run["output"]["recovered"] is True
    assert run["output"]["name"] == "ValueError"
    assert "always broken" in run["output"]["message"]
    assert COUNTS[f"{k}:attempts"] == 2  # retries=1: two attempts


def test_sleep_pauses_the_run(client):
    started = time.monotonic()
    run = run_of(client, "py/nap", {})
    assert run["status"] == "completed", run
    assert run["output"]["slept"] is True
    assert time.monotonic() - started >= 1.0
    kinds = {s["name"]: s for s in run["steps"]}
    assert "nap" in kinds, run["steps"]


def test_wait_for_event_resumes_with_the_matching_event(client):
    order = key()
    event_id = client.send("py/order", {"order_id": order})
    run = client.runs_of_event(event_id, 1, TIMEOUT)[0]
    deadline = time.monotonic() + TIMEOUT
    while not any(s.get("status") == "waiting" for s in client.run(run["id"])["steps"]):
        assert time.monotonic() < deadline, "the run never waited"
        time.sleep(0.05)
    client.send("py/shipped", {"order_id": "someone-else", "carrier": "no"})
    client.send("py/shipped", {"order_id": order, "carrier": "UPS"})
    finished = client.wait_for_run(run["id"], TIMEOUT)
    assert finished["status"] == "completed", finished
    assert finished["output"] == {"shipped": {"order_id": order, "carrier": "UPS"}}


def test_wait_for_event_times_out_with_none(client):
    run = run_of(client, "py/order", {"order_id": key(), "timeout": "1s"})
    assert run["status"] == "completed", run
    assert run["output"] == {"shipped": None}


def pending_approval_of(client: flowforge.Client, run_id: str) -> dict:
    deadline = time.monotonic() + TIMEOUT
    while True:
        found = [a for a in client.approvals(status="pending") if a["run_id"] == run_id]
        if found:
            return found[0]
        assert time.monotonic() < deadline, "the run never asked for an approval"
        time.sleep(0.05)


def test_an_approval_resumes_the_run_with_the_decision(client):
    event_id = client.send("py/refund", {"amount": 120})
    run = client.runs_of_event(event_id, 1, TIMEOUT)[0]
    approval = pending_approval_of(client, run["id"])
    assert approval["title"] == "Refund 120 EUR?"
    answered = client.approve(approval["id"], comment="fine by me")
    assert answered["status"] == "approved" and answered["decided_by"] == "dev"
    finished = client.wait_for_run(run["id"], TIMEOUT)
    assert finished["status"] == "completed", finished
    assert finished["output"] == {"refunded": True, "decision": {
        "approved": True, "by": "dev", "comment": "fine by me", "timed_out": False}}
    # Answering again the other way is refused; the decision stands.
    try:
        client.reject(approval["id"])
        raise AssertionError("a second, different answer was accepted")
    except flowforge.FlowForgeError as error:
        assert error.status == 409, error.body


def test_a_rejection_and_a_timeout_resume_the_run_without_approval(client):
    event_id = client.send("py/refund", {"amount": 9000})
    run = client.runs_of_event(event_id, 1, TIMEOUT)[0]
    client.reject(pending_approval_of(client, run["id"])["id"], comment="too much")
    rejected = client.wait_for_run(run["id"], TIMEOUT)
    assert rejected["output"]["refunded"] is False
    assert rejected["output"]["decision"]["comment"] == "too much"

    timed = run_of(client, "py/refund", {"amount": 1, "timeout": "1s"})
    assert timed["output"] == {"refunded": False, "decision": {
        "approved": False, "by": None, "comment": None, "timed_out": True}}
    statuses = {a["run_id"]: a["status"] for a in client.approvals()}
    assert statuses[timed["id"]] == "timed_out"


def test_invoke_returns_the_child_result(client):
    run = run_of(client, "py/parent", {"n": 7})
    assert run["status"] == "completed", run
    assert run["output"] == {"squared": 49}


def test_send_event_triggers_another_function_once(client):
    k = key()
    run = run_of(client, "py/announce", {"key": k})
    assert run["status"] == "completed", run
    sent = run["output"]["sent"]
    assert len(sent) == 1
    heard = client.runs_of_event(sent[0], 1, TIMEOUT)
    assert len(heard) == 1
    assert client.wait_for_run(heard[0]["id"], TIMEOUT)["output"] == {"heard": k}


def test_parallel_steps_run_once_each(client):
    k = key()
    run = run_of(client, "py/parallel", {"key": k})
    assert run["status"] == "completed", run
    assert run["output"] == {"parts": [10, 20, 30], "total": 60}
    for n in (1, 2, 3):
        assert COUNTS[f"{k}:part{n}"] == 1, dict(COUNTS)


def test_plain_def_functions_work_too(client):
    k = key()
    run = run_of(client, "py/plain", {"key": k})
    assert run["status"] == "completed", run
    assert run["output"] == {"greeting": f"hello {k}"}
    assert COUNTS[f"{k}:greet"] == 1


def test_except_exception_cannot_swallow_a_step_boundary(client):
    run = run_of(client, "py/greedy", {})
    assert run["status"] == "completed", run
    assert run["output"] == 3


def test_unsigned_or_badly_signed_calls_are_rejected(app):
    body = json.dumps({"event": {}, "steps": {}, "ctx": {}}).encode()
    url = app.app.serve_url + "?fnId=pytest-memo&stepId=step"
    for signature in (None, f"t={int(time.time())}&s={'00' * 32}"):
        request = urllib.request.Request(url, data=body, method="POST")
        if signature:
            request.add_header("x-inngest-signature", signature)
        try:
            urllib.request.urlopen(request, timeout=5)
            raise AssertionError("the app accepted a call it could not verify")
        except urllib.error.HTTPError as refused:
            assert refused.code == 401
            assert "X-Inngest-Signature" in json.loads(refused.read())["message"]


def test_the_app_is_synced_with_every_function(client, server_url):
    with urllib.request.urlopen(f"{server_url}/api/v1/functions", timeout=5) as response:
        functions = {f["id"]: f for f in json.loads(response.read())["items"]}
    assert "pytest-memo" in functions and "pytest-fan-out" in functions
    assert functions["pytest-flaky"]["retries"] == 3


def test_flow_control_settings_reach_the_server_and_hold(client):
    order = key()
    first = run_of(client, "py/once", {"order_id": order})
    second = run_of(client, "py/once", {"order_id": order})
    assert first["status"] == "completed", first
    assert first["output"] == order
    assert second["status"] == "skipped", second
    assert second["skipped"]["reason"] == "idempotent"


def test_a_keyed_concurrency_limit_runs_one_step_at_a_time_per_key(client):
    from workflows import IN_FLIGHT

    customer = key()
    ids = client.send_events([{"name": "py/exclusive", "data": {"customer": customer}}
                              for _ in range(4)])
    runs = [client.wait_for_run(client.runs_of_event(i, 1, TIMEOUT)[0]["id"], TIMEOUT)
            for i in ids]
    assert [r["status"] for r in runs] == ["completed"] * 4, runs
    assert [r["output"] for r in runs] == [customer] * 4
    assert IN_FLIGHT["most"] == 1, IN_FLIGHT
    holds = [h for r in runs for h in r["holds"]]
    assert holds, "four runs of one key never waited"
    assert all(h["reason"] == "concurrency" and h["key"] == customer for h in holds), holds
