"""What both command-line interfaces share: the config recipe, the group options
(`-v/--verbose`, `--version`), and the Click types of a store location and of fsspec storage
options.

Configuration lives in frozen dataclasses whose field docstrings are the documentation. A
command's configuration is a `ConfigSections` of them, each a `Section`: what the command
computes apart from how it runs. It turns every field into a `--option` with the field's
default and docstring (`dataclass_options`), reads a `--config FILE` of one table per section,
and layers the values once for every command (`resolve`: defaults < a resumed run's saved
config < the file < the options given on the command line, as Click's parameter source
tells; `config_values` for one dataclass):

    FIT = ConfigSections(Section("train", TrainConfig, computes=True),
                         Section("runtime", RuntimeConfig, computes=False))

    @FIT.options()
    def fit(config_file, **options):
        sections = FIT.make(FIT.resolve(click.get_current_context(), config_file))
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import errno
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


def _config_option(help_text: str) -> Callable[[Callable], Callable]:
    return click.option(
        "--config",
        "config_file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help=help_text,
    )


config_file_option = _config_option(
    "JSON, TOML or YAML file of options (by field name); options given here win."
)


# --- the config recipe of a command: sections, one file shape, one precedence -----------------


@dataclasses.dataclass(frozen=True)
class Section:
    """One section of a command's configuration: the dataclass `cls`, its table `name` in a
    config file (and the prefix of its options' keywords), and what its fields are about.

    `computes`: the fields decide what the command computes (a model, its training maths, a
    store's features): a resumed run must keep them (`ConfigSections.computing_changes`).
    Otherwise the fields say how it runs (workers, timeouts, logging, device) and may change
    at any time. `skip`, `flags`, `types` are those of `dataclass_options`."""

    name: str
    cls: type
    computes: bool
    skip: tuple[str, ...] = ()
    flags: Mapping[str, str] = dataclasses.field(default_factory=dict)
    types: Mapping[str, click.ParamType] = dataclasses.field(default_factory=dict)

    @property
    def prefix(self) -> str:
        return f"{self.name}__"

    def file_keys(self) -> set[str]:
        """The keys of its table in a file: the fields with a default (the others are the
        command's own arguments)."""
        return {f.name for f in _option_fields(self.cls)}

    def flag_names(self) -> dict[str, str]:
        """Option flag of each option field."""
        return {
            f.name: self.flags.get(f.name, _flag(f.name))
            for f in _option_fields(self.cls)
            if f.name not in self.skip
        }


class ConfigSections:
    """The configuration of a command as sections (`Section`), its one recipe:

    - options: every section's fields are options (`options()`), with `--config FILE` when the
      command takes one; two sections sharing a field name or an option is refused here, when
      the command is built, so a key or an option always names one field of one section;
    - file shape: `[section]` tables of field names (JSON, TOML or YAML, `load_config_file`);
      a file of an older shape (flat keys, or a field under the section it used to be in) is
      read the same way, since a field's name says its section;
    - precedence (`resolve`): the dataclasses' defaults < a saved config (a resumed run's) <
      the --config file < the options given on the command line;
    - rules: `computing_changes` lists what differs in the sections that compute."""

    def __init__(self, *sections: Section) -> None:
        self.sections = sections
        _refuse_clashes(sections, lambda s: _field_names(s.cls), "field")
        _refuse_clashes(sections, lambda s: set(s.flag_names().values()), "option")
        tables = {s.name for s in sections} & {n for s in sections for n in _field_names(s.cls)}
        if tables:
            raise TypeError(
                f"fields named as sections: {sorted(tables)}; a key must name one thing"
            )
        self.section_of = {key: s for s in sections for key in s.file_keys()}

    def options(self, config_file: bool = True) -> Callable[[Callable], Callable]:
        """A decorator adding every section's options (and `--config` unless told not to)."""
        decorators = [
            dataclass_options(s.cls, prefix=s.prefix, skip=s.skip, flags=s.flags, types=s.types)
            for s in self.sections
        ]
        if config_file:
            tables = ", ".join(f"[{s.name}]" for s in self.sections)
            decorators.insert(
                0,
                _config_option(
                    f"JSON, TOML or YAML file of options: the tables {tables} of options by field "
                    "name (a flat file is read too); options given here win."
                ),
            )

        def decorate(func: Callable) -> Callable:
            for decorator in reversed(decorators):
                func = decorator(func)
            return func

        return decorate

    def sectioned(self, data: Mapping[str, Any], source: str, what: str = "keys") -> dict:
        """`data` (a file, a saved config) as {section: {field: value}}, whatever its shape;
        a key that is no field of any section is a ValueError naming `source`."""
        out: dict[str, dict] = {s.name: {} for s in self.sections}
        names = {s.name for s in self.sections}
        unknown = []
        for key, value in data.items():
            if key in names and isinstance(value, Mapping):
                items = list(value.items())
            elif key in names:
                raise ValueError(f"{source}: [{key}] must be a table of options, found {value!r}")
            else:
                items = [(key, value)]
            for name, item in items:
                section = self.section_of.get(name)
                if section is None:
                    unknown.append(name)
                else:
                    out[section.name][name] = item
        if unknown:
            raise ValueError(self._unknown_message(source, sorted(unknown), what))
        return out

    def _unknown_message(self, source: str, unknown: list[str], what: str) -> str:
        arguments = [f.name for s in self.sections for f in dataclasses.fields(s.cls)]
        arguments = [name for name in arguments if name not in self.section_of]
        tables = ", ".join(f"[{s.name}]" for s in self.sections)
        return (
            f"{source}: unknown {what} {unknown}; valid keys: {sorted(self.section_of)}, in "
            f"the tables {tables}"
            + (f" ({', '.join(arguments)}: given on the command line)" if arguments else "")
        )

    def resolve(
        self,
        ctx: click.Context,
        config_file: Path | None,
        saved: Mapping | None = None,
        saved_source: str = "saved config",
    ) -> dict[str, dict[str, Any]]:
        """{section: {field: value}} as configured: a `saved` config (read from
        `saved_source`), under the --config file, under the options given on the command line
        (fields set by none are left out: the dataclasses' defaults apply). File values are
        converted and checked as the options' own."""
        layers = []
        if saved is not None:
            try:
                layers.append(self.sectioned(saved, saved_source))
            except ValueError as error:
                raise click.ClickException(str(error)) from None
        if config_file is not None:
            try:
                file = load_config_file(config_file)
                layers.append(self.sectioned(file, str(config_file), what="options"))
            except ValueError as error:
                raise click.BadParameter(str(error), param_hint="--config") from None
        return {
            s.name: config_values(
                ctx, s.cls, s.prefix, {k: v for layer in layers for k, v in layer[s.name].items()}
            )
            for s in self.sections
        }

    def make(self, values: Mapping[str, Mapping[str, Any]], **given: Any) -> dict[str, Any]:
        """{section: its dataclass} from `resolve`'s values (and `given`, the command's own
        arguments, to the section that has them); a value a dataclass refuses is a usage error
        naming the option."""
        try:
            return {
                s.name: s.cls(
                    **values.get(s.name, {}),
                    **{k: v for k, v in given.items() if k in _field_names(s.cls)},
                )
                for s in self.sections
            }
        except (ValueError, TypeError) as error:
            flags = {k: v for s in self.sections for k, v in s.flag_names().items()}
            raise config_error(error, tuple(s.cls for s in self.sections), flags) from None

    def computing_changes(self, before: Mapping, after: Mapping) -> list[str]:
        """What differs between two configs ({section: {field: value}}, any shape `sectioned`
        reads) in the sections that compute, as "section.field: old -> new" lines."""
        before, after = self.sectioned(before, "before"), self.sectioned(after, "after")
        computing = [s.name for s in self.sections if s.computes]
        return diff_configs(
            {name: before[name] for name in computing}, {name: after[name] for name in computing}
        )


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _refuse_clashes(
    sections: tuple[Section, ...], names: Callable[[Section], set[str]], kind: str
) -> None:
    """TypeError when two sections share a name (`kind`: field or option)."""
    for a, b in itertools.combinations(sections, 2):
        shared = sorted(names(a) & names(b))
        if shared:
            raise TypeError(
                f"sections [{a.name}] ({a.cls.__name__}) and [{b.name}] ({b.cls.__name__}) "
                f"share the {kind} names {shared}; a {kind} must name one setting"
            )


def diff_configs(a: Mapping, b: Mapping, prefix: str = "") -> list[str]:
    """Human-readable differences between two nested config dicts."""
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, "<missing>"), b.get(key, "<missing>")
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            out += diff_configs(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}: {va!r} -> {vb!r}")
    return out


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
    exits with its `exit_code`. An `OSError` of the machine (`MACHINE_ERRNOS`: no permission,
    a read-only or full disk, a path under a regular file, a file where a directory goes) that
    names its file is one line too, exit 1. Any other exception keeps its traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as error:
            raise _one_line(str(error), error.exit_code) from None
        except OSError as error:
            if error.filename is None or error.errno not in MACHINE_ERRNOS:
                raise
            raise _one_line(str(error), 1) from None


# What an OSError naming a file says about the user's machine rather than about the code.
MACHINE_ERRNOS = frozenset(
    {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR,
     errno.EISDIR, errno.EEXIST}
)  # fmt: skip


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
    "--storage-options",
    "storage_options",
    type=StorageOptions(),
    default=None,
    help="fsspec storage options of the URL as a JSON object (credentials, endpoint_url, ...); "
    "by default each protocol reads its usual environment variables.",
)
