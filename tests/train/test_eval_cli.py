"""End to end through the real commands: synth -> build -> fit (tiny) -> eval -> encode ->
decode."""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
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
from shared.layout import FEATURE_DIM, JP
from shared.skeleton import JOINT_NAMES, NUM_JOINTS
from shared.store import open_store
from train import MotionCodec
from train.cli import main as train_main
from train.data import WindowIndex, prepare_batch, read_windows
from train.evaluate import META, TABLE_ROWS, evaluate, format_table
from train.inference import load_for_inference
from train.metrics import (
    MM_PER_M,
    MPJPE_HEAD_BY_FRAME,
    MPJPE_HEAD_PER_JOINT,
    MPJPE_WORLD_BY_FRAME,
    MPJPE_WORLD_PER_JOINT,
    joint_distance_m,
)

SEQ_LEN = 32
LATENT_DIM = 8
TINY = {
    "model": {
        "hidden_dim": 16,
        "latent_dim": LATENT_DIM,
        "blocks_per_stage": 1,
        "seq_len": SEQ_LEN,
    },
    "train": {
        "steps": 4,
        "batch_size": 4,
        "num_workers": 0,
        "val_every": 2,
        "log_every": 1,
        "val_windows": 4,
        "warmup_steps": 1,
        "device": "cpu",
    },
}


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
    invoke(
        preprocess_main,
        [
            "build",
            paths["data"],
            "--out",
            paths["store"],
            "--scheduler",
            "synchronous",
            "--no-progress",
        ],
    )
    config = root / "tiny.json"
    config.write_text(json.dumps(TINY))
    invoke(
        train_main, ["fit", "--store", paths["store"], "--out", paths["run"], "--config", config]
    )
    paths["ckpt"] = paths["run"] / "checkpoints" / "last.pt"
    assert paths["ckpt"].is_file()
    return paths


def test_eval_writes_finite_metrics_and_pictures(run, tmp_path):
    out = tmp_path / "eval"
    result = invoke(
        train_main,
        [
            "eval",
            "--ckpt",
            run["ckpt"],
            "--store",
            run["store"],
            "--split",
            "val",
            "--out",
            out,
            "--max-windows",
            6,
            "--animate",
            "--device",
            "cpu",
        ],
    )
    assert "PA-MPJPE" in result.output and "foot skating" in result.output
    mpjpe_line = next(ln for ln in result.output.splitlines() if ln.startswith("MPJPE, head"))
    assert re.search(r"\s\d+\.\d$", mpjpe_line), mpjpe_line  # mm to 0.1

    metrics = json.loads((out / "metrics.json").read_text())
    for key in TABLE_ROWS:
        assert isinstance(metrics[key], float) and math.isfinite(metrics[key]), key
    assert metrics["mpjpe_world_mm"] > 0 and metrics["pa_mpjpe_mm"] <= metrics["mpjpe_world_mm"]
    assert 0 < metrics["foot_contact_fraction"] <= 1
    for key in (MPJPE_WORLD_BY_FRAME, MPJPE_HEAD_BY_FRAME):
        assert len(metrics[key]) == SEQ_LEN and all(math.isfinite(v) for v in metrics[key])
    assert list(metrics[MPJPE_WORLD_PER_JOINT]) == list(JOINT_NAMES)
    head_per_joint = metrics[MPJPE_HEAD_PER_JOINT]
    assert list(head_per_joint) == list(JOINT_NAMES)
    assert np.mean(list(head_per_joint.values())) == pytest.approx(metrics["mpjpe_head_mm"])
    meta = metrics[META]
    assert meta["num_windows"] == 6 and meta["window_frames"] == SEQ_LEN and meta["split"] == "val"
    assert meta["store_fingerprint"] == open_store(run["store"]).fingerprint
    assert result.output.rstrip().splitlines()[-1] == (  # the line that matters, last
        f"val: world MPJPE {metrics['mpjpe_world_mm']:.1f} mm, head-frame MPJPE "
        f"{metrics['mpjpe_head_mm']:.1f} mm over 6 windows "
        f"(checkpoint step {meta['checkpoint_step']})"
    )

    assert set(meta["pictures"]) == {
        "skeletons_window0.png",
        "skeletons_window1.png",
        "skeletons_window2.png",
        "error_by_frame.png",
        "per_joint_error.png",
        "loss_curves.png",
        "reconstruction.gif",
    }
    for name in meta["pictures"]:
        assert (out / name).stat().st_size > 5_000, name
        if name.endswith(".png"):
            rgb = mpimg.imread(out / name)[..., :3].reshape(-1, 3)
            assert np.any(rgb < 0.97, axis=1).mean() > 0.005, name


def test_table_gives_millimetres_and_degrees_to_a_tenth_and_keeps_small_values():
    metrics = {"mpjpe_world_mm": 148.71234, "head_rot_error_deg": 3.04999, "kl": 0.0123456,
               "foot_skating_gt_mm_per_frame": 0.031234, "world/position_m": 0.149876,
               "pa_mpjpe_mm": None}  # fmt: skip
    rows = {
        label: line[len(label) :].strip()
        for line in format_table(metrics).splitlines()
        for label in TABLE_ROWS.values()
        if line.startswith(label)
    }
    assert rows == {
        TABLE_ROWS["mpjpe_world_mm"]: "148.7",
        TABLE_ROWS["head_rot_error_deg"]: "3.0",
        TABLE_ROWS["kl"]: "0.01235",
        TABLE_ROWS["foot_skating_gt_mm_per_frame"]: "0.0312",
        TABLE_ROWS["world/position_m"]: "0.1499",
        TABLE_ROWS["pa_mpjpe_mm"]: "n/a",
    }


def test_eval_rejects_an_incomplete_store(run, tmp_path):
    store = tmp_path / "store.zarr"
    invoke(
        preprocess_main,
        ["build", run["data"], "--out", store, "--scheduler", "synchronous", "--no-progress"],
    )
    group = zarr.open_group(str(store), mode="r+")
    group.attrs["complete"] = False
    result = CliRunner().invoke(
        train_main,
        [
            "eval",
            "--ckpt",
            str(run["ckpt"]),
            "--store",
            str(store),
            "--out",
            str(tmp_path / "eval"),
        ],
    )
    assert result.exit_code != 0 and "incomplete" in result.output


@pytest.fixture(scope="module")
def latents(run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("latents") / "latents.zarr"
    invoke(
        train_main,
        [
            "encode",
            "--ckpt",
            run["ckpt"],
            "--store",
            run["store"],
            "--out",
            out,
            "--logvar",
            "--device",
            "cpu",
        ],
    )
    return out


def test_encode_writes_windows_as_trained_with_tables_stats_and_provenance(run, latents):
    store = open_store(run["store"])
    group = zarr.open_group(str(latents), mode="r")
    lengths = np.array([r.length for r in store.sequences])
    num_windows = -(-lengths // SEQ_LEN)
    K = SEQ_LEN // 4
    assert group["mean"].shape == group["logvar"].shape == (num_windows.sum(), K, LATENT_DIM)
    assert group["mean"].dtype == np.float32 and np.isfinite(group["mean"][:]).all()

    # The sequence table is stored as the feature store's: column-wise JSON in `sequences/`.
    table = {name: np.asarray(values) for name, values in group["sequences"].attrs["table"].items()}
    windows = group["windows"]
    assert [s.name for s in latent_store.read_latent_table(group)] == list(table["name"])
    assert list(table["name"][:]) == [r.name for r in store.sequences]
    assert list(table["split"][:]) == [r.split for r in store.sequences]
    np.testing.assert_array_equal(table["num_frames"][:], lengths)
    np.testing.assert_array_equal(table["num_windows"][:], num_windows)
    np.testing.assert_array_equal(
        table["first_window"][:], np.concatenate([[0], np.cumsum(num_windows)[:-1]])
    )
    sequence, first, valid = (
        windows["sequence"][:],
        windows["first_frame"][:],
        windows["valid_frames"][:],
    )
    for i, length in enumerate(lengths):  # every frame of every sequence in exactly one window
        covered = np.zeros(length, dtype=int)
        for f, v in zip(first[sequence == i], valid[sequence == i]):
            covered[f : f + v] += 1
        assert (covered == 1).all()
    assert (valid < SEQ_LEN).sum() == (lengths % SEQ_LEN > 0).sum()  # only last windows are partial

    # Full windows are exactly what training and `train eval` feed the model.
    index = WindowIndex(store.sequences, SEQ_LEN)
    full = np.flatnonzero(valid == SEQ_LEN)[::7]
    _, model, normalizer = load_for_inference(run["ckpt"], torch.device("cpu"))
    prep = prepare_batch(
        read_windows(store, index, index.number(sequence[full], first[full])), normalizer
    )
    with torch.no_grad():
        np.testing.assert_allclose(
            group["mean"][full], model(prep.x)["mean"].numpy(), atol=1e-5, rtol=0
        )
    np.testing.assert_allclose(
        windows["R_canon_world"][full], prep.frame.R_canon_world.numpy(), atol=1e-6
    )
    np.testing.assert_allclose(
        windows["offset_world"][full], prep.frame.offset_world.numpy(), atol=1e-6
    )

    stats = group["latent_stats"]
    assert stats["mean"].shape == stats["std"].shape == (LATENT_DIM,)
    assert stats.attrs["split"] == "train" and (stats["std"][:] > 0).all()
    latent_valid = np.arange(K) < -(-valid[:, None] // 4)  # (N_windows, K)
    is_train = (table["split"][:] == "train")[sequence]
    train_rows = group["mean"][:][latent_valid & is_train[:, None]]
    assert stats.attrs["count"] == len(train_rows)
    np.testing.assert_allclose(stats["mean"][:], train_rows.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["std"][:], train_rows.astype(np.float64).std(0), rtol=1e-6)

    attrs = group.attrs
    assert attrs["complete"] is True and attrs["schema"]["version"] == 3
    assert (attrs["window_frames"], attrs["hop_frames"], attrs["latents_per_window"]) == (
        SEQ_LEN,
        SEQ_LEN,
        K,
    )
    assert attrs["fps"] == store.fps / 4 and attrs["frames_per_latent"] == 4
    assert attrs["checkpoint"]["sha256"] == hashlib.sha256(run["ckpt"].read_bytes()).hexdigest()
    assert attrs["feature_store"] == {"url": store.url, "fingerprint": store.fingerprint}
    assert attrs["package_version"] and "repeating the sequence's last frame" in attrs["padding"]


def test_decoded_world_error_equals_what_eval_reports_on_the_same_windows(run, tmp_path):
    """decode --world (encode --split val) against the store's world motion, on the full windows,
    gives the world MPJPE and head position error that `train eval` reports for those windows."""
    latents, world_out = tmp_path / "val.zarr", tmp_path / "world.zarr"
    invoke(
        train_main,
        [
            "encode",
            "--ckpt",
            run["ckpt"],
            "--store",
            run["store"],
            "--out",
            latents,
            "--split",
            "val",
            "--device",
            "cpu",
        ],
    )
    invoke(
        train_main,
        [
            "decode",
            "--ckpt",
            run["ckpt"],
            "--latents",
            latents,
            "--out",
            world_out,
            "--world",
            "--device",
            "cpu",
        ],
    )
    store, group, world = (
        open_store(run["store"]),
        zarr.open_group(str(latents)),
        zarr.open_group(str(world_out)),
    )
    records = store.split("val")
    assert world["joint_translation"].shape == (sum(r.length for r in records), NUM_JOINTS, 3)
    sequence, first = group["windows"]["sequence"][:], group["windows"]["first_frame"][:]
    full = group["windows"]["valid_frames"][:] == SEQ_LEN

    decoded_first = latent_store.read_decoded_table(world)["first_frame"]
    pred_joints, gt_joints, pred_head, gt_head = [], [], [], []
    for i, f in zip(sequence[full], first[full]):
        rows = slice(decoded_first[i] + f, decoded_first[i] + f + SEQ_LEN)
        start = records[i].start + f
        truth = features_to_world(
            torch.as_tensor(np.array(store.read_features(start, start + SEQ_LEN)))
        )
        pred_joints.append(world["joint_translation"][rows])
        pred_head.append(world["cpf_translation"][rows])
        gt_joints.append(truth.joint_translation)
        gt_head.append(truth.cpf_translation)

    def mean_mm(pred: list[np.ndarray], truth: list[torch.Tensor]) -> float:
        return (
            float(joint_distance_m(torch.as_tensor(np.stack(pred)), torch.stack(truth)).mean())
            * MM_PER_M
        )

    mpjpe_mm, head_mm = mean_mm(pred_joints, gt_joints), mean_mm(pred_head, gt_head)

    index = WindowIndex(records, SEQ_LEN)
    metrics = evaluate(
        run["ckpt"],
        str(run["store"]),
        "val",
        tmp_path / "eval",
        device="cpu",
        windows=index.number(sequence[full], first[full]),
    )
    assert metrics[META]["num_windows"] == full.sum() > 10
    assert mpjpe_mm == pytest.approx(metrics["mpjpe_world_mm"], rel=1e-4)
    assert head_mm == pytest.approx(metrics["head_pos_error_mm"], rel=1e-4)


def test_decode_features_and_world_agree_and_keep_every_frame(run, latents, tmp_path):
    features_out, world_out = tmp_path / "features.zarr", tmp_path / "world.zarr"
    invoke(
        train_main,
        [
            "decode",
            "--ckpt",
            run["ckpt"],
            "--latents",
            latents,
            "--out",
            features_out,
            "--device",
            "cpu",
        ],
    )
    invoke(
        train_main,
        [
            "decode",
            "--ckpt",
            run["ckpt"],
            "--latents",
            latents,
            "--out",
            world_out,
            "--world",
            "--device",
            "cpu",
        ],
    )
    decoded, world = (
        zarr.open_group(str(features_out), mode="r"),
        zarr.open_group(str(world_out), mode="r"),
    )
    store = open_store(run["store"])
    N = store.num_frames
    assert decoded["features"].shape == (N, FEATURE_DIM)
    assert decoded.attrs["complete"] is True and decoded.attrs["kind"] == "features"
    np.testing.assert_array_equal(
        latent_store.read_decoded_table(decoded)["num_frames"], [r.length for r in store.sequences]
    )
    assert world["joint_translation"].shape == (N, NUM_JOINTS, 3)
    assert world["cpf_translation"].shape == (N, 3) and world["cpf_orientation"].shape == (N, 3, 3)
    # `--world` decodes the head trajectory as the run was trained (the world loss's blend of
    # hp and integrated hp_dot, shared.features.head_pose); the body relative to the head is
    # the decoded `jp` either way.
    R_world_head, t_world_head = world["cpf_orientation"][:], world["cpf_translation"][:]
    joints_head = np.einsum(
        "tji,tkj->tki", R_world_head, world["joint_translation"][:] - t_world_head[:, None]
    )
    jp = decoded["features"][:][:, JP].reshape(N, NUM_JOINTS, 3)
    np.testing.assert_allclose(joints_head, jp, atol=1e-4)


def test_sequences_shorter_than_a_window_and_overlapping_windows(run, tmp_path):
    store = open_store(run["store"])
    records = store.split("test")
    codec = MotionCodec.from_checkpoint(run["ckpt"], device="cpu")
    for window, hop in ((640, 640), (32, 20)):
        latents, world_out = tmp_path / f"l{window}.zarr", tmp_path / f"w{window}.zarr"
        invoke(
            train_main,
            [
                "encode",
                "--ckpt",
                run["ckpt"],
                "--store",
                run["store"],
                "--out",
                latents,
                "--split",
                "test",
                "--window",
                window,
                "--hop",
                hop,
                "--device",
                "cpu",
            ],
        )
        invoke(
            train_main,
            [
                "decode",
                "--ckpt",
                run["ckpt"],
                "--latents",
                latents,
                "--out",
                world_out,
                "--world",
                "--device",
                "cpu",
            ],
        )
        group, world = zarr.open_group(str(latents)), zarr.open_group(str(world_out))
        assert group["mean"].shape[1] == window // 4
        if window > max(r.length for r in records):  # one padded window per sequence
            np.testing.assert_array_equal(
                group["windows"]["valid_frames"][:], [r.length for r in records]
            )
        # The CLI is the codec underneath: the same numbers from Python.
        record = records[1]
        features = np.array(store.read_features(record.start, record.stop))
        motion = codec.decode_world(codec.encode_features(features, window, hop))
        first = latent_store.read_decoded_table(world)["first_frame"][1]
        rows = slice(first, first + record.length)
        np.testing.assert_allclose(
            world["joint_translation"][rows], motion.joint_translation.numpy(), atol=1e-5
        )
        np.testing.assert_allclose(
            world["cpf_orientation"][rows], motion.cpf_orientation.numpy(), atol=1e-5
        )

    result = CliRunner().invoke(
        train_main,
        [
            "encode",
            "--ckpt",
            str(run["ckpt"]),
            "--store",
            str(run["store"]),
            "--out",
            str(tmp_path / "bad.zarr"),
            "--hop",
            "40",
        ],
    )
    assert result.exit_code != 0 and "hop_frames must be in 1..window_frames=32" in result.output
    assert not (tmp_path / "bad.zarr").exists()


def test_encode_and_decode_refuse_bad_outputs_and_inputs(run, latents, tmp_path):
    result = CliRunner().invoke(
        train_main,
        ["encode", "--ckpt", str(run["ckpt"]), "--store", str(run["store"]), "--out", str(latents)],
    )
    assert result.exit_code != 0 and "already exists" in result.output

    other_ckpt = tmp_path / "other.pt"
    payload = torch.load(run["ckpt"], weights_only=True)
    payload["step"] += 1
    torch.save(payload, other_ckpt)
    result = CliRunner().invoke(
        train_main,
        [
            "decode",
            "--ckpt",
            str(other_ckpt),
            "--latents",
            str(latents),
            "--out",
            str(tmp_path / "x.zarr"),
        ],
    )
    assert result.exit_code != 0 and "decode with the checkpoint that encoded it" in result.output

    result = CliRunner().invoke(
        train_main,
        [
            "decode",
            "--ckpt",
            str(run["ckpt"]),
            "--latents",
            str(run["store"]),
            "--out",
            str(tmp_path / "y.zarr"),
        ],
    )
    assert result.exit_code != 0 and "nymeria-motion-latents" in result.output

    old = tmp_path / "v1.zarr"
    shutil.copytree(latents, old)
    group = zarr.open_group(str(old), mode="r+")
    group.attrs["schema"] = {"name": "nymeria-motion-latents", "version": 1}
    result = CliRunner().invoke(
        train_main,
        [
            "decode",
            "--ckpt",
            str(run["ckpt"]),
            "--latents",
            str(old),
            "--out",
            str(tmp_path / "z.zarr"),
        ],
    )
    assert result.exit_code != 0
    assert (
        "schema version 1 (one pass per whole sequence" in result.output
        and "`train encode`" in result.output
    )


def test_a_damaged_latent_chunk_is_named_and_nothing_is_decoded(run, latents, tmp_path):
    damaged = tmp_path / "damaged.zarr"
    shutil.copytree(latents, damaged)
    assert zarr.open_group(str(damaged), mode="r")["mean"].metadata.codecs[-1].to_dict() == {
        "name": "crc32c"
    }
    chunk = damaged / "mean" / "c" / "0" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    out = tmp_path / "decoded.zarr"
    args = ["decode", "--ckpt", str(run["ckpt"]), "--latents", str(damaged), "--out", str(out)]
    result = CliRunner().invoke(train_main, args)
    assert result.exit_code != 0
    assert "latent store: array 'mean', windows 0.." in result.output
    assert "failed its checksum" in result.output and "`train encode`" in result.output
    assert not out.exists()


def test_latents_of_another_shape_than_their_plan_are_one_line_naming_the_array(
    run, latents, tmp_path
):
    resized = tmp_path / "resized.zarr"
    shutil.copytree(latents, resized)
    mean = zarr.open_group(str(resized), mode="r+")["mean"]
    mean.resize((mean.shape[0], mean.shape[1] - 1, *mean.shape[2:]))
    out = tmp_path / "decoded.zarr"
    args = ["decode", "--ckpt", str(run["ckpt"]), "--latents", str(resized), "--out", str(out)]
    result = CliRunner().invoke(train_main, args)
    assert result.exit_code == 1, result.output
    last = result.output.splitlines()[-1]
    assert last.startswith("Error: latent store: array 'mean' of sequence "), result.output
    assert "write it again with `train encode`" in result.output
    assert not out.exists()


def _fail_on_second_call(monkeypatch, owner, name: str) -> None:
    """Make `owner.<name>` raise on its second call (after one sequence went through)."""
    original, calls = getattr(owner, name), []

    def flaky(*args, **kwargs):
        calls.append(None)
        if len(calls) == 2:
            raise RuntimeError("injected failure")
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, flaky)


def test_a_failed_encode_or_decode_leaves_nothing_and_the_rerun_succeeds(
    run, latents, tmp_path, monkeypatch
):
    out = tmp_path / "latents.zarr"
    with monkeypatch.context() as patch:
        _fail_on_second_call(patch, MotionCodec, "encode_features")
        with pytest.raises(RuntimeError, match="injected failure"):
            latent_store.encode_store(run["ckpt"], str(run["store"]), out, device="cpu")
    assert list(tmp_path.iterdir()) == []  # neither `out` nor its partial directory
    invoke(
        train_main,
        [
            "encode",
            "--ckpt",
            run["ckpt"],
            "--store",
            run["store"],
            "--out",
            out,
            "--logvar",
            "--device",
            "cpu",
        ],
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latents.zarr"]
    rerun, first = zarr.open_group(str(out), mode="r"), zarr.open_group(str(latents), mode="r")
    assert rerun.attrs["complete"] is True
    np.testing.assert_array_equal(rerun["mean"][:], first["mean"][:])
    np.testing.assert_array_equal(rerun["latent_stats"]["std"][:], first["latent_stats"]["std"][:])

    decoded = tmp_path / "decoded.zarr"
    with monkeypatch.context() as patch:
        _fail_on_second_call(patch, MotionCodec, "decode_features")
        with pytest.raises(RuntimeError, match="injected failure"):
            latent_store.decode_store(run["ckpt"], latents, decoded, device="cpu")
    assert not decoded.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["latents.zarr"]
    invoke(
        train_main,
        [
            "decode",
            "--ckpt",
            run["ckpt"],
            "--latents",
            latents,
            "--out",
            decoded,
            "--device",
            "cpu",
        ],
    )
    assert zarr.open_group(str(decoded), mode="r").attrs["complete"] is True


def test_train_info_describes_latent_and_decoded_stores(run, latents, tmp_path):
    """`train info` describes what `encode` and `decode` wrote; `preprocess info` on either
    names it and points there, and `train info` on a feature store points back."""
    store = open_store(run["store"])
    info = json.loads(invoke(train_main, ["info", latents, "--json"]).output)
    group = zarr.open_group(str(latents), mode="r")
    assert info["kind"] == "latent store" and info["schema"]["name"] == latent_store.LATENT_SCHEMA
    assert info["windows"] == group["mean"].shape[0] and info["has_logvar"]
    assert (info["latents_per_window"], info["latent_dim"]) == (SEQ_LEN // 4, LATENT_DIM)
    assert info["sequences"] == len(store.sequences) and info["frames"] == store.num_frames
    assert sum(s["windows"] for s in info["splits"].values()) == info["windows"]
    assert info["feature_store"]["fingerprint"] == store.fingerprint
    assert info["checkpoint"]["sha256"] == hashlib.sha256(run["ckpt"].read_bytes()).hexdigest()
    assert info["latent_stats"]["split"] == "train" and info["size_bytes"] > 0
    text = invoke(train_main, ["info", latents]).output
    assert f"{info['windows']} of {SEQ_LEN} frames every {SEQ_LEN} -> {SEQ_LEN // 4}" in text
    assert "means and log-variances" in text and store.fingerprint[:16] in text

    decoded = tmp_path / "decoded.zarr"
    invoke(
        train_main,
        [
            "decode",
            "--ckpt",
            run["ckpt"],
            "--latents",
            latents,
            "--out",
            decoded,
            "--device",
            "cpu",
        ],
    )
    info = json.loads(invoke(train_main, ["info", decoded, "--json"]).output)
    assert info["kind"] == "decoded store" and info["contents"] == "features"
    assert info["arrays"] == {"features": [store.num_frames, FEATURE_DIM]}

    for path in (latents, decoded):
        result = CliRunner().invoke(preprocess_main, ["info", str(path)])
        assert result.exit_code == 1 and "build one" not in result.output
        assert f"`python -m train info {path}` describes it" in result.output
    result = CliRunner().invoke(train_main, ["info", str(run["store"])])
    assert result.exit_code == 1
    assert "is a feature store (schema 'nymeria-motion-features'), not a latent store" in (
        result.output
    )
    assert f"`python -m preprocess info {run['store']}` describes it" in result.output
