"""Causal 1D-convolutional motion VAE: (B, T, 294) frames <-> (B, T/4, latent) Gaussians.

Causality contract (docs/design.md "Model and causality"), with F = FRAMES_PER_LATENT = 4:

* latent k depends only on input frames < F * (k + 1);
* output frame t depends only on latents <= t // F;
* every input frame, the last ones included, reaches some latent;
* no layer pools statistics over time: norms are per frame, over channels.

Every temporal layer is a `CausalConv1d`: its left context is zeros at the start of a
sequence, and there is no right context. Downsampling is a stride-2 causal conv whose
step i ends at frame 2i+1; upsampling is a causal conv at the low rate that emits both
frames of a step (frames 2i, 2i+1 from steps <= i). The left context can instead come from a
`ConvCache` holding the end of the previous chunk, which is how `StreamingEncoder` and
`StreamingDecoder` continue a sequence chunk by chunk and get the numbers of a
whole-sequence pass.

Beside the conv stacks, `linear_path` (default on) adds a linear map from each latent's own 4
frames to its moments and from latents to frames: latent k's 4 frames read latent k and the
`linear_decoder_kernel` - 1 latents before it (a causal conv over latents, so neighbouring
blocks can join). Neither reads a later frame or latent, so the contract above holds
unchanged; the decoder's map streams through the `ConvCache` like the conv stacks.

Layout: activations are (B, T, C) throughout, like the data code, so LayerNorm, the
residual adds and the upsampler's interleave work on contiguous memory. The one switch
to convolution layout is inside `CausalConv1d.forward`, and it is free: see there.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import TypedDict

import torch
import torch.nn.functional as F
from torch import nn

from shared.layout import FEATURE_DIM

logger = logging.getLogger(__name__)

NUM_DOWNSAMPLES = 2
FRAMES_PER_LATENT = 2**NUM_DOWNSAMPLES  # 4: each stride-2 stage halves the frame rate

# Left context of each CausalConv1d while streaming, keyed by the conv module itself.
ConvCache = dict[nn.Module, torch.Tensor]


def latent_mask(mask: torch.Tensor, num_latents: int) -> torch.Tensor:
    """(B, T) frame mask -> (B, num_latents): a latent is valid if any of its 4 frames is.

    T may be short of 4 * num_latents (a sequence padded by `encode_sequence`); the
    missing frames count as padding.
    """
    B, T = mask.shape
    if not FRAMES_PER_LATENT * (num_latents - 1) < T <= FRAMES_PER_LATENT * num_latents:
        raise ValueError(
            f"a mask of {T} frames does not match {num_latents} latents "
            f"({FRAMES_PER_LATENT} frames per latent)"
        )
    padded = mask.new_zeros(B, FRAMES_PER_LATENT * num_latents)
    padded[:, :T] = mask
    return padded.view(B, num_latents, FRAMES_PER_LATENT).any(dim=2)  # (B, N)


@dataclass(frozen=True)
class MotionVAEConfig:
    """Architecture and KL weight of `MotionVAE`; stored in checkpoints via `dataclasses.asdict`."""

    input_dim: int = FEATURE_DIM
    """Features per frame: the 294-D head-centric vector of `shared.layout`."""
    hidden_dim: int = 512
    """Channels of every ResNet stage, in the encoder and the decoder."""
    latent_dim: int = 768
    """Channels of a latent step; one step summarises FRAMES_PER_LATENT = 4 frames."""
    blocks_per_stage: int = 2
    """ResNet blocks at each of the three frame rates (T, T/2, T/4)."""
    kernel_size: int = 3
    """Temporal kernel of the ResNet convs and input projections (reads kernel_size - 1 past)."""
    seq_len: int = 152
    """Training window in frames, a multiple of 4 (frames per latent); also the window `train
    encode` cuts sequences into unless given --window."""
    lambda_kl: float = 1e-4
    """Weight of the KL term in the training loss."""
    logvar_clamp: float = 10.0
    """The encoder's log-variance is clamped to [-logvar_clamp, logvar_clamp]."""
    linear_path: bool = True
    """Add a linear map from each latent's 4 frames to its moments (encoder) and from each latent
    to its 4 frames (decoder) to the conv stacks: a path that passes values through without the
    stacks' per-frame LayerNorms, which keep only the direction of a hidden vector (off: the
    seed's architecture; chosen by `python -m benchmarks quality`, see BENCHMARKS.md)."""
    linear_decoder_kernel: int = 2
    """Latents the decoder's linear path reads for each latent's 4 frames: its own and the
    kernel - 1 before it (a causal conv over latents), so that neighbouring 4-frame blocks can
    join; 1 reads its own latent only (the linear path of runs saved before this field; 2 was
    chosen by `python -m benchmarks quality --data real`, see BENCHMARKS.md)."""

    decoder_out_kernel: int = 1
    """Frames the decoder's output projection reads: the frame's own last hidden state and the
    kernel - 1 before it (a causal conv at the frame rate, across the 4-frame seams); 1, a
    per-frame projection, is the seed's (and every run's saved before the field)."""

    def __post_init__(self) -> None:
        for name in (
            "input_dim",
            "hidden_dim",
            "latent_dim",
            "blocks_per_stage",
            "kernel_size",
            "seq_len",
            "linear_decoder_kernel",
            "decoder_out_kernel",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"MotionVAEConfig.{name} must be a positive int, found {value!r}")
        if self.seq_len % FRAMES_PER_LATENT:
            raise ValueError(
                f"MotionVAEConfig.seq_len must be a multiple of {FRAMES_PER_LATENT} "
                f"(frames per latent), found {self.seq_len}"
            )
        if not self.lambda_kl >= 0:  # also refuses NaN
            raise ValueError(f"MotionVAEConfig.lambda_kl must be >= 0, found {self.lambda_kl}")
        if not self.logvar_clamp > 0:
            raise ValueError(f"MotionVAEConfig.logvar_clamp must be > 0, found {self.logvar_clamp}")

    @property
    def num_latents(self) -> int:
        """Latent steps per training window."""
        return self.seq_len // FRAMES_PER_LATENT


class CausalConv1d(nn.Conv1d):
    """Conv1d on (B, T, C) frames that sees only the present and the past.

    Output step i of a stride-s conv ends its receptive field at input frame s*i + s - 1,
    the last frame of its own stride window, and needs `context` = kernel - s frames
    before that window. Those come from zeros at the start of a sequence or, when a
    `cache` is passed, from the end of the previous chunk; so chunked and whole passes
    agree whenever chunk lengths are multiples of the stride.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
        if kernel_size < stride:
            raise ValueError(
                f"CausalConv1d needs kernel_size >= stride so every frame is read, "
                f"found kernel_size={kernel_size}, stride={stride}"
            )
        super().__init__(in_channels, out_channels, kernel_size, stride=stride)
        self.context = kernel_size - stride
        # The weight is kept as conv2d on channels-last frames reads it: (C_out, C_in, K) with
        # the input channels fastest, so `weight.unsqueeze(2)` is a channels-last (C_out, C_in,
        # 1, K) kernel as it is, and its gradient arrives in the parameter's own layout. A
        # contiguous weight was copied three times per conv and step (into channels-last for
        # the forward and the backward, and its gradient back): ~10% of a CPU step. Names,
        # shapes and values are the same, so checkpoints load either way.
        self.weight = nn.Parameter(_channels_fastest(self.weight.detach()))

    def forward(self, x: torch.Tensor, cache: ConvCache | None = None) -> torch.Tensor:
        T = x.shape[1]
        stride = self.stride[0]
        if T % stride:
            raise ValueError(
                f"CausalConv1d with stride {stride} needs T % {stride} == 0, found T={T}"
            )
        if self.context:  # kernel == stride reads only its own window: nothing to carry
            x = self._prepend_context(x, cache)  # (B, context + T, C)
        # The model's one layout switch. (B, T, C) memory *is* a channels-last (B, C, 1, T)
        # tensor, so conv2d with a (1, K) kernel reads and writes it in place; Conv1d on a
        # transposed view would copy every activation twice per layer.
        x = x.transpose(1, 2).unsqueeze(2)  # (B, C, 1, T), same memory
        y = F.conv2d(x, self.weight.unsqueeze(2), self.bias, stride=(1, stride))
        return y.squeeze(2).transpose(1, 2)  # (B, T / stride, C_out)

    def _prepend_context(self, x: torch.Tensor, cache: ConvCache | None) -> torch.Tensor:
        past = None if cache is None else cache.get(self)
        if past is None:  # the start of a sequence (or of a stream): zeros
            past = x.new_zeros(x.shape[0], self.context, x.shape[2])
        # cat writes every element once; F.pad would fill the whole result with zeros first.
        x = torch.cat([past, x], dim=1)
        if cache is not None:
            cache[self] = x[:, x.shape[1] - self.context :]
        return x


def _channels_fastest(weight: torch.Tensor) -> torch.Tensor:
    """A (C_out, C_in, K) conv weight, same values, laid out (C_out, K, C_in) in memory."""
    return weight.permute(0, 2, 1).contiguous().permute(0, 2, 1)


class ResNetBlock1D(nn.Module):
    """Pre-activation residual block: x + conv(act(norm(conv(act(norm(x)))))), all causal.

    LayerNorm over the channels of each frame: unlike GroupNorm it pools nothing over time.
    """

    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(channels)
        self.conv1 = CausalConv1d(channels, channels, kernel_size)
        self.norm2 = nn.LayerNorm(channels)
        self.conv2 = CausalConv1d(channels, channels, kernel_size)

    def forward(self, x: torch.Tensor, cache: ConvCache | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)), cache)
        h = self.conv2(F.silu(self.norm2(h)), cache)
        return x + h


class CausalDownsample(nn.Module):
    """Halve the frame rate: step i reads frames 2i-2 .. 2i+1, never a later frame.

    Kernel 4, stride 2, 2 frames of left context: the pair (2i, 2i+1) always lands in
    step i, so the last frame of an even-length sequence is read too.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv = CausalConv1d(channels, channels, kernel_size=4, stride=2)

    def forward(self, x: torch.Tensor, cache: ConvCache | None = None) -> torch.Tensor:
        return self.conv(x, cache)  # (B, T/2, C)


class CausalUpsample(nn.Module):
    """Double the frame rate: frames 2i and 2i+1 are both computed from steps <= i.

    A causal conv at the low rate emits two frames' worth of channels per step, which
    are interleaved into time (sub-pixel / polyphase upsampling). This is the general
    form of "repeat each step twice, then causal conv" without the wasted work on
    repeated frames: at equal size it costs what the old transposed conv cost, but
    never looks ahead. Both phases start with the same weights, so at init the layer
    is exactly a nearest-neighbour repeat of a causal conv (no checkerboard pattern).
    """

    def __init__(self, channels: int, kernel_size: int = 2):
        super().__init__()
        self.conv = CausalConv1d(channels, 2 * channels, kernel_size)
        with torch.no_grad():
            # Output channel p*C + c is channel c of phase p (matches the reshape in forward).
            weight = self.conv.weight.view(2, channels, channels, kernel_size)
            weight[1] = weight[0]
            bias = self.conv.bias.view(2, channels)
            bias[1] = bias[0]

    def forward(self, x: torch.Tensor, cache: ConvCache | None = None) -> torch.Tensor:
        B, T, C = x.shape
        y = self.conv(x, cache)  # (B, T, 2C)
        return y.reshape(B, 2 * T, C)  # frame 2i + p = phase p of step i


class _LinearPath(nn.Linear):
    """The `linear_path` of `MotionVAEConfig`: starts at zero, so at init the model is its conv
    stacks alone. Reads one step only, so it carries nothing while streaming."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features)
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor, cache: ConvCache | None = None) -> torch.Tensor:
        return super().forward(x)


class _CausalLinearPath(CausalConv1d):
    """The decoder's linear path with `linear_decoder_kernel` > 1: step k reads steps
    k - kernel + 1 .. k (a causal conv, so it streams through a `ConvCache`); starts at zero."""

    def __init__(self, in_features: int, out_features: int, kernel_size: int):
        super().__init__(in_features, out_features, kernel_size)
        with torch.no_grad():
            self.weight.zero_()  # in place: keeps CausalConv1d's weight layout
            self.bias.zero_()


def _linear_decoder(config: MotionVAEConfig) -> nn.Module:
    """Latent (B, N, L) -> each latent's 4 frames, flat (B, N, 4 * input_dim)."""
    frames_dim = FRAMES_PER_LATENT * config.input_dim
    if config.linear_decoder_kernel == 1:  # an nn.Linear, as in checkpoints from before the field
        return _LinearPath(config.latent_dim, frames_dim)
    return _CausalLinearPath(config.latent_dim, frames_dim, config.linear_decoder_kernel)


def _init_output_projection(conv: nn.Conv1d) -> None:
    # Small outputs at init: the posterior starts at N(~0, ~1) (KL ~ 0), the recon at ~0.
    nn.init.normal_(conv.weight, mean=0.0, std=0.01)
    nn.init.zeros_(conv.bias)


def _stages(
    channels: int, blocks: int, kernel_size: int, resample: type[nn.Module]
) -> nn.ModuleList:
    """Blocks at rate 1, resample, blocks, resample, blocks: three rates, NUM_DOWNSAMPLES steps."""
    layers: list[nn.Module] = []
    for stage in range(NUM_DOWNSAMPLES + 1):
        if stage:
            layers.append(resample(channels))
        layers.extend(ResNetBlock1D(channels, kernel_size) for _ in range(blocks))
    return nn.ModuleList(layers)


class _CausalConvStack(nn.Module):
    """in_proj -> three-rate ResNet stages with `resample` between them -> norm, SiLU -> out_proj.

    The encoder and the decoder are this stack with opposite resampling; out_proj starts
    near zero (`_init_output_projection`).
    """

    def __init__(
        self,
        config: MotionVAEConfig,
        in_dim: int,
        out_dim: int,
        resample: type[nn.Module],
        out_kernel: int = 1,
    ):
        super().__init__()
        C = config.hidden_dim
        self.in_proj = CausalConv1d(in_dim, C, config.kernel_size)
        self.layers = _stages(C, config.blocks_per_stage, config.kernel_size, resample)
        self.norm_out = nn.LayerNorm(C)
        self.out_proj = CausalConv1d(C, out_dim, kernel_size=out_kernel)
        _init_output_projection(self.out_proj)

    def forward(self, x: torch.Tensor, cache: ConvCache | None = None) -> torch.Tensor:
        h = self.in_proj(x, cache)  # (B, T_in, C)
        for layer in self.layers:
            h = layer(h, cache)  # (B, T_out, C): T/4 in the encoder, 4N in the decoder
        return self.out_proj(F.silu(self.norm_out(h)), cache)  # (B, T_out, out_dim)


class MotionEncoder(_CausalConvStack):
    """(B, T, input_dim) frames -> (B, T/4, 2 * latent_dim): mean and logvar per latent step."""

    def __init__(self, config: MotionVAEConfig):
        super().__init__(config, config.input_dim, 2 * config.latent_dim, CausalDownsample)


class MotionDecoder(_CausalConvStack):
    """(B, N, latent_dim) latents -> (B, 4N, input_dim) frames."""

    def __init__(self, config: MotionVAEConfig):
        super().__init__(
            config,
            config.latent_dim,
            config.input_dim,
            CausalUpsample,
            out_kernel=config.decoder_out_kernel,
        )


class VAEOutput(TypedDict):
    recon: torch.Tensor  # (B, T, D)
    mean: torch.Tensor  # (B, T/4, L)
    logvar: torch.Tensor  # (B, T/4, L)
    z: torch.Tensor  # (B, T/4, L)


class MotionVAE(nn.Module):
    """Causal motion VAE. `model(x)` on (B, T, D) frames, T a multiple of 4, returns `VAEOutput`.

    In training mode z is sampled by reparameterisation; in eval mode z is the mean, so
    evaluation and encoding are deterministic.
    """

    def __init__(self, config: MotionVAEConfig | None = None):
        super().__init__()
        self.config = config if config is not None else MotionVAEConfig()
        self.encoder = MotionEncoder(self.config)
        self.decoder = MotionDecoder(self.config)
        if self.config.linear_path:
            frames_dim = FRAMES_PER_LATENT * self.config.input_dim  # a latent's 4 frames, flat
            self.linear_encoder = _LinearPath(frames_dim, 2 * self.config.latent_dim)
            self.linear_decoder = _linear_decoder(self.config)
        logger.debug(
            "MotionVAE %s: %d parameters", dataclasses.asdict(self.config), self.num_parameters()
        )

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _check_frames(self, x: torch.Tensor) -> None:
        if x.ndim != 3 or x.shape[2] != self.config.input_dim:
            raise ValueError(
                f"expected frames of shape (B, T, {self.config.input_dim}), found {tuple(x.shape)}"
            )
        if x.shape[1] % FRAMES_PER_LATENT:
            raise ValueError(
                f"T must be a multiple of {FRAMES_PER_LATENT} frames per latent, found "
                f"T={x.shape[1]}; use encode_sequence for other lengths"
            )

    def _check_latents(self, z: torch.Tensor) -> None:
        if z.ndim != 3 or z.shape[2] != self.config.latent_dim:
            raise ValueError(
                f"expected latents of shape (B, N, {self.config.latent_dim}), "
                f"found {tuple(z.shape)}"
            )

    def _split_moments(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = h.chunk(2, dim=-1)  # (B, N, L) each
        c = self.config.logvar_clamp
        return mean, logvar.clamp(-c, c)

    def encode(
        self, x: torch.Tensor, cache: ConvCache | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, D) frames, T % 4 == 0 -> (mean, logvar), each (B, T/4, L).

        With a `cache` (a dict, empty at the start of a sequence) `x` continues the frames
        of earlier calls with the same cache: each causal conv takes its left context from
        the cache and leaves its own there, so encoding a sequence chunk by chunk gives the
        latents of one whole pass (the streaming API; `StreamingEncoder` wraps it).
        """
        self._check_frames(x)
        h = self.encoder(x, cache)  # (B, T/4, 2L)
        if self.config.linear_path:  # latent k reads frames 4k..4k+3 only: causal, no context
            B, T, D = x.shape
            h = h + self.linear_encoder(x.reshape(B, T // FRAMES_PER_LATENT, FRAMES_PER_LATENT * D))
        return self._split_moments(h)

    def reparameterize(self, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return mean
        return mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)

    def decode(self, z: torch.Tensor, cache: ConvCache | None = None) -> torch.Tensor:
        """(B, N, L) latents -> (B, 4N, D) frames; `cache` continues a stream as in `encode`."""
        self._check_latents(z)
        y = self.decoder(z, cache)  # (B, 4N, D)
        if self.config.linear_path:  # frames 4k..4k+3 read latents k - kernel + 1 .. k
            y = y + self.linear_decoder(z, cache).reshape(y.shape)
        return y

    def forward(self, x: torch.Tensor, preprocess: bool = False) -> VAEOutput:
        """Normalised canonical frames (B, T, D) -> `VAEOutput`.

        `preprocess=False` is accepted for the seed's quick start, `model(x, preprocess=False)`.
        The model never computes features itself: world motion goes through `train.MotionCodec`,
        which owns the feature computation, canonical windows and normalisation.
        """
        if preprocess:
            raise ValueError(
                "MotionVAE takes normalised canonical feature windows and has no preprocessing; "
                "for world motion use the codec: `from train import MotionCodec; codec = "
                "MotionCodec.from_checkpoint(path); latents = codec.encode_world(cpf_translation, "
                "cpf_orientation, joint_translation, joint_orientation)`"
            )
        mean, logvar = self.encode(x)
        z = self.reparameterize(mean, logvar)
        return VAEOutput(recon=self.decode(z), mean=mean, logvar=logvar, z=z)

    @torch.no_grad()
    def sample(
        self, n: int, num_latents: int | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Decode n draws from the N(0, I) prior: (n, 4 * num_latents, D) frames.

        num_latents defaults to one training window (config.seq_len / 4). A generator,
        if given, must live on the model's device.
        """
        num_latents = self.config.num_latents if num_latents is None else num_latents
        p = next(self.parameters())
        z = torch.randn(
            n,
            num_latents,
            self.config.latent_dim,
            generator=generator,
            device=p.device,
            dtype=p.dtype,
        )
        return self.decode(z)

    def encode_sequence(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode (B, T, D) frames of any length T >= 1 -> (mean, logvar), each (B, ceil(T/4), L).

        The tail is right-padded to a multiple of 4 by repeating the last frame. Only the
        last latent reads padded frames; causality keeps every earlier latent exactly what
        `encode` gives on the unpadded prefix.
        """
        B, T, D = x.shape
        if T < 1:
            raise ValueError("encode_sequence needs at least one frame, found T=0")
        pad = -T % FRAMES_PER_LATENT
        if pad:
            x = torch.cat([x, x[:, -1:].expand(B, pad, D)], dim=1)  # (B, T + pad, D)
        return self.encode(x)

    def decode_sequence(self, z: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Decode (B, N, L) latents to (B, num_frames, D), with 4(N-1) < num_frames <= 4N.

        The inverse of `encode_sequence`: decodes 4N frames and drops the padded tail.
        """
        N = z.shape[1]
        if not FRAMES_PER_LATENT * (N - 1) < num_frames <= FRAMES_PER_LATENT * N:
            raise ValueError(
                f"{N} latents decode to {FRAMES_PER_LATENT * (N - 1) + 1}.."
                f"{FRAMES_PER_LATENT * N} frames, asked for num_frames={num_frames}"
            )
        return self.decode(z)[:, :num_frames]

    def stream_encoder(self) -> StreamingEncoder:
        return StreamingEncoder(self)

    def stream_decoder(self) -> StreamingDecoder:
        return StreamingDecoder(self)


class StreamingEncoder:
    """Encode a sequence chunk by chunk, chunks of 4m frames -> m latents each.

    Each causal conv's left context is carried in a `ConvCache`, so the concatenated
    outputs equal `MotionVAE.encode` on the whole sequence (up to float rounding).
    Meant for inference: wrap calls in `torch.no_grad()`, or the cache keeps the graph
    of every chunk alive.
    """

    def __init__(self, model: MotionVAE):
        self.model = model
        self.cache: ConvCache = {}

    def reset(self) -> None:
        """Forget the past: the next chunk starts a new sequence."""
        self.cache = {}

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 4m, D) frames -> (mean, logvar), each (B, m, L)."""
        return self.model.encode(x, self.cache)


class StreamingDecoder:
    """Decode latents chunk by chunk, m latents -> 4m frames each; see `StreamingEncoder`."""

    def __init__(self, model: MotionVAE):
        self.model = model
        self.cache: ConvCache = {}

    def reset(self) -> None:
        """Forget the past: the next chunk starts a new sequence."""
        self.cache = {}

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """(B, m, L) latents -> (B, 4m, D) frames."""
        return self.model.decode(z, self.cache)
