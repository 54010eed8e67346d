"""Where a store lives: local path or fsspec URL, and the file system that reaches it.

Remote protocols need packages this project does not install by default; each is declared as an
extra in pyproject.toml, and a missing one is reported as one line naming the extra to install.
Credentials come from the usual places of each package (AWS_* environment variables and
~/.aws for s3fs, GOOGLE_APPLICATION_CREDENTIALS for gcsfs) unless storage options give them.

Every request has a timeout and transient failures are retried a bounded number of times with
backoff: `remote_options` adds the timeout (and the library's own retry settings) to a URL's
storage options, `retrying` retries one call, `read_bounded` reads an object without ever holding
more than a given number of bytes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import fsspec
from fsspec.exceptions import FSTimeoutError
from fsspec.utils import tokenize

from shared.errors import MissingInputError, UserError

EXTRAS: dict[str, str] = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "http": "http",
                          "https": "http"}  # fmt: skip
"""URL scheme -> the extra of nymeria-mvae that installs its fsspec implementation."""

READ_ONLY_PROTOCOLS: frozenset[str] = frozenset({"http", "https"})
S3_SCHEMES = ("s3", "s3a")


class MissingExtraError(UserError, ImportError):
    """A URL's protocol needs a package that is not installed; the message names the extra."""


def is_url(path_or_url: str | Path) -> bool:
    """True for `scheme://...` other than `file://`: a location fsspec reaches remotely."""
    text = str(path_or_url)
    return "://" in text and urlparse(text).scheme not in ("file", "local")


def local_path(path_or_url: str | Path) -> Path:
    """The local path of a plain path or a `file://` URL."""
    text = str(path_or_url)
    if "://" in text:
        text = urlparse(text).path
    return Path(text).expanduser()


def normalize_location(path_or_url: str | Path) -> str:
    """The one spelling of where a store or directory is: a URL (other than `file://`) as given;
    a plain path or a `file://` URL as the absolute local path, `~` expanded, links resolved."""
    return str(path_or_url) if is_url(path_or_url) else str(local_path(path_or_url).resolve())


def url_options(path_or_url: str | Path, storage_options: dict | None) -> dict | None:
    """`storage_options` for a URL, None for a local path (zarr refuses options it cannot use;
    a command's --storage-options may meet a local path, e.g. a cached copy)."""
    return storage_options if is_url(path_or_url) else None


def store_size_bytes(url: str, storage_options: dict | None = None) -> int:
    """Bytes of all files of the store at `url`, local or remote."""
    if not is_url(url):
        return sum(p.stat().st_size for p in local_path(url).rglob("*") if p.is_file())
    fs, path = filesystem(url, storage_options)
    return int(fs.du(path, total=True))


def missing_extra_message(url: str, error: ImportError) -> str:
    scheme = urlparse(url).scheme
    extra = EXTRAS.get(scheme)
    install = f"pip install 'nymeria-mvae[{extra}]'" if extra else "install its fsspec package"
    return f"{scheme}:// URLs ({url}) need a package that is not installed ({error}): {install}"


_RETRIED_S3: dict[str, fsspec.AbstractFileSystem] = {}  # see `filesystem`


def filesystem(
    url: str, storage_options: dict[str, Any] | None = None, *, retried: bool = False
) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec file system of `url` and the path of `url` on it; `MissingExtraError` (one
    line naming the extra) when the protocol's package is missing. `retried`: the caller wraps
    every request in `retrying`, so an s3 file system is an instance of our own that does not
    retry on its own (s3fs would retry a timed-out read 5 x 5 times, nested), kept per process,
    bucket and options (making an s3fs client costs ~0.3 s)."""
    options = dict(storage_options or {})
    try:
        if not (retried and urlparse(url).scheme in S3_SCHEMES):
            return fsspec.core.url_to_fs(url, **options)
        token = tokenize(os.getpid(), urlparse(url).netloc, options)
        fs = _RETRIED_S3.get(token)
        if fs is None:
            fs, _ = fsspec.core.url_to_fs(url, skip_instance_cache=True, **options)
            fs.retries = 1  # an instance attribute over s3fs's class default: one attempt a call
            _RETRIED_S3[token] = fs
        return fs, fs._strip_protocol(url)
    except ImportError as error:
        raise MissingExtraError(missing_extra_message(url, error)) from None


# --- timeouts and retries ---------------------------------------------------------------------

DEFAULT_TIMEOUT_S = 60.0
"""Seconds a request may wait to connect or for its next bytes (`--timeout`)."""
RETRY_ATTEMPTS = 3  # per request
RETRY_BACKOFF_S = 0.5  # before the second attempt; doubled before each later one

T = TypeVar("T")


def remote_options(
    url: str | Path, storage_options: dict[str, Any] | None, timeout: float = DEFAULT_TIMEOUT_S
) -> dict[str, Any] | None:
    """`storage_options` for `url` with a per-request `timeout` (seconds to connect and between
    received bytes) added, None for a local path. s3: botocore's connect and read timeouts
    (botocore's own retries off); http(s): aiohttp's. Options the caller gives win (e.g.
    `config_kwargs.read_timeout`). The same options serve `filesystem` and zarr
    (`zarr.open_group(url, storage_options=...)`); a file system zarr makes retries as its
    library does (s3fs: up to 5 x 5 attempts of a read, nested; http: none)."""
    if not is_url(url):
        return None
    options = dict(storage_options or {})
    scheme = urlparse(str(url)).scheme
    if scheme in S3_SCHEMES:
        timeouts = {
            "connect_timeout": timeout,
            "read_timeout": timeout,
            "retries": {"total_max_attempts": 1},
        }
        return {**options, "config_kwargs": {**timeouts, **options.get("config_kwargs", {})}}
    if scheme in READ_ONLY_PROTOCOLS:
        try:
            import aiohttp
        except ImportError:
            return options  # `filesystem` names the extra
        client_timeout = aiohttp.ClientTimeout(connect=timeout, sock_read=timeout)
        client = {"timeout": client_timeout, **options.get("client_kwargs", {})}
        return {**options, "client_kwargs": client}
    return options


def _transient_errors() -> tuple[type[BaseException], ...]:
    """Failures worth another attempt: timeouts, refused or dropped connections, 5xx answers."""
    errors: tuple[type[BaseException], ...] = (TimeoutError, ConnectionError, FSTimeoutError)
    try:
        import aiohttp

        errors += (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)
    except ImportError:
        pass
    try:
        import botocore.exceptions

        errors += (botocore.exceptions.HTTPClientError, botocore.exceptions.ConnectionError)
    except ImportError:
        pass
    return errors


class RemoteUnavailableError(UserError, OSError):
    """A request kept failing (timeouts, connection errors) after its bounded retries."""


class RemoteRequestError(UserError, OSError):
    """A request failed for good (access refused, a bad bucket or endpoint); names the object."""


class RemoteObjectMissing(MissingInputError):
    """No object at a requested location; callers that expect absence catch FileNotFoundError."""


def _describe(error: BaseException) -> str:
    text = (str(error).strip().splitlines() or [""])[0][:200]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def retrying(call: Callable[[], T], what: str) -> T:
    """`call()`, tried again after a transient failure (timeout, connection error) with
    backoff, `RETRY_ATTEMPTS` times in all; then `RemoteUnavailableError`, one line naming
    `what`. Other errors (a missing object, a refused credential) are raised at once. Use it
    with a file system from `filesystem(..., retried=True)`. The file system's own errors
    become `UserError`s naming `what`: a missing object `RemoteObjectMissing` (still a
    FileNotFoundError), any other `RemoteRequestError`."""
    transient = _transient_errors()
    for attempt in range(RETRY_ATTEMPTS):
        try:
            return call()
        except transient as error:
            if attempt + 1 == RETRY_ATTEMPTS:
                raise RemoteUnavailableError(
                    f"{what}: no answer after {RETRY_ATTEMPTS} attempts ({_describe(error)}); "
                    f"check the endpoint and the network, or raise --timeout"
                ) from None
            time.sleep(RETRY_BACKOFF_S * 2**attempt)
        except UserError:
            raise
        except FileNotFoundError as error:
            raise RemoteObjectMissing(f"{what}: no such object ({_describe(error)})") from None
        except OSError as error:
            raise RemoteRequestError(f"{what}: {_describe(error)}") from None
    raise AssertionError("unreachable")


def read_bounded(fs: fsspec.AbstractFileSystem, path: str, limit: int) -> bytes:
    """The bytes of object `path`, refused (`ValueError`) as soon as more than `limit` arrive:
    memory stays bounded whatever the server sends. HTTP is streamed (one GET, no size request);
    other protocols read the byte range `[0, limit + 1)`."""
    if "http" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        parts, received = [], 0
        with fs.open(path, "rb", block_size=0, size=limit + 1) as handle:
            while received <= limit:
                part = handle.read(min(limit + 1 - received, 4 << 20))
                if not part:
                    break
                parts.append(part)
                received += len(part)
        data = b"".join(parts)
    else:
        data = fs.cat_file(path, start=0, end=limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path} has more than the {limit} bytes expected of it")
    return data
