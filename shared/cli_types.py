"""Click parameter types both command-line interfaces use (store locations, storage options)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from shared.remote import is_url, local_path


class StoreLocation(click.ParamType):
    """A store given as a local path (-> `Path`) or an fsspec URL such as `s3://team/x.zarr`
    (-> `str`, unchanged); `file://` URLs become paths."""

    name = "PATH|URL"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, Path):
            return value
        text = str(value).strip()
        if not text:
            self.fail("expected a path or a URL, found an empty string", param, ctx)
        return text if is_url(text) else local_path(text)


class StorageOptions(click.ParamType):
    """A JSON object of fsspec storage options, e.g. '{"anon": true}' or
    '{"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}'."""

    name = "JSON"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, dict):
            return value
        try:
            options = json.loads(value)
        except json.JSONDecodeError as error:
            self.fail(f"expected a JSON object, found {value!r} ({error})", param, ctx)
        if not isinstance(options, dict):
            found = f"{type(options).__name__} {value!r}"
            self.fail(f"expected a JSON object, found {found}", param, ctx)
        return options


STORE = StoreLocation()

storage_options_option = click.option(
    "--storage-options", "storage_options", type=StorageOptions(), default=None,
    help="fsspec storage options of the URL as a JSON object (credentials, endpoint_url, ...); "
         "by default each protocol reads its usual environment variables.",
)  # fmt: skip
