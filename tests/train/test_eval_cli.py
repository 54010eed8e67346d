"""End to end through the real commands: synth -> build -> fit (tiny) -> eval -> encode -> decode."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner, Result

import train.latents as latent_store
from preprocess.cli import main as preprocess_main
from shared.features import features_to_world
from shared.layout import FEATURE_DIM
from shared.skeleton import JOINT_NAMES, NUM_JOINTS
from shared.store import open_store
from train.cli import main as train_main
from train.evaluate import META, TABLE_ROWS
from train.inference import decode_world_features, encode_world_features, load_for_inference
from train.metrics import MPJPE_HEAD_BY_FRAME, MPJPE_WORLD_BY_FRAME, MPJPE_WORLD_PER_JOINT

SEQ_LEN = 32
LATENT_DIM = 8
TINY = {
    "model": {"hidden_dim": 16, "latent_dim": LATENT_DIM, "blocks_per_stage": 1, "seq_len": SEQ_LEN},
    "train": {"steps": 4, "batch_size": 4, "num_workers": 0, "val_every": 2, "log_every": 1,
              "val_windows": 4, "warmup_steps": 1, "device": "cpu"},
}  # fmt: skip


def invoke(main, args: list[str]) -> Result:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, f"{args[0]} failed ({result.exit_code}):\n{result.output}"
    return result


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, Path]:
    """A store built from synthetic clips and a 4-step tiny model trained on it."""
    root = tmp_path_factory.mktemp("e2e")
    paths = {"data": root / "data", "store": root / "store.zarr", "run": root / "run"}
    invoke(preprocess_main, ["synth", paths["data"], "--recordings", 6, "--seed", 0])
    invoke(preprocess_main, ["build", paths["data"], "--out", paths["store"], "--scheduler", "synchronous",
                             "--no-progress"])  # fmt: skip
    config = root / "tiny.json"
    config.write_text(json.dumps(TINY))
    invoke(train_main, ["fit", "--store", paths["store"], "--out", paths["run"], "--config", config])
    paths["ckpt"] = paths["run"] / "checkpoints" / "last.pt"
    assert paths["ckpt"].is_file()
    return paths


def test_eval_writes_finite_metrics_and_pictures(run, tmp_path):
    out = tmp_path / "eval"
    result = invoke(train_main, ["eval", "--ckpt", run["ckpt"], "--store", run["store"], "--split", "val",
                                 "--out", out, "--max-windows", 6, "--animate", "--device", "cpu"])  # fmt: skip
    assert "PA-MPJPE" in result.output and "foot skating" in result.output

    metrics = json.loads((out / "metrics.json").read_text())
    for key in TABLE_ROWS:
        assert isinstance(metrics[key], float) and math.isfinite(metrics[key]), key
    assert metrics["mpjpe_world_mm"] > 0 and metrics["pa_mpjpe_mm"] <= metrics["mpjpe_world_mm"]
    assert 0 < metrics["foot_contact_fraction"] <= 1
    for key in (MPJPE_WORLD_BY_FRAME, MPJPE_HEAD_BY_FRAME):
        assert len(metrics[key]) == SEQ_LEN and all(math.isfinite(v) for v in metrics[key])
    assert list(metrics[MPJPE_WORLD_PER_JOINT]) == list(JOINT_NAMES)
    meta = metrics[META]
    assert meta["num_windows"] == 6 and meta["window_frames"] == SEQ_LEN and meta["split"] == "val"
    assert meta["store_fingerprint"] == open_store(run["store"]).fingerprint

    assert set(meta["pictures"]) == {
        "skeletons_window0.png", "skeletons_window1.png", "skeletons_window2.png", "error_by_frame.png",
        "per_joint_error.png", "loss_curves.png", "reconstruction.gif",
    }  # fmt: skip
    for name in meta["pictures"]:
        assert (out / name).stat().st_size > 5_000, name
        if name.endswith(".png"):
            rgb = mpimg.imread(out / name)[..., :3].reshape(-1, 3)
            assert np.any(rgb < 0.97, axis=1).mean() > 0.005, name


def test_eval_rejects_an_incomplete_store(run, tmp_path):
    store = tmp_path / "store.zarr"
    invoke(preprocess_main, ["build", run["data"], "--out", store, "--scheduler", "synchronous", "--no-progress"])
    group = zarr.open_group(str(store), mode="r+")
    group.attrs["complete"] = False
    result = CliRunner().invoke(train_main, ["eval", "--ckpt", str(run["ckpt"]), "--store", str(store),
                                             "--out", str(tmp_path / "eval")])  # fmt: skip
    assert result.exit_code != 0 and "incomplete" in result.output


@pytest.fixture(scope="module")
def latents(run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("latents") / "latents.zarr"
    invoke(train_main, ["encode", "--ckpt", run["ckpt"], "--store", run["store"], "--out", out, "--logvar",
                        "--device", "cpu"])  # fmt: skip
    return out


def test_encode_writes_latents_table_stats_and_provenance(run, latents):
    store = open_store(run["store"])
    group = zarr.open_group(str(latents), mode="r")
    lengths = np.array([r.length for r in store.sequences])
    num_latents = -(-lengths // 4)
    assert group["mean"].shape == group["logvar"].shape == (num_latents.sum(), LATENT_DIM)
    assert group["mean"].dtype == np.float32
    assert np.isfinite(group["mean"][:]).all()

    table = group["sequences"]
    assert list(table["name"][:]) == [r.name for r in store.sequences]
    assert list(table["split"][:]) == [r.split for r in store.sequences]
    np.testing.assert_array_equal(table["num_latents"][:], num_latents)
    np.testing.assert_array_equal(table["num_frames"][:], lengths)
    np.testing.assert_array_equal(table["first_latent"][:], np.concatenate([[0], np.cumsum(num_latents)[:-1]]))
    assert table["R_canon_world"].shape == (len(lengths), 3, 3) and table["offset_world"].shape == (len(lengths), 3)

    stats = group["latent_stats"]
    assert stats["mean"].shape == stats["std"].shape == (LATENT_DIM,)
    assert stats.attrs["split"] == "train" and (stats["std"][:] > 0).all()
    train_rows = np.concatenate([
        group["mean"][f : f + n] for f, n, s in zip(table["first_latent"][:], num_latents, table["split"][:])
        if s == "train"
    ])  # fmt: skip
    np.testing.assert_allclose(stats["mean"][:], train_rows.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["std"][:], train_rows.astype(np.float64).std(0), rtol=1e-6)

    attrs = group.attrs
    assert attrs["complete"] is True
    assert attrs["fps"] == store.fps / 4 and attrs["frames_per_latent"] == 4
    assert attrs["checkpoint"]["sha256"] == hashlib.sha256(run["ckpt"].read_bytes()).hexdigest()
    assert attrs["feature_store"] == {"url": store.url, "fingerprint": store.fingerprint}
    assert attrs["package_version"] and "repeating its last frame" in attrs["tail"]


def test_decode_returns_the_models_reconstruction(run, latents, tmp_path):
    out = tmp_path / "decoded.zarr"
    invoke(train_main, ["decode", "--ckpt", run["ckpt"], "--latents", latents, "--out", out, "--device", "cpu"])
    decoded = zarr.open_group(str(out), mode="r")
    store = open_store(run["store"])
    assert decoded["features"].shape == (store.num_frames, FEATURE_DIM)
    assert decoded.attrs["complete"] is True and decoded.attrs["kind"] == "features"
    np.testing.assert_array_equal(decoded["sequences"]["num_frames"][:], [r.length for r in store.sequences])

    # Each sequence's decoded features equal the model's own reconstruction of it.
    _, model, normalizer = load_for_inference(run["ckpt"], torch.device("cpu"))
    first = decoded["sequences"]["first_frame"][:]
    for i, record in enumerate(store.sequences[:2]):
        features = torch.as_tensor(np.array(store.read_features(record.start, record.stop)))
        mean, _, frame = encode_world_features(model, normalizer, features)
        expected = decode_world_features(model, normalizer, mean, frame, record.length).numpy()
        got = decoded["features"][first[i] : first[i] + record.length]
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)

    world_out = tmp_path / "world.zarr"
    invoke(train_main, ["decode", "--ckpt", run["ckpt"], "--latents", latents, "--out", world_out, "--world",
                        "--device", "cpu"])  # fmt: skip
    world = zarr.open_group(str(world_out), mode="r")
    N = store.num_frames
    assert world["joint_translation"].shape == (N, NUM_JOINTS, 3)
    assert world["cpf_translation"].shape == (N, 3) and world["cpf_orientation"].shape == (N, 3, 3)
    expected_joints = features_to_world(torch.as_tensor(decoded["features"][:])).joint_translation.numpy()
    np.testing.assert_allclose(world["joint_translation"][:], expected_joints, atol=1e-5)


def test_encode_and_decode_refuse_bad_outputs_and_inputs(run, latents, tmp_path):
    result = CliRunner().invoke(train_main, ["encode", "--ckpt", str(run["ckpt"]), "--store", str(run["store"]),
                                             "--out", str(latents)])  # fmt: skip
    assert result.exit_code != 0 and "already exists" in result.output

    other_ckpt = tmp_path / "other.pt"
    payload = torch.load(run["ckpt"], weights_only=True)
    payload["step"] += 1
    torch.save(payload, other_ckpt)
    result = CliRunner().invoke(train_main, ["decode", "--ckpt", str(other_ckpt), "--latents", str(latents),
                                             "--out", str(tmp_path / "x.zarr")])  # fmt: skip
    assert result.exit_code != 0 and "decode with the checkpoint that encoded it" in result.output

    result = CliRunner().invoke(train_main, ["decode", "--ckpt", str(run["ckpt"]), "--latents",
                                             str(run["store"]), "--out", str(tmp_path / "y.zarr")])  # fmt: skip
    assert result.exit_code != 0 and "nymeria-motion-latents" in result.output


def _fail_on_second_call(monkeypatch, name: str) -> None:
    """Make `train.latents.<name>` raise on its second call (after one sequence went through)."""
    original, calls = getattr(latent_store, name), []

    def flaky(*args, **kwargs):
        calls.append(None)
        if len(calls) == 2:
            raise RuntimeError("injected failure")
        return original(*args, **kwargs)

    monkeypatch.setattr(latent_store, name, flaky)


def test_a_failed_encode_or_decode_leaves_nothing_and_the_rerun_succeeds(run, latents, tmp_path, monkeypatch):
    out = tmp_path / "latents.zarr"
    with monkeypatch.context() as patch:
        _fail_on_second_call(patch, "encode_world_features")
        with pytest.raises(RuntimeError, match="injected failure"):
            latent_store.encode_store(run["ckpt"], str(run["store"]), out, device="cpu")
    assert list(tmp_path.iterdir()) == []  # neither `out` nor its partial directory
    invoke(train_main, ["encode", "--ckpt", run["ckpt"], "--store", run["store"], "--out", out, "--logvar",
                        "--device", "cpu"])  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latents.zarr"]
    rerun, first = zarr.open_group(str(out), mode="r"), zarr.open_group(str(latents), mode="r")
    assert rerun.attrs["complete"] is True
    np.testing.assert_array_equal(rerun["mean"][:], first["mean"][:])
    np.testing.assert_array_equal(rerun["latent_stats"]["std"][:], first["latent_stats"]["std"][:])

    decoded = tmp_path / "decoded.zarr"
    with monkeypatch.context() as patch:
        _fail_on_second_call(patch, "decode_world_features")
        with pytest.raises(RuntimeError, match="injected failure"):
            latent_store.decode_store(run["ckpt"], latents, decoded, device="cpu")
    assert not decoded.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["latents.zarr"]
    invoke(train_main, ["decode", "--ckpt", run["ckpt"], "--latents", latents, "--out", decoded, "--device", "cpu"])
    assert zarr.open_group(str(decoded), mode="r").attrs["complete"] is True
