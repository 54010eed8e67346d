"""What both command-line interfaces share: options generated from a config dataclass, the
group options (`-v/--verbose`, `--version`), and the Click types of a store location and of
fsspec storage options.

Configuration lives in frozen dataclasses whose field docstrings are the documentation;
`dataclass_options` turns every field into a `--option` with the field's default and
docstring, and `config_values` reads back which of them the user gave (Click's parameter
source), so a `--config FILE` or a resumed run's saved config can sit underneath:

    @dataclass_options(TrainConfig, prefix="train__")
    def fit(**options): values = config_values(click.get_current_context(), TrainConfig,
                                               "train__", base=from_file)
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import itertools
import json
import logging
import os
import re
import textwrap
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from shared.errors import UserError
from shared.provenance import PACKAGE_NAME, git_revision, package_version
from shared.remote import is_url, local_path

# --- options from a config dataclass -----------------------------------------------------------


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass (the string literal under each field).

    Python keeps no attribute docstrings at run time, so they are read from the source.
    """
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, after in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _click_type(hint: Any, where: str) -> tuple[Any, bool]:
    """(Click type, is a boolean flag) for a field's type hint; `X | None` reads as X."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"{where}: no command-line type for {hint}; pass one in `types`")
        hint = args[0]
    if hint is bool:
        return None, True
    if typing.get_origin(hint) is typing.Literal:
        return click.Choice([str(a) for a in typing.get_args(hint)]), False
    if hint is Path:
        return click.Path(path_type=Path), False
    if hint in (int, float, str):
        return hint, False
    raise TypeError(f"{where}: no command-line type for {hint}; pass one in `types`")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _option_fields(cls: type) -> list[dataclasses.Field]:
    """The fields `dataclass_options` may turn into options: those with a default (the others
    are the command's own arguments)."""
    return [f for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING]


def dataclass_options(
    cls: type,
    *,
    prefix: str = "",
    skip: tuple[str, ...] = (),
    flags: Mapping[str, str] | None = None,
    types: Mapping[str, click.ParamType] | None = None,
) -> Callable[[Callable], Callable]:
    """A decorator adding one `--option` per field of the dataclass `cls` (fields without a
    default, and `skip`, excepted): default the field's, help its docstring, type from its
    annotation (bool: `--x/--no-x`; Literal: a choice; `X | None`: X, default None). The
    value arrives as keyword `prefix + field`. `flags` renames an option, `types` gives the
    Click type of fields whose annotation has none (e.g. a tuple)."""
    flags, types = dict(flags or {}), dict(types or {})
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    fields = [f for f in _option_fields(cls) if f.name not in skip]
    unknown = (set(flags) | set(types)) - {f.name for f in fields}
    if unknown:
        raise TypeError(f"{cls.__name__}: no option fields {sorted(unknown)}")

    def decorate(func: Callable) -> Callable:
        for f in reversed(fields):
            where = f"{cls.__name__}.{f.name}"
            flag, dest = flags.get(f.name, _flag(f.name)), prefix + f.name
            if f.name in types:
                click_type, is_flag = types[f.name], False
            else:
                click_type, is_flag = _click_type(hints[f.name], where)
            common = {"default": f.default, "help": docs.get(f.name, ""), "show_default": True}
            if is_flag:
                option = click.option(f"{flag}/--no-{flag[2:]}", dest, **common)
            else:
                option = click.option(flag, dest, type=click_type, **common)
            func = option(func)
        return func

    return decorate


def given_on_command_line(ctx: click.Context, name: str) -> bool:
    """Whether the parameter `name` was given by the user (or an environment variable)."""
    source = ctx.get_parameter_source(name)
    return source in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


def config_values(
    ctx: click.Context, cls: type, prefix: str = "", base: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The fields of `cls` as configured: `base` (a config file, a saved run; its values are
    converted and checked as the options' own), overridden by the options of
    `dataclass_options(cls, prefix=prefix)` given on the command line. Fields in neither are
    left out, so the dataclass's own defaults apply."""
    params = {p.name: p for p in ctx.command.params}
    if base is not None and not isinstance(base, Mapping):
        raise click.BadParameter(
            f"expected a table of options, found {base!r}", param_hint="--config"
        )
    values = dict(base or {})
    for name, value in values.items():
        param = params.get(prefix + name)
        if param is not None:
            try:
                if isinstance(param.type, click.types.IntParamType) and (
                    isinstance(value, float) and not value.is_integer()
                ):  # Click's int() would truncate 2.7 to 2
                    raise click.BadParameter(f"expected a whole number, found {value!r}")
                values[name] = param.type_cast_value(ctx, value)
            except click.BadParameter as error:
                raise click.BadParameter(
                    f"{name} = {value!r}: {error.message}", param_hint="--config"
                ) from None
    for f in _option_fields(cls):
        dest = prefix + f.name
        if dest in ctx.params and given_on_command_line(ctx, dest):
            values[f.name] = ctx.params[dest]
    return values


def config_error(
    error: Exception, cls: type | tuple[type, ...], flags: Mapping[str, str] | None = None
) -> click.UsageError:
    """A dataclass's own validation error (which names fields) as a usage error that also
    names the options: "worker_timeout must be positive, found 0.0 (--worker-timeout)".
    `cls` may be several dataclasses whose options one command takes (e.g. model and train)."""
    message = str(error)
    named = [
        (flags or {}).get(f.name, _flag(f.name))
        for c in (cls if isinstance(cls, tuple) else (cls,))
        for f in dataclasses.fields(c)
        if re.search(rf"\b{f.name}\b", message)
    ]
    named = list(dict.fromkeys(named))
    return click.UsageError(message + (f" ({', '.join(named)})" if named else ""))


def _load_yaml(text: str) -> Any:
    import yaml  # PyYAML, a dependency of dask; imported only for a YAML file

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(" ".join(str(error).split())) from None


# (format, parser) of a config file by its suffix; any other suffix is read as JSON.
CONFIG_FORMATS: dict[str, tuple[str, Callable[[str], Any]]] = {
    ".toml": ("TOML", tomllib.loads),
    ".yaml": ("YAML", _load_yaml),
    ".yml": ("YAML", _load_yaml),
}


def load_config_file(path: Path) -> dict:
    """A JSON, TOML (`.toml`) or YAML (`.yaml`, `.yml`) file as a dict; errors name the file."""
    path = Path(path)
    kind, parse = CONFIG_FORMATS.get(path.suffix.lower(), ("JSON", json.loads))
    try:
        data = parse(path.read_text())
    except (OSError, ValueError) as error:
        raise click.BadParameter(
            f"{path}: not valid {kind} ({error}); config files are JSON, TOML (.toml) or YAML "
            "(.yaml, .yml)",
            param_hint="--config",
        ) from None
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path}: expected a table of options", param_hint="--config")
    return data


config_file_option = click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="JSON, TOML or YAML file of options (by field name); options given here win.",
)


# --- the group options of both CLIs -----------------------------------------------------------


def version_text() -> str:
    return f"{PACKAGE_NAME} {package_version()} (git {git_revision()})"


def _show_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(version_text())
        ctx.exit()


def cli_group(func: Callable) -> Callable:
    """A Click group with `-v/--verbose` (INFO logging, else WARNING) and `--version`; the
    group function is called with no arguments after logging is set up. A command's
    `UserError` is one line (`UserErrorGroup`)."""

    @click.group(cls=UserErrorGroup, help=func.__doc__)
    @click.option("-v", "--verbose", is_flag=True, help="Log progress (INFO) to stderr.")
    @click.option(
        "--version",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=_show_version,
        help="Print the package version and git revision, then exit.",
    )
    def group(verbose: bool) -> None:
        logging.basicConfig(
            level=logging.INFO if verbose else logging.WARNING,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        # Dask configures its own loggers when `distributed` is first imported, in this
        # process and in its workers; it reads this setting from the environment then.
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "info" if verbose else "warning")
        func()

    group.name = func.__name__
    return group


# --- errors: the user's in one line, the code's with a traceback ----------------------------


class UserErrorGroup(click.Group):
    """A group that ends a command's `UserError` as one line, `Error: MESSAGE` on stderr, and
    exits with its `exit_code`. An `OSError` that names its file (a path under a regular file,
    a read-only or full disk, no permission) is the user's machine, not the code: one line too,
    exit 1. Any other exception keeps its traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as error:
            raise _one_line(str(error), error.exit_code) from None
        except OSError as error:
            if error.filename is None:
                raise
            raise _one_line(str(error), 1) from None


def _one_line(message: str, exit_code: int) -> click.ClickException:
    one_line = click.ClickException(message)
    one_line.exit_code = exit_code
    return one_line


# --- parameter types ---------------------------------------------------------------------------


class StoreLocation(click.ParamType):
    """A store given as a local path (-> `Path`) or an fsspec URL such as `s3://team/x.zarr`
    (-> `str`, unchanged); `file://` URLs become paths. With `kind`, a store that is read: a
    local path must exist, else the error names it and the existing store its name is a typo
    of, or says how to make one (`hint`, with `{path}`). Without, a store to write: anything
    goes."""

    name = "PATH|URL"

    def __init__(self, kind: str | None = None, hint: str = "") -> None:
        self.kind, self.hint = kind, hint

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, Path):
            text = str(value).strip()
            if not text:
                self.fail("expected a path or a URL, found an empty string", param, ctx)
            value = text if is_url(text) else local_path(text)
        if self.kind is not None and isinstance(value, Path) and not value.exists():
            near = near_match(value, _is_zarr_store)
            hint = f"did you mean {near}?" if near else self.hint.format(path=value)
            self.fail(f"no {self.kind} at {value}" + (f"; {hint}" if hint else ""), param, ctx)
        return value


def near_match(path: Path, accept: Callable[[Path], bool] = Path.exists) -> Path | None:
    """A path that `accept`s and differs from the missing `path` in its first missing part only,
    by a typo (`difflib`'s close match among that part's existing siblings); else None."""
    parts = path.parts
    i = 0  # parts[i] is the first one missing
    while i < len(parts) and Path(*parts[: i + 1]).exists():
        i += 1
    parent = Path(*parts[:i]) if i else Path()
    if i == len(parts) or not parent.is_dir():
        return None
    try:
        siblings = [child.name for child in parent.iterdir()]
    except OSError:
        return None
    for name in difflib.get_close_matches(parts[i], siblings, n=3, cutoff=0.75):
        candidate = parent.joinpath(name, *parts[i + 1 :])
        if accept(candidate):
            return candidate
    return None


def _is_zarr_store(path: Path) -> bool:
    return (path / "zarr.json").is_file()


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


FEATURE_STORE = StoreLocation(
    "feature store",
    "build one with `make preprocess DATA=/path/to/hdf5 STORE={path}` (or `python -m preprocess "
    "build DATA --out {path}`); `make demo` builds one from synthetic data",
)
LATENT_STORE = StoreLocation(
    "latent store", "write one with `python -m train encode --ckpt CKPT --store STORE --out {path}`"
)
NEW_STORE = StoreLocation()  # a store to write (or to copy to)

storage_options_option = click.option(
    "--storage-options", "storage_options", type=StorageOptions(), default=None,
    help="fsspec storage options of the URL as a JSON object (credentials, endpoint_url, ...); "
         "by default each protocol reads its usual environment variables.",
)  # fmt: skip
