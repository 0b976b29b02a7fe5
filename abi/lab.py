"""`make lab`: JupyterLab on the claim notebooks, with the project's kernel, that works offline.

The server's root is the repository (the file browser reaches notebooks/, results/ and book/), and the
page opens on ``notebooks/``. The kernel is the virtualenv's ``python3``: its kernel
spec is put first on the search path, so a ``python3`` spec in the user's own Jupyter folders cannot
start another interpreter without the project's packages. Nothing at startup reaches the network
(no news feed, no update check, no PyPI extension manager), so the server starts the same offline.
JupyterLab's user settings and workspaces stay where JupyterLab keeps them: this is the user's lab.

Run as ``python -m abi.lab [--port N]``; tests/test_jupyterlab.py reuses the functions below.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from abi.paths import REPO_ROOT

DEFAULT_PORT = 8888
HOST = "localhost"
NOTEBOOKS_URL = "/lab/tree/notebooks"
# How many ports above a busy one are tried before the system picks any free port.
PORT_SEARCH = 50
STARTUP_TIMEOUT_S = 60.0
# Server options that keep startup off the network and the page out of the user's browser.
OFFLINE_OPTIONS = (
    "--no-browser",
    "--LabApp.news_url=None",  # the news feature would fetch an Atom feed from GitHub
    "--LabApp.check_for_updates_class=jupyterlab.handlers.announcements.NeverCheckForUpdate",
    "--LabApp.extension_manager=readonly",  # the default "pypi" manager queries PyPI
)


def port_is_free(port: int, host: str = HOST) -> bool:
    """True when every address ``host`` names can bind ``port``, as the server will try to."""
    for family, _, _, _, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # The server sets SO_REUSEADDR too, so a port in TIME_WAIT counts as free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as error:
                # An address family the machine lacks (no IPv6) is skipped, as the server skips it.
                if error.errno != errno.EADDRNOTAVAIL:
                    return False
    return True


def any_free_port() -> int:
    """A localhost port the system reports free right now (a later bind can still lose a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def choose_port(preferred: int) -> int:
    """``preferred`` when free, else the next free port above it, else any free port."""
    for port in range(preferred, preferred + PORT_SEARCH + 1):
        if port_is_free(port):
            return port
    return any_free_port()


def kernel_search_path(environ: Mapping[str, str]) -> str:
    """``JUPYTER_PATH`` with the virtualenv's data folder first: its ``python3`` kernel spec wins."""
    venv_data = str(Path(sys.prefix) / "share" / "jupyter")
    rest = [path for path in environ.get("JUPYTER_PATH", "").split(os.pathsep) if path and path != venv_data]
    return os.pathsep.join([venv_data, *rest])


def server_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The server's (and so the kernels') environment: this one, the venv kernel first, plus ``extra``."""
    environ = dict(os.environ)
    environ["JUPYTER_PATH"] = kernel_search_path(environ)
    environ.update(extra or {})
    return environ


def lab_command(
    root: Path, port: int, token: str, default_url: str = NOTEBOOKS_URL, options: Sequence[str] = ()
) -> list[str]:
    """The command line of a JupyterLab server on ``localhost:port`` serving ``root``, run by this Python."""
    return [
        sys.executable,
        "-m",
        "jupyterlab",
        *OFFLINE_OPTIONS,
        f"--ServerApp.root_dir={root}",
        f"--ServerApp.ip={HOST}",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",  # the chosen port or a clear failure, never a silent other one
        f"--IdentityProvider.token={token}",
        f"--LabApp.default_url={default_url}",
        *root_options(),
        *options,
    ]


def root_options() -> list[str]:
    """``--allow-root`` where we run as root (a container's usual user): the server refuses it otherwise."""
    return ["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []


def page_url(port: int, token: str, path: str = NOTEBOOKS_URL) -> str:
    """The address to open: ``path`` on the server, logged in by its token."""
    return f"http://{HOST}:{port}{path}?token={token}"


def server_is_up(port: int, token: str) -> bool:
    """True when the server answers its status API (it then serves pages and starts kernels)."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/status", headers={"Authorization": f"token {token}"})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


def wait_until_up(server: subprocess.Popen, port: int, token: str, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
    """Block until the server answers; raise if it exits or is still silent after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not server_is_up(port, token):
        if server.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with status {server.returncode} before it answered on port {port}.")
        if time.monotonic() > deadline:
            raise TimeoutError(f"JupyterLab did not answer on port {port} within {timeout_s:.0f} s.")
        time.sleep(0.2)


def start_server(command: Sequence[str], environ: Mapping[str, str], **popen: object) -> subprocess.Popen:
    """Start the server in a session of its own: Ctrl+C reaches only us, and we stop its whole group."""
    return subprocess.Popen(list(command), env=dict(environ), stdin=subprocess.DEVNULL, start_new_session=True, **popen)


def stop_server(server: subprocess.Popen, grace_s: float = 10.0) -> None:
    """Ask the server's process group to shut down (the server stops its kernels), kill it if it lingers.

    Kernels run in sessions of their own, but each exits when it sees its parent server gone.
    """
    if server.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m abi.lab", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"preferred port (default {DEFAULT_PORT})")
    return parser.parse_args(argv)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _stop_on_hangup_or_term() -> None:
    """Turn SIGTERM and SIGHUP into KeyboardInterrupt, like Ctrl+C: every way out stops the server."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    for signum in STOP_SIGNALS[1:]:
        signal.signal(signum, interrupt)


def _ignore_stop_signals() -> None:
    """While the server shuts down: a second Ctrl+C must not leave it running on its own."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def main(argv: Sequence[str] | None = None) -> int:
    """Start the lab on the preferred port (or a free one, said so), print its URL, serve until Ctrl+C."""
    args = _parse_args(argv)
    port = choose_port(args.port)
    if port != args.port:
        print(f"port {args.port} is in use; using {port} (set PORT=... to choose)", flush=True)
    token = secrets.token_hex(24)
    _stop_on_hangup_or_term()
    started = time.monotonic()
    server = start_server(lab_command(REPO_ROOT, port, token), server_environment())
    try:
        wait_until_up(server, port, token)
        print(
            f"\n    JupyterLab is up ({time.monotonic() - started:.1f} s), on the notebooks:\n"
            f"    {page_url(port, token)}\n    Ctrl+C stops it (and its kernels).\n",
            flush=True,
        )
        return server.wait()
    except KeyboardInterrupt:
        return 0
    except (RuntimeError, TimeoutError) as error:
        print(f"abi.lab: {error}", file=sys.stderr)
        return 1
    finally:
        _ignore_stop_signals()
        stop_server(server)


if __name__ == "__main__":
    sys.exit(main())
