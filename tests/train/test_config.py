import json
import subprocess
import sys
from itertools import pairwise

import pytest

from shared.cli import diff_configs, field_docs, load_config_file
from train.config import RunConfig, RuntimeConfig, TrainConfig
from train.fit import lr_factor


def test_every_config_field_is_documented():
    from train.model import MotionVAEConfig

    for cls in (TrainConfig, RuntimeConfig, MotionVAEConfig):
        import dataclasses

        missing = {f.name for f in dataclasses.fields(cls)} - set(field_docs(cls))
        assert not missing, f"{cls.__name__} fields without a docstring: {missing}"


def test_config_round_trip_and_unknown_keys(tmp_path):
    cfg = RunConfig.from_dict({"train": {"steps": 7, "lr": 3e-4}, "model": {"hidden_dim": 64}})
    assert cfg.runtime.steps == 7 and cfg.model.hidden_dim == 64
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cfg.to_dict()))
    assert RunConfig.from_dict(load_config_file(path)) == cfg
    toml = tmp_path / "c.toml"
    toml.write_text("[train]\nsteps = 9\n[model]\nlatent_dim = 32\n")
    assert RunConfig.from_dict(load_config_file(toml)).model.latent_dim == 32
    with pytest.raises(ValueError, match="unknown keys \\['stepz'\\]"):
        RunConfig.from_dict({"train": {"stepz": 1}})
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        TrainConfig(batch_size=0)
    assert diff_configs(cfg.to_dict(), RunConfig().to_dict())[0].startswith(
        "model.hidden_dim: 64 -> 512"
    )


def test_lr_schedule_warmup_then_cosine_to_floor():
    f = [lr_factor(s, warmup_steps=10, total_steps=110, min_ratio=0.01) for s in range(111)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in pairwise(f[:10]))  # rising during warm-up
    assert all(a >= b for a, b in pairwise(f[10:]))  # then never rising
    assert f[60] == pytest.approx(0.01 + 0.99 * 0.5)  # half-way through the cosine
    assert f[110] == pytest.approx(0.01)


def test_import_train_does_not_import_hdf5_libraries():
    modules = (
        "train, train.cli, train.fit, train.data, train.evaluate, train.inference, train.codec, "
        "train.latents, train.plots"
    )
    code = (
        f"import sys, {modules}; "
        "print(sorted(m for m in ('h5py', 'hdf5plugin') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_saved_run_keeps_the_loss_it_was_trained_with():
    """Fields added after a run was saved are filled as that run trained, not with today's
    defaults (checkpoints via `config_from_checkpoint`, `fit --resume` via config.json)."""
    from train.config import saved_config

    before_head_term = RunConfig().to_dict()
    del before_head_term["train"]["head_frame_weight"]
    config = RunConfig.from_dict(saved_config(before_head_term))
    assert config.train.loss == "world" and config.train.head_frame_weight == 0.0
    before_loss = RunConfig().to_dict()
    del before_loss["train"]["loss"], before_loss["train"]["head_frame_weight"]
    config = RunConfig.from_dict(saved_config(before_loss))
    assert config.train.loss == "features" and config.train.decode_head_blend == 0.0
    today = RunConfig().to_dict()
    assert saved_config(today) == today and RunConfig().train.head_frame_weight == 3.0


def test_the_features_loss_is_read_under_its_old_name_seed(tmp_path):
    """`loss = "seed"` (the old name) in a --config file, a run's config.json or a checkpoint
    is the features loss; what is saved from then on says `features`."""
    from click.testing import CliRunner

    from train.cli import main
    from train.config import saved_config

    assert TrainConfig(loss="features").decode_head_blend == 0.0
    old = RunConfig().to_dict()
    old["train"]["loss"] = "seed"
    config = RunConfig.from_dict(saved_config(old))
    assert config == RunConfig(train=TrainConfig(loss="features"))
    assert config.to_dict()["train"]["loss"] == "features"
    path = tmp_path / "old.toml"
    path.write_text('[train]\nloss = "seed"\n')
    assert RunConfig.from_dict(load_config_file(path)).train.loss == "features"
    help_text = CliRunner().invoke(main, ["fit", "--help"], terminal_width=200).output
    assert "'features': per-group MSE" in help_text and "[features|world|seed]" in help_text


@pytest.mark.parametrize(
    ("section", "name"),
    [
        ("train", "foot_contact_weight"),
        ("train", "head_orientation_weight"),
        ("model", "linear_path"),
    ],
)
def test_a_run_saved_before_a_field_existed_trains_without_it(section, name):
    from train.config import ADDED_MODEL_FIELDS, ADDED_TRAIN_FIELDS, saved_config

    before = RunConfig().to_dict()
    del before[section][name]
    config = RunConfig.from_dict(saved_config(before))
    added = ADDED_MODEL_FIELDS if section == "model" else ADDED_TRAIN_FIELDS
    assert getattr(getattr(config, section), name) == added[name] in (0.0, False)


def _numeric_options() -> list[str]:
    """The option of every int or float field `train fit` takes (model fields but input_dim)."""
    import dataclasses
    import typing

    from train.model import MotionVAEConfig

    return [
        "--" + f.name.replace("_", "-")
        for cls in (TrainConfig, RuntimeConfig, MotionVAEConfig)
        for f in dataclasses.fields(cls)
        if typing.get_type_hints(cls)[f.name] in (int, float) and f.name != "input_dim"
    ]


@pytest.mark.parametrize(
    "args",
    [[option, "-1"] for option in _numeric_options()]
    + [["--lr", "0"], ["--lr", "nan"], ["--grad-clip", "0"], ["--min-lr-ratio", "1.5"]]
    + [["--seq-len", "150"], ["--logvar-clamp", "0"]],
    ids=" ".join,
)
def test_every_bad_option_value_exits_2_naming_the_option(args, tmp_path):
    """A value no run can use is a usage error naming its option, for the model's fields as for
    training's, before anything is read or written."""
    from click.testing import CliRunner

    from train.cli import main

    result = CliRunner().invoke(
        main, ["fit", "--store", str(tmp_path), "--out", str(tmp_path / "run"), *args]
    )
    assert result.exit_code == 2, result.output
    assert f"({args[0]})" in result.output.splitlines()[-1]  # the error line names the option
    assert not (tmp_path / "run").exists()


def test_config_files_in_yaml(tmp_path):
    """`--config` reads YAML (.yaml, .yml) beside JSON and TOML, with the same sections."""
    for name in ("c.yaml", "c.yml"):
        path = tmp_path / name
        path.write_text("train:\n  steps: 9\n  lr: 3.0e-4\nmodel:\n  latent_dim: 32\n")
        config = RunConfig.from_dict(load_config_file(path))
        assert (config.runtime.steps, config.train.lr, config.model.latent_dim) == (9, 3e-4, 32)


def test_cache_max_gb_is_checked_and_may_change_when_a_run_resumes(tmp_path):
    from click.testing import CliRunner

    from train.cli import main
    from train.config import RUN_SECTIONS

    args = ["fit", "--store", str(tmp_path), "--out", str(tmp_path / "run"), "--cache-max-gb"]
    result = CliRunner().invoke(main, [*args, "0"])
    assert result.exit_code == 2 and "--cache-max-gb" in result.output
    saved = RunConfig().to_dict()
    del saved["runtime"]["cache_max_gb"]  # a run saved before the option existed
    limited = RunConfig.from_dict({"runtime": {"cache_max_gb": 20.0}}).to_dict()
    assert [d.split(":")[0] for d in diff_configs(saved, limited)] == ["runtime.cache_max_gb"]
    assert RUN_SECTIONS.computing_changes(saved, limited) == []
