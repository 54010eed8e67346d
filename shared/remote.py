"""Where a store lives: local path or fsspec URL, and the file system that reaches it.

Remote protocols need packages this project does not install by default; each is declared as an
extra in pyproject.toml, and a missing one is reported as one line naming the extra to install.
Credentials come from the usual places of each package (AWS_* environment variables and
~/.aws for s3fs, GOOGLE_APPLICATION_CREDENTIALS for gcsfs) unless storage options give them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import fsspec

EXTRAS: dict[str, str] = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "http": "http",
                          "https": "http"}  # fmt: skip
"""URL scheme -> the extra of nymeria-mvae that installs its fsspec implementation."""

READ_ONLY_PROTOCOLS: frozenset[str] = frozenset({"http", "https"})


class MissingExtraError(ImportError):
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


def url_options(path_or_url: str | Path, storage_options: dict | None) -> dict | None:
    """`storage_options` for a URL, None for a local path (zarr refuses options it cannot use;
    a command's --storage-options may meet a local path, e.g. a cached copy)."""
    return storage_options if is_url(path_or_url) else None


def store_size_bytes(url: str) -> int:
    """Bytes of all files of the store at `url`, local or remote."""
    if not is_url(url):
        return sum(p.stat().st_size for p in local_path(url).rglob("*") if p.is_file())
    fs, path = fsspec.core.url_to_fs(url)
    return int(fs.du(path, total=True))


def missing_extra_message(url: str, error: ImportError) -> str:
    scheme = urlparse(url).scheme
    extra = EXTRAS.get(scheme)
    install = f"pip install 'nymeria-mvae[{extra}]'" if extra else "install its fsspec package"
    return f"{scheme}:// URLs ({url}) need a package that is not installed ({error}): {install}"


def filesystem(
    url: str, storage_options: dict[str, Any] | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec file system of `url` and the path of `url` on it; `MissingExtraError` (one
    line naming the extra) when the protocol's package is missing."""
    try:
        return fsspec.core.url_to_fs(url, **(storage_options or {}))
    except ImportError as error:
        raise MissingExtraError(missing_extra_message(url, error)) from None
