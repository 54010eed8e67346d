"""Real servers on 127.0.0.1 for the sharing tests: `python -m http.server` and moto's S3 server.

Each runs as a subprocess bound to the loopback address, is waited for with a bounded loop and
is stopped (terminate, then kill) when the context ends. S3 clients get an explicit loopback
endpoint and test credentials, and the EC2 metadata lookup is disabled, so nothing leaves the
machine.
"""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

START_TIMEOUT_S = 30.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def _serving(args: list[str], url: str, env: dict | None = None) -> Iterator[str]:
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                urllib.request.urlopen(url, timeout=1).close()
                break
            except urllib.error.HTTPError:
                break  # the server answers
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{args} did not start serving {url}") from None
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextmanager
def http_server(directory: Path) -> Iterator[str]:
    """`python -m http.server` serving `directory` (with listings); yields its base URL."""
    port = _free_port()
    args = [
        sys.executable,
        "-m",
        "http.server",
        str(port),
        "--bind",
        "127.0.0.1",
        "--directory",
        str(directory),
    ]
    with _serving(args, f"http://127.0.0.1:{port}/") as url:
        yield url.rstrip("/")


S3_ENV = {
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@contextmanager
def s3_server() -> Iterator[dict]:
    """moto's S3 server on 127.0.0.1; yields the fsspec storage options that reach it."""
    port = _free_port()
    args = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with _serving(args, f"http://127.0.0.1:{port}/", env={**os.environ, **S3_ENV}) as url:
        yield {"endpoint_url": url.rstrip("/"), "key": "testing", "secret": "testing"}


def s3_filesystem(options: dict):  # -> s3fs.S3FileSystem, imported lazily
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True, **options)


@contextmanager
def stalled_server() -> Iterator[str]:
    """A TCP server on 127.0.0.1 that accepts connections and never answers; yields its base
    URL. Runs in a thread with a bounded accept loop; stops (and closes every connection) when
    the context ends."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.2)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        deadline = time.monotonic() + 600  # never outlives a test run
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        for connection in accepted:
            connection.close()
        listener.close()


@contextmanager
def flaky_http_server(directory: Path) -> Iterator[tuple[str, dict[str, int]]]:
    """An HTTP server on 127.0.0.1 serving `directory` that drops the connection of the first
    GET of every path without answering (as an overloaded proxy may); yields its base URL and
    the GET count per path. Runs in a thread; stops when the context ends."""
    counts: dict[str, int] = {}
    lock = threading.Lock()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, directory=str(directory), **kwargs)

        def do_GET(self) -> None:
            with lock:
                counts[self.path] = counts.get(self.path, 0) + 1
                first = counts[self.path] == 1
            if first:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            super().do_GET()

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.daemon = True
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", counts
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
