"""`python -m flowforge serve DIR`: imports every Python file in DIR, serves the
functions they declare, and syncs them with the server (`flowforge dev DIR` runs this
and restarts it when a file changes).

Options: `--app-id` (default: DIR's name), `--host`, `--port` (0: any free port),
`--server` (default FLOWFORGE_URL or http://127.0.0.1:8288), `--parent-pid` (exit when
that process ends).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
import threading
import time
from pathlib import Path

from ._app import App, declared_functions

SKIP = {"__pycache__", "node_modules", "venv", ".venv", "tests", "test"}


def load_directory(directory: Path) -> list[Path]:
    """Imports every `.py` file under `directory` (not tests, virtualenvs or hidden
    folders); answers the files imported."""
    sys.path.insert(0, str(directory))
    loaded = []
    for path in sorted(directory.rglob("*.py")):
        relative = path.relative_to(directory)
        if any(part in SKIP or part.startswith(".") for part in relative.parts[:-1]):
            continue
        if path.name.startswith(("test_", ".")) or path.name == "setup.py":
            continue
        name = "_flowforge_user_" + "_".join(relative.with_suffix("").parts)
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            continue
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        loaded.append(relative)
    return loaded


def _exit_with_parent(parent: int) -> None:
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flowforge")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the functions declared in DIR")
    serve.add_argument("directory", type=Path)
    serve.add_argument("--app-id")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=0)
    serve.add_argument("--server")
    serve.add_argument("--parent-pid", type=int,
                       help="exit when this process (the one that started us) ends")
    args = parser.parse_args(argv)
    if args.parent_pid:
        _exit_with_parent(args.parent_pid)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    directory = args.directory.resolve()
    files = load_directory(directory)
    functions = declared_functions()
    if not functions:
        print(f"flowforge: no functions declared in {directory} ({len(files)} files read)",
              file=sys.stderr)
        return 2
    app_id = args.app_id or directory.name.replace("_", "-").lower() or "app"
    app = App(app_id, functions, server_url=args.server)
    print(f"flowforge: serving {len(functions)} functions of {app_id} from "
          f"{len(files)} files", file=sys.stderr, flush=True)
    try:
        app.serve(host=args.host, port=args.port)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
