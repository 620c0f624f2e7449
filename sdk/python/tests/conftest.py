"""A real FlowForge server (the `flowforge` binary, `flowforge dev` on a fresh SQLite
folder) and a real app of this SDK on another port, talking HTTP, signed both ways."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

import flowforge

ROOT = Path(__file__).resolve().parents[3]
SIGNING_KEY = "signkey-test-" + secrets.token_hex(32)


def flowforge_binary() -> Path:
    explicit = os.environ.get("FLOWFORGE_BIN")
    if explicit:
        return Path(explicit)
    for profile in ("debug", "release"):
        candidate = ROOT / "target" / profile / "flowforge"
        if candidate.exists():
            return candidate
    pytest.fail("no flowforge binary: run `cargo build -p flowforge-api` (or set FLOWFORGE_BIN)")


@pytest.fixture(scope="session")
def server_url():
    data = tempfile.mkdtemp(prefix="ff-pytest-")
    env = dict(os.environ, FLOWFORGE_SIGNING_KEY=SIGNING_KEY, FLOWFORGE_RETRY_BACKOFF_MS="100",
               FLOWFORGE_RETRY_BACKOFF_MAX_MS="200", RUST_LOG="warn")
    process = subprocess.Popen(
        [str(flowforge_binary()), "dev", "--port", "0", "--data-dir", data],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    url = None
    deadline = time.monotonic() + 60
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        if "listening on " in line:
            url = line.split("listening on ", 1)[1].split()[0]
            break
    if url is None:
        process.kill()
        pytest.fail("the FlowForge server did not start")
    # Keep reading its output so it never blocks on a full pipe.
    threading.Thread(target=process.stdout.read, daemon=True).start()
    yield url
    process.terminate()
    process.wait(timeout=10)
    shutil.rmtree(data, ignore_errors=True)


class RunningApp:
    """An app served on its own event loop, in a thread."""

    def __init__(self, app: flowforge.App) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        if not self.ready.wait(30) or self.error is not None:
            raise RuntimeError(f"the app did not start: {self.error}")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._serve())
        except BaseException as error:  # noqa: BLE001 - reported to the test
            self.error = error
            self.ready.set()

    async def _serve(self) -> None:
        server = await asyncio.start_server(self.app._connection, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        self.app.serve_url = f"http://127.0.0.1:{port}/api/flowforge"
        self.app._path = "/api/flowforge"
        await self.app.register_async()
        self.ready.set()
        async with server:
            await server.serve_forever()


@pytest.fixture(scope="session")
def app(server_url):
    import workflows  # noqa: F401 - declares the functions

    functions = [f for f in flowforge.declared_functions() if f.handler.__module__ == "workflows"]
    application = flowforge.App("pytest", functions, server_url=server_url,
                                signing_key=SIGNING_KEY)
    return RunningApp(application)


@pytest.fixture(scope="session")
def client(server_url, app):
    return flowforge.Client(url=server_url)


sys.path.insert(0, str(Path(__file__).parent))
