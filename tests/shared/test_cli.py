"""shared.cli: options generated from a config dataclass, what was given on the command line,
config files underneath, the store types and the group options of both CLIs."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import click
import pytest
from click.testing import CliRunner

from shared.cli import (
    FEATURE_STORE,
    ConfigSections,
    Section,
    config_error,
    config_file_option,
    config_values,
    dataclass_options,
    load_config_file,
)
from shared.provenance import package_version


@dataclass(frozen=True)
class Example:
    """A config with one field of each kind the helper maps."""

    name: str
    """Required: not an option."""
    steps: int = 10
    """Steps to run."""
    rate: float | None = None
    """A rate; unset means "as recorded"."""
    mode: Literal["fast", "exact"] = "exact"
    """How to run."""
    verbose_log: bool = False
    """Log a lot."""

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, found {self.steps}")


@click.command()
@config_file_option
@dataclass_options(Example, prefix="ex__")
def command(config_file: Path | None, **options: object) -> None:
    base = load_config_file(config_file) if config_file else None
    values = config_values(click.get_current_context(), Example, "ex__", base)
    try:
        config = Example(name="x", **values)
    except ValueError as error:
        raise config_error(error, Example) from None
    click.echo(json.dumps({"given": sorted(values), "config": config.__dict__}))


def run(*args: str) -> dict:
    result = CliRunner().invoke(command, list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_options_carry_the_dataclass_defaults_docs_and_types():
    help_text = CliRunner().invoke(command, ["--help"]).output
    assert "--steps INTEGER" in help_text and "Steps to run.  [default: 10]" in help_text
    assert "--mode [fast|exact]" in help_text and "--verbose-log / --no-verbose-log" in help_text
    assert "--name" not in help_text  # no default: the command's own argument
    out = run("--steps", "3", "--rate", "2.5", "--mode", "fast", "--verbose-log")
    assert out["config"] == {
        "name": "x",
        "steps": 3,
        "rate": 2.5,
        "mode": "fast",
        "verbose_log": True,
    }
    assert run()["config"] == {
        "name": "x",
        "steps": 10,
        "rate": None,
        "mode": "exact",
        "verbose_log": False,
    }
    result = CliRunner().invoke(command, ["--mode", "slow"])
    assert result.exit_code == 2 and "'slow' is not one of 'fast', 'exact'" in result.output


def test_only_options_given_on_the_command_line_override_the_file(tmp_path: Path):
    config = tmp_path / "c.toml"
    config.write_text('steps = 7\nmode = "fast"\nrate = 1\n')
    out = run("--config", str(config))
    assert out["given"] == ["mode", "rate", "steps"]
    assert out["config"]["steps"] == 7 and out["config"]["rate"] == 1.0  # converted as options
    # An option given with its default value still wins over the file.
    out = run("--config", str(config), "--steps", "10", "--mode", "exact")
    assert out["config"]["steps"] == 10 and out["config"]["mode"] == "exact"
    assert out["config"]["rate"] == 1.0


def test_bad_values_name_the_option_and_the_file(tmp_path: Path):
    result = CliRunner().invoke(command, ["--steps", "0"])
    assert result.exit_code == 2
    assert "steps must be >= 1, found 0 (--steps)" in result.output
    config = tmp_path / "c.json"
    config.write_text('{"mode": "slow"}')
    result = CliRunner().invoke(command, ["--config", str(config)])
    assert result.exit_code == 2 and "mode = 'slow'" in result.output
    config.write_text('{"steps": 2.7}')
    result = CliRunner().invoke(command, ["--config", str(config)])
    assert result.exit_code == 2 and "expected a whole number, found 2.7" in result.output
    config.write_text("{not json")
    result = CliRunner().invoke(command, ["--config", str(config)])
    assert result.exit_code == 2 and str(config) in result.output


def test_a_field_without_a_command_line_type_is_refused():
    @dataclass(frozen=True)
    class Odd:
        pairs: tuple[int, int] = (1, 2)
        """A pair."""

    with pytest.raises(TypeError, match=r"Odd.pairs: no command-line type"):
        dataclass_options(Odd)(lambda **kw: None)


def test_a_missing_local_store_says_how_to_make_one(tmp_path: Path):
    @click.command()
    @click.argument("store", type=FEATURE_STORE)
    def show(store: object) -> None:
        click.echo(repr(store))

    missing = tmp_path / "nope.zarr"
    result = CliRunner().invoke(show, [str(missing)])
    assert result.exit_code == 2
    assert f"no feature store at {missing}; build one with" in result.output
    result = CliRunner().invoke(show, ["s3://bucket/x.zarr"])  # a URL is checked when opened
    assert result.exit_code == 0 and "'s3://bucket/x.zarr'" in result.output


@pytest.mark.parametrize("cli", ["preprocess", "train"])
def test_both_clis_have_version_and_verbose(cli: str, tmp_path: Path):
    out = subprocess.run(
        [sys.executable, "-m", cli, "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert out.startswith(f"nymeria-mvae {package_version()} (git ")
    help_text = subprocess.run(
        [sys.executable, "-m", cli, "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "-v, --verbose" in help_text
    # A missing store is a usage error naming it, in every command that reads one.
    read = {
        "preprocess": ["-v", "info"],
        "train": [
            "-v",
            "decode",
            "--ckpt",
            __file__,
            "--out",
            str(tmp_path / "o.zarr"),
            "--latents",
        ],
    }[cli]
    result = subprocess.run(
        [sys.executable, "-m", cli, *read, str(tmp_path / "missing.zarr")],
        capture_output=True,
        text=True,
        check=False,
    )
    kind = "feature store" if cli == "preprocess" else "latent store"
    assert result.returncode == 2 and f"no {kind} at {tmp_path / 'missing.zarr'}" in result.stderr


def test_a_typo_in_a_store_path_names_the_store_it_misspells(tmp_path: Path, monkeypatch):
    @click.command()
    @click.argument("store", type=FEATURE_STORE)
    def show(store: object) -> None:
        click.echo(repr(store))

    store = tmp_path / "data" / "nymeria.zarr"
    store.mkdir(parents=True)
    (store / "zarr.json").write_text("{}")
    (tmp_path / "data" / "nymeria.zarr.build").mkdir()  # an interrupted build is no store
    monkeypatch.chdir(tmp_path)
    for typo in ("data/nymeria.zar", "data/nymria.zarr", "dat/nymeria.zarr"):
        result = CliRunner().invoke(show, [typo])
        assert result.exit_code == 2
        assert f"no feature store at {typo}; did you mean data/nymeria.zarr?" in result.output
    result = CliRunner().invoke(show, [str(tmp_path / "data" / "nymeria.zar")])
    assert f"did you mean {store}?" in result.output  # absolute stays absolute
    for far in ("data/other.zarr", "elsewhere/nymeria.zarr"):
        result = CliRunner().invoke(show, [far])
        assert result.exit_code == 2 and "did you mean" not in result.output
        assert "build one with" in result.output
    (store / "zarr.json").unlink()  # not a store any more: the .build directory is no match
    result = CliRunner().invoke(show, ["data/nymeria.zar"])
    assert "did you mean" not in result.output and "build one with" in result.output


def test_config_files_are_json_toml_or_yaml(tmp_path: Path):
    config = tmp_path / "c.yaml"
    config.write_text("steps: 7\nmode: fast\n")
    assert run("--config", str(config))["config"]["steps"] == 7
    config.write_text("steps: [7\n")
    result = CliRunner().invoke(command, ["--config", str(config)])
    assert result.exit_code == 2 and f"{config}: not valid YAML" in result.output
    assert "config files are JSON, TOML (.toml) or YAML (.yaml, .yml)" in result.output


def test_errors_of_several_dataclasses_name_their_options():
    @dataclass(frozen=True)
    class Other:
        rate_limit: float = 1.0
        """A limit."""

    error = config_error(ValueError("Other.rate_limit must be > 0, found 0"), (Example, Other))
    assert error.message == "Other.rate_limit must be > 0, found 0 (--rate-limit)"


# --- the config recipe: sections, one file shape, one precedence, no clashes ----------------


@dataclass(frozen=True)
class Maths:
    """What the example command computes."""

    name: str
    """The command's own argument."""
    rate: float = 1.0
    """A rate."""
    order: int = 2
    """An order."""

    def __post_init__(self) -> None:
        if self.order < 1:
            raise ValueError(f"Maths.order must be >= 1, found {self.order}")


@dataclass(frozen=True)
class Running:
    """How the example command runs."""

    workers: int = 1
    """Worker processes."""
    timeout: float = 5.0
    """Seconds to wait."""


SECTIONS = ConfigSections(
    Section("maths", Maths, computes=True), Section("running", Running, computes=False)
)


@click.command()
@click.option("--saved", type=click.Path(path_type=Path), help="A resumed run's saved config.")
@SECTIONS.options()
def sectioned(saved: Path | None, config_file: Path | None, **options: object) -> None:
    saved_values = json.loads(saved.read_text()) if saved else None
    values = SECTIONS.resolve(click.get_current_context(), config_file, saved_values)
    made = SECTIONS.make(values, name="x")
    click.echo(json.dumps({name: config.__dict__ for name, config in made.items()}))


def run_sectioned(*args: str) -> dict:
    result = CliRunner().invoke(sectioned, list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_one_sectioned_file_shape_and_the_older_shapes_read_the_same(tmp_path: Path):
    expected = {
        "maths": {"name": "x", "rate": 2.0, "order": 3},
        "running": {"workers": 4, "timeout": 5.0},
    }
    files = {
        "sections.toml": "[maths]\nrate = 2\norder = 3\n[running]\nworkers = 4\n",
        "flat.json": '{"rate": 2, "order": 3, "workers": 4}',  # a `preprocess build` file
        "moved.yaml": "maths:\n  rate: 2\n  order: 3\n  workers: 4\n",  # under an old section
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
        assert run_sectioned("--config", str(tmp_path / name)) == expected, name
    bad = tmp_path / "bad.toml"
    bad.write_text("[maths]\nrat = 2\nname = 'y'\n")
    result = CliRunner().invoke(sectioned, ["--config", str(bad)])
    assert result.exit_code == 2 and "--config" in result.output
    assert f"{bad}: unknown options ['name', 'rat']" in result.output
    assert "in the tables [maths], [running] (name: given on the command line)" in result.output
    bad.write_text("maths = 3\n")
    result = CliRunner().invoke(sectioned, ["--config", str(bad)])
    assert result.exit_code == 2 and "[maths] must be a table of options, found 3" in result.output


def test_precedence_defaults_saved_file_command_line(tmp_path: Path):
    saved = tmp_path / "saved.json"
    saved.write_text('{"maths": {"rate": 2, "order": 3}, "running": {"workers": 4}}')
    config = tmp_path / "c.toml"
    config.write_text("[maths]\norder = 5\n[running]\nworkers = 6\n")
    out = run_sectioned("--saved", str(saved), "--config", str(config), "--workers", "7")
    assert out == {
        "maths": {"name": "x", "rate": 2.0, "order": 5},
        "running": {"workers": 7, "timeout": 5.0},
    }
    # A value from any layer is checked as the option's own, and names the option.
    result = CliRunner().invoke(sectioned, ["--config", str(config), "--order", "0"])
    assert result.exit_code == 2 and "Maths.order must be >= 1, found 0 (--order)" in result.output


def test_two_sections_cannot_share_a_field_or_an_option():
    @dataclass(frozen=True)
    class Rated:
        rate: float = 3.0
        """Another rate."""

    with pytest.raises(
        TypeError,
        match=r"\[maths\] \(Maths\) and \[other\] \(Rated\) share the "
        r"field names \['rate'\]",
    ):
        ConfigSections(Section("maths", Maths, True), Section("other", Rated, False))
    with pytest.raises(TypeError, match=r"share the option names \['--rate'\]"):
        ConfigSections(
            Section("maths", Maths, True),
            Section("running", Running, False, flags={"workers": "--rate"}),
        )
    with pytest.raises(TypeError, match=r"fields named as sections: \['order'\]"):
        ConfigSections(Section("maths", Maths, True), Section("order", Running, False))


def test_only_the_computing_sections_decide_a_resume():
    before = {"maths": {"rate": 1.0, "order": 2}, "running": {"workers": 1}}
    assert SECTIONS.computing_changes(before, {**before, "running": {"workers": 8}}) == []
    after = {"rate": 1.5, "order": 2, "workers": 8}  # any shape the file reader takes
    assert SECTIONS.computing_changes(before, after) == ["maths.rate: 1.0 -> 1.5"]
