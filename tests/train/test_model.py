"""MotionVAE: shapes, size, real causality, streaming, init, training and the describe CLI."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from click.testing import CliRunner

from shared.layout import FEATURE_DIM
from train import MotionVAE, MotionVAEConfig
from train.cli import main
from train.loss import TOTAL, vae_loss
from train.model import FRAMES_PER_LATENT, CausalConv1d, CausalUpsample

SMALL = MotionVAEConfig(hidden_dim=32, latent_dim=16, seq_len=32)
T_SMALL = 32


def randomized(model: MotionVAE, seed: int = 0) -> MotionVAE:
    """Every weight random and O(1)-preserving, so no path is hidden by tiny or tied init.

    The real init has near-zero output projections and identical upsampler phases; a
    bug that swapped phases or leaked a frame could hide behind them.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.ndim >= 2:  # conv weight (C_out, C_in, K)
                p.copy_(noise / math.sqrt(p[0].numel()))
            elif ".norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(0.1 * noise)
    return model.eval()


@pytest.fixture(
    scope="module",
    params=[
        {"linear_path": False},
        {"linear_path": True},
        {"linear_path": True, "linear_decoder_kernel": 2},
        {"linear_path": True, "linear_decoder_kernel": 2, "decoder_out_kernel": 4},
    ],
    ids=["conv", "conv+linear_path", "conv+linear_path_k2", "conv+linear_path_k2+out4"],
)
def small_model(request) -> MotionVAE:
    """The small model, without the linear path, with it, with its decoder reading the previous
    latent too, and with a decoder output projection reading 4 frames (randomised): every
    causality, streaming and shape test holds for all."""
    torch.manual_seed(0)
    return randomized(MotionVAE(dataclasses.replace(SMALL, **request.param)))


@pytest.fixture(scope="module")
def default_model() -> MotionVAE:
    torch.manual_seed(0)
    return MotionVAE()


# ---------------------------------------------------------------- config, size, shapes


def test_default_config_matches_design() -> None:
    cfg = MotionVAEConfig()
    assert (cfg.input_dim, cfg.hidden_dim, cfg.latent_dim) == (FEATURE_DIM, 512, 768)
    assert (cfg.blocks_per_stage, cfg.seq_len, cfg.num_latents) == (2, 152, 38)
    assert (cfg.lambda_kl, cfg.logvar_clamp) == (1e-4, 10.0)
    assert MotionVAEConfig(**dataclasses.asdict(cfg)) == cfg
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.hidden_dim = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"seq_len": 150}, "multiple of 4"),
        ({"hidden_dim": 0}, "hidden_dim"),
        ({"logvar_clamp": 0.0}, "logvar_clamp"),
        ({"linear_decoder_kernel": 0}, "linear_decoder_kernel"),
        ({"decoder_out_kernel": 0}, "decoder_out_kernel"),
    ],
)
def test_config_rejects_bad_values(bad: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MotionVAEConfig(**bad)


def test_default_parameter_count(default_model: MotionVAE) -> None:
    """The ~25.7M of docs/design.md "Model and causality" are the conv stacks; the linear path adds
    (4 * 294 + 1) * 2 * 768 in the encoder and (2 * 768 + 1) * 4 * 294 in the decoder (kernel 2
    over latents)."""
    n = default_model.num_parameters()
    linear = (4 * 294 + 1) * 2 * 768 + (2 * 768 + 1) * 4 * 294
    assert default_model.config.linear_path and n - linear == 25_681_702, n
    seed = MotionVAE(dataclasses.replace(MotionVAEConfig(), linear_path=False))
    assert seed.num_parameters() == n - linear


def test_quick_start_shapes(default_model: MotionVAE) -> None:
    x = torch.randn(4, 152, 294)
    for training in (True, False):
        default_model.train(training)
        with torch.no_grad():
            out = default_model(x)
        assert out["recon"].shape == (4, 152, 294)
        assert out["mean"].shape == out["logvar"].shape == out["z"].shape == (4, 38, 768)
    default_model.eval()


def test_eval_uses_mean_train_samples(small_model: MotionVAE) -> None:
    x = torch.randn(2, T_SMALL, FEATURE_DIM)
    with torch.no_grad():
        out = small_model(x)
        assert torch.equal(out["z"], out["mean"])
        small_model.train()
        out = small_model(x)
        small_model.eval()
    assert not torch.equal(out["z"], out["mean"])


def test_logvar_is_clamped() -> None:
    model = MotionVAE(dataclasses.replace(SMALL, logvar_clamp=0.5))
    with torch.no_grad():
        model.encoder.out_proj.bias.fill_(100.0)
        _, logvar = model.encode(torch.randn(1, 8, FEATURE_DIM))
    assert torch.all(logvar == 0.5)


def test_rejects_bad_shapes(small_model: MotionVAE) -> None:
    with pytest.raises(ValueError, match="multiple of 4"):
        small_model.encode(torch.randn(1, 10, FEATURE_DIM))
    with pytest.raises(ValueError, match=r"\(B, T, 294\)"):
        small_model.encode(torch.randn(1, 8, 10))
    with pytest.raises(ValueError, match=r"\(B, N, 16\)"):
        small_model.decode(torch.randn(1, 8, 10))


# ---------------------------------------------------------------- causality


@pytest.mark.parametrize("t0", [0, 1, 3, 4, 6, 13, 16, 29, 31])
def test_encoder_is_causal(small_model: MotionVAE, t0: int) -> None:
    """Changing frames >= t0 leaves latents k < t0 // 4 bit-identical and changes latent t0 // 4."""
    g = torch.Generator().manual_seed(t0)
    x = torch.randn(2, T_SMALL, FEATURE_DIM, generator=g)
    x2 = x.clone()
    x2[:, t0:] = torch.randn(2, T_SMALL - t0, FEATURE_DIM, generator=g)
    with torch.no_grad():
        mean, logvar = small_model.encode(x)
        mean2, logvar2 = small_model.encode(x2)
    k0 = t0 // FRAMES_PER_LATENT
    assert torch.equal(mean[:, :k0], mean2[:, :k0])
    assert torch.equal(logvar[:, :k0], logvar2[:, :k0])
    assert not torch.equal(mean[:, k0], mean2[:, k0])  # latent k0 reads frame t0: bound is tight


@pytest.mark.parametrize("k0", [0, 1, 3, 7])
def test_decoder_is_causal(small_model: MotionVAE, k0: int) -> None:
    """Changing latents >= k0 leaves frames t < 4 * k0 bit-identical, and changes frame 4 * k0."""
    g = torch.Generator().manual_seed(k0)
    N = T_SMALL // FRAMES_PER_LATENT
    z = torch.randn(2, N, SMALL.latent_dim, generator=g)
    z2 = z.clone()
    z2[:, k0:] = torch.randn(2, N - k0, SMALL.latent_dim, generator=g)
    with torch.no_grad():
        y, y2 = small_model.decode(z), small_model.decode(z2)
    t0 = FRAMES_PER_LATENT * k0
    assert torch.equal(y[:, :t0], y2[:, :t0])
    assert not torch.equal(y[:, t0], y2[:, t0])


@pytest.mark.parametrize("t0", [1, 5, 8, 14, 27])
def test_model_is_causal(t0: int) -> None:
    """Eval-mode recon of frames before the latent holding t0 ignores every frame >= t0.

    Uses the default-size model: causality must hold at the real widths too.
    """
    torch.manual_seed(1)
    model = randomized(MotionVAE(dataclasses.replace(MotionVAEConfig(), seq_len=32)))
    g = torch.Generator().manual_seed(t0)
    x = torch.randn(1, 32, FEATURE_DIM, generator=g)
    x2 = x.clone()
    x2[:, t0:] += 1.0
    with torch.no_grad():
        y, y2 = model(x)["recon"], model(x2)["recon"]
    safe = FRAMES_PER_LATENT * (t0 // FRAMES_PER_LATENT)
    assert torch.equal(y[:, :safe], y2[:, :safe])
    assert not torch.equal(y[:, safe:], y2[:, safe:])


def test_latent_receptive_fields_by_gradient(small_model: MotionVAE) -> None:
    """Latent k has gradient from frame 4k + 3 (the last of its own frames) and none from later.

    Also: every frame, the last three included, feeds some latent.
    """
    T = 16
    x = torch.randn(1, T, FEATURE_DIM, requires_grad=True)
    mean, logvar = small_model.encode(x)
    r = torch.randn_like(mean)
    covered = torch.zeros(T, dtype=torch.bool)
    for k in range(T // FRAMES_PER_LATENT):
        (grad,) = torch.autograd.grad(
            (r[:, k] * (mean[:, k] + logvar[:, k])).sum(), x, retain_graph=True
        )
        per_frame = grad.abs().sum(dim=(0, 2))  # (T,)
        last_own = FRAMES_PER_LATENT * (k + 1) - 1
        assert per_frame[last_own] > 0, f"latent {k} does not read its last frame {last_own}"
        assert torch.all(per_frame[last_own + 1 :] == 0), f"latent {k} reads future frames"
        covered |= per_frame > 0
    assert covered.all(), f"frames never read: {torch.nonzero(~covered).flatten().tolist()}"


def test_frame_receptive_fields_by_gradient(small_model: MotionVAE) -> None:
    """Output frame t has gradient from latent t // 4 and none from later latents."""
    N = 4
    z = torch.randn(1, N, SMALL.latent_dim, requires_grad=True)
    y = small_model.decode(z)
    for t in range(FRAMES_PER_LATENT * N):
        (grad,) = torch.autograd.grad(y[:, t].sum(), z, retain_graph=True)
        per_latent = grad.abs().sum(dim=(0, 2))  # (N,)
        k = t // FRAMES_PER_LATENT
        assert per_latent[k] > 0
        assert torch.all(per_latent[k + 1 :] == 0)


def test_no_statistics_across_batch(small_model: MotionVAE) -> None:
    """In training mode too, a sample's encoding does not depend on the rest of the batch."""
    x = torch.randn(3, T_SMALL, FEATURE_DIM)
    small_model.train()
    with torch.no_grad():
        together, _ = small_model.encode(x)
        alone, _ = small_model.encode(x[1:2])
    small_model.eval()
    torch.testing.assert_close(together[1:2], alone, rtol=0, atol=1e-5)


# ---------------------------------------------------------------- any length, streaming


@pytest.mark.parametrize("T", [1, 5, 30, 31, 33])
def test_encode_decode_sequence_any_length(small_model: MotionVAE, T: int) -> None:
    x = torch.randn(2, T, FEATURE_DIM)
    with torch.no_grad():
        mean, logvar = small_model.encode_sequence(x)
        N = math.ceil(T / FRAMES_PER_LATENT)
        assert mean.shape == logvar.shape == (2, N, SMALL.latent_dim)
        # The tail is padded by repeating the last frame...
        pad = N * FRAMES_PER_LATENT - T
        padded = torch.cat([x, x[:, -1:].repeat(1, pad, 1)], dim=1)
        assert torch.equal(mean, small_model.encode(padded)[0])
        # ...which leaves every complete latent as encode() gives it on the prefix.
        whole = T // FRAMES_PER_LATENT
        if whole:
            prefix, _ = small_model.encode(x[:, : whole * FRAMES_PER_LATENT])
            torch.testing.assert_close(mean[:, :whole], prefix, rtol=0, atol=1e-5)
        y = small_model.decode_sequence(mean, T)
    assert y.shape == (2, T, FEATURE_DIM)
    with pytest.raises(ValueError, match="num_frames"):
        small_model.decode_sequence(mean, N * FRAMES_PER_LATENT + 1)


@pytest.mark.parametrize("chunks", [[4] * 8, [8] * 4, [12, 12, 8], [4, 16, 4, 8], [32]])
def test_streaming_encoder_matches_whole(small_model: MotionVAE, chunks: list[int]) -> None:
    x = torch.randn(2, sum(chunks), FEATURE_DIM)
    stream = small_model.stream_encoder()
    with torch.no_grad():
        mean, logvar = small_model.encode(x)
        parts = [stream(piece) for piece in x.split(chunks, dim=1)]
    torch.testing.assert_close(torch.cat([m for m, _ in parts], 1), mean, rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.cat([v for _, v in parts], 1), logvar, rtol=0, atol=1e-5)
    stream.reset()
    with torch.no_grad():
        again, _ = stream(x[:, : chunks[0]])
    torch.testing.assert_close(again, mean[:, : chunks[0] // FRAMES_PER_LATENT], rtol=0, atol=1e-5)


@pytest.mark.parametrize("chunks", [[1] * 8, [2] * 4, [3, 3, 2], [1, 4, 1, 2]])
def test_streaming_decoder_matches_whole(small_model: MotionVAE, chunks: list[int]) -> None:
    z = torch.randn(2, sum(chunks), SMALL.latent_dim)
    stream = small_model.stream_decoder()
    with torch.no_grad():
        whole = small_model.decode(z)
        parts = [stream(piece) for piece in z.split(chunks, dim=1)]
    torch.testing.assert_close(torch.cat(parts, dim=1), whole, rtol=0, atol=1e-5)


def test_streaming_rejects_unaligned_chunks(small_model: MotionVAE) -> None:
    with pytest.raises(ValueError, match="multiple of 4"):
        small_model.stream_encoder()(torch.randn(1, 6, FEATURE_DIM))


def test_public_streaming_api_is_encode_and_decode_with_a_cache(small_model: MotionVAE) -> None:
    x = torch.randn(1, 16, FEATURE_DIM)
    encoder_cache: dict = {}
    decoder_cache: dict = {}
    with torch.no_grad():
        first, _ = small_model.encode(x[:, :8], encoder_cache)
        second, _ = small_model.encode(x[:, 8:], encoder_cache)
        z = torch.cat([first, second], 1)
        frames = torch.cat(
            [small_model.decode(part, decoder_cache) for part in (z[:, :1], z[:, 1:])], 1
        )
        whole = small_model(x)
    torch.testing.assert_close(z, whole["mean"], rtol=0, atol=1e-5)
    torch.testing.assert_close(frames, whole["recon"], rtol=0, atol=1e-5)


def test_seed_quick_start_runs_and_preprocess_true_points_to_the_codec(
    small_model: MotionVAE,
) -> None:
    x = torch.randn(2, T_SMALL, FEATURE_DIM)
    with torch.no_grad():
        out = small_model(x, preprocess=False)
        ref = small_model(x)
    assert set(out) == {"recon", "mean", "logvar", "z"}
    for key in out:
        assert torch.equal(out[key], ref[key]), key
    with pytest.raises(ValueError, match="MotionCodec.from_checkpoint"):
        small_model(x, preprocess=True)


# ---------------------------------------------------------------- init, sampling, dtypes


def test_upsampler_starts_as_nearest_repeat() -> None:
    up = CausalUpsample(8)
    y = up(torch.randn(2, 5, 8))  # (B, 2T, C)
    assert y.shape == (2, 10, 8)
    assert torch.equal(y[:, 0::2], y[:, 1::2])


def test_init_kl_and_output_near_zero(default_model: MotionVAE) -> None:
    """Output projections ~N(0, 0.01): posterior ~N(0, I) and recon ~0 against unit-scale data."""
    x = torch.randn(2, 152, FEATURE_DIM)
    with torch.no_grad():
        out = default_model.eval()(x)
        losses = vae_loss(out["recon"], x, out["mean"], out["logvar"])
    assert losses["kl"] < 0.05
    assert out["recon"].abs().mean() < 0.2
    assert out["mean"].abs().mean() < 0.2 and out["logvar"].abs().max() < 1.0
    for proj in (default_model.encoder.out_proj, default_model.decoder.out_proj):
        assert torch.all(proj.bias == 0)
        assert abs(proj.weight.std().item() - 0.01) < 1e-3


def test_sample(small_model: MotionVAE) -> None:
    y1 = small_model.sample(3, 5, generator=torch.Generator().manual_seed(7))
    y2 = small_model.sample(3, 5, generator=torch.Generator().manual_seed(7))
    assert y1.shape == (3, 20, FEATURE_DIM)
    assert torch.equal(y1, y2)
    assert small_model.sample(1).shape == (1, SMALL.seq_len, FEATURE_DIM)


def test_bf16_autocast_forward(small_model: MotionVAE) -> None:
    x = torch.randn(2, T_SMALL, FEATURE_DIM)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = small_model(x)
        stream = small_model.stream_encoder()
        streamed = torch.cat([stream(piece)[0] for piece in x.split(8, dim=1)], dim=1)
    assert out["recon"].shape == x.shape
    assert all(torch.isfinite(v).all() for v in out.values())
    ref = small_model(x)["recon"]
    assert (out["recon"].float() - ref).abs().max() < 0.1 * ref.abs().max()
    assert streamed.shape == out["mean"].shape


def test_default_model_overfits_one_batch() -> None:
    """Default model (29.3M), AdamW lr 1e-3: loss on one 2 x 32 batch falls 10x in <= 150 steps."""
    torch.manual_seed(0)
    model = MotionVAE().train()
    x = torch.randn(2, 32, FEATURE_DIM)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    first = None
    for step in range(150):
        out = model(x)
        loss = vae_loss(out["recon"], x, out["mean"], out["logvar"])[TOTAL]
        first = loss.item() if first is None else first
        if loss.item() < first / 10:
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    assert loss.item() < first / 10, f"loss {first:.3f} -> {loss.item():.3f} after {step} steps"


# ---------------------------------------------------------------- CLI


def test_describe_default_prints_count(default_model: MotionVAE) -> None:
    result = CliRunner().invoke(main, ["describe"])
    assert result.exit_code == 0, result.output
    assert f"total parameters: {default_model.num_parameters():,}" in result.output
    assert "encoder.layers.2" in result.output and "CausalDownsample" in result.output
    assert "38 x 1536" in result.output  # mean and logvar of 38 latents


def test_describe_with_overrides() -> None:
    args = ["describe", "--hidden-dim", "32", "--latent-dim", "16", "--blocks-per-stage", "1"]
    args += ["--seq-len", "16"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    cfg = MotionVAEConfig(hidden_dim=32, latent_dim=16, blocks_per_stage=1, seq_len=16)
    assert f"total parameters: {MotionVAE(cfg).num_parameters():,}" in result.output
    assert "4 x 32" in result.output  # 16 frames -> 4 latent steps


def test_describe_rejects_bad_seq_len() -> None:
    result = CliRunner().invoke(main, ["describe", "--seq-len", "150"])
    assert result.exit_code == 2
    assert "multiple of 4" in result.output


def test_the_linear_path_starts_at_zero_and_is_trained() -> None:
    """At init the model with the linear path computes exactly what the conv stacks do; one
    optimiser step moves the path."""
    torch.manual_seed(0)
    plain = MotionVAE(SMALL).eval()
    torch.manual_seed(0)
    linear = MotionVAE(dataclasses.replace(SMALL, linear_path=True)).eval()
    linear.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(2, T_SMALL, FEATURE_DIM)
    with torch.no_grad():
        assert torch.equal(plain(x)["recon"], linear(x)["recon"])
    out = linear.train()(x)
    loss = vae_loss(out["recon"], x, out["mean"], out["logvar"])[TOTAL]
    loss.backward()
    assert float(linear.linear_decoder.weight.grad.abs().sum()) > 0
    assert float(linear.linear_encoder.weight.grad.abs().sum()) > 0


@pytest.mark.parametrize("kernel", [1, 2, 3])
def test_the_linear_decoder_reads_its_latent_and_the_kernel_minus_1_before_it(kernel: int) -> None:
    """The linear path alone (the conv stack's output projection zeroed): latent j moves the 4
    frames of latents j .. j + kernel - 1 (so blocks can join) and no other frame, at any kernel
    (streaming is in test_streaming_decoder_matches_whole)."""
    model = randomized(
        MotionVAE(dataclasses.replace(SMALL, linear_path=True, linear_decoder_kernel=kernel))
    )
    with torch.no_grad():
        for p in model.decoder.out_proj.parameters():
            p.zero_()
    N, j = 6, 2
    z = torch.randn(1, N, SMALL.latent_dim)
    z2 = z.clone()
    z2[:, j] += 1.0
    with torch.no_grad():
        moved = (model.decode(z2) - model.decode(z)).abs().amax(dim=(0, 2)) > 0  # (4N,) frames
    F = FRAMES_PER_LATENT
    expected = torch.zeros(F * N, dtype=torch.bool)
    expected[F * j : F * (j + kernel)] = True
    assert torch.equal(moved, expected), moved.nonzero().flatten().tolist()


def test_a_checkpoint_from_before_the_decoder_kernel_loads_as_it_was_trained(tmp_path) -> None:
    """A checkpoint whose config predates `linear_decoder_kernel` (an nn.Linear decoder path,
    latent k -> its own 4 frames) loads strictly into that model and decodes the same frames."""
    from shared.layout import layout_description
    from train.checkpoint import Checkpoint, save_checkpoint
    from train.config import RunConfig
    from train.inference import load_for_inference

    old = randomized(
        MotionVAE(dataclasses.replace(SMALL, linear_path=True, linear_decoder_kernel=1))
    )
    config = RunConfig(model=old.config).to_dict()
    del config["model"]["linear_decoder_kernel"]  # as saved before the field existed
    ckpt = Checkpoint(
        step=1,
        best_val=0.0,
        model=old.state_dict(),
        optimizer={},
        scheduler={},
        config=config,
        layout=layout_description(),
        stats_mean=torch.zeros(FEATURE_DIM),
        stats_std=torch.ones(FEATURE_DIM),
        stats_count=1,
        stats_window_frames=1,
        store_url="",
        store_fingerprint="",
        package_version="",
    )
    save_checkpoint(tmp_path / "old.pt", ckpt)
    _, loaded, _ = load_for_inference(tmp_path / "old.pt", torch.device("cpu"))
    assert loaded.config.linear_decoder_kernel == 1
    z = torch.randn(2, 5, SMALL.latent_dim)
    with torch.no_grad():
        assert torch.equal(loaded.decode(z), old.decode(z))


@pytest.mark.parametrize("linear_path", [True, False])
def test_describe_rows_add_up_to_the_total(linear_path: bool) -> None:
    """Every parameter is in exactly one row of the table, the linear path's included: the rows
    sum to each part's total and the parts to the model's count."""
    args = ["describe", "--hidden-dim", "32", "--latent-dim", "16", "--blocks-per-stage", "1"]
    result = CliRunner().invoke(main, [*args, f"--{'' if linear_path else 'no-'}linear-path"])
    assert result.exit_code == 0, result.output
    config = MotionVAEConfig(
        hidden_dim=32, latent_dim=16, blocks_per_stage=1, linear_path=linear_path
    )
    total = MotionVAE(config).num_parameters()
    rows, totals = {}, {}
    for line in result.output.splitlines():
        name, count = line.split()[0], line.split()[-1].replace(",", "")
        if line.startswith(("encoder", "decoder", "linear_")) and count.isdigit():
            (totals if " total " in line else rows)[name] = int(count)
    assert sum(rows.values()) == sum(totals.values()) == total
    assert ("linear_encoder" in rows and "linear_decoder" in rows) == linear_path
    assert f"total parameters: {total:,}" in result.output


def _conv_weights_contiguous(model: MotionVAE) -> MotionVAE:
    """A copy of `model` with every conv weight laid out contiguously, as before the layout
    for channels-last convs: the same weights, the old layout."""
    old = copy.deepcopy(model)
    for conv in (m for m in old.modules() if isinstance(m, CausalConv1d)):
        conv.weight = torch.nn.Parameter(conv.weight.detach().contiguous())
    return old


def test_conv_weights_are_kept_channels_last_with_the_same_numbers(small_model: MotionVAE) -> None:
    """Every causal conv's weight is laid out as conv2d on channels-last frames reads it (no
    copy per step); outputs and gradients are those of the same weights laid out contiguously,
    and state dicts load both ways (checkpoints written before)."""
    convs = [m for m in small_model.modules() if isinstance(m, CausalConv1d)]
    for conv in convs:
        assert conv.weight.unsqueeze(2).is_contiguous(memory_format=torch.channels_last)
        assert conv.kernel_size[0] == 1 or not conv.weight.is_contiguous()
    new, old = copy.deepcopy(small_model).train(), _conv_weights_contiguous(small_model).train()
    x = torch.randn(3, T_SMALL, FEATURE_DIM)
    outputs = []
    for model in (new, old):
        torch.manual_seed(1)  # the same sampling noise
        out = model(x)
        vae_loss(out["recon"], x, out["mean"], out["logvar"], lambda_kl=1e-4)[TOTAL].backward()
        outputs.append((out, {n: p.grad for n, p in model.named_parameters()}))
    (out_new, grads_new), (out_old, grads_old) = outputs
    for key in out_new:
        torch.testing.assert_close(out_new[key], out_old[key], rtol=1e-6, atol=1e-6)
    for name, grad in grads_new.items():
        assert grad.stride() == dict(new.named_parameters())[name].stride(), name
        torch.testing.assert_close(grad, grads_old[name], rtol=1e-5, atol=1e-6)

    loaded = MotionVAE(small_model.config)
    loaded.load_state_dict(old.state_dict())  # an old checkpoint into today's layout
    for conv in (m for m in loaded.modules() if isinstance(m, CausalConv1d)):
        assert conv.weight.unsqueeze(2).is_contiguous(memory_format=torch.channels_last)
    old.load_state_dict(new.state_dict())  # and back
    assert all(torch.equal(a, b) for a, b in zip(loaded.parameters(), new.parameters()))
