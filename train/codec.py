"""World motion <-> latents, window by window as the model was trained: `MotionCodec`.

The model only ever saw windows of `seq_len` frames (152 by default), each canonicalised at
its own first frame and normalised with the training store's statistics. The codec does
exactly that to any motion, so a recording minutes long is encoded in distribution:

1. world motion -> world features of the whole sequence, as a feature store holds them
   (`shared.features.sequence_features`; velocities need the previous frame);
2. windows of `window_frames` frames (default the checkpoint's `seq_len`) starting every
   `hop_frames` (default: a window, so every frame is in exactly one window); the last
   window is padded by repeating the sequence's last frame, as training pads short
   sequences, and its valid frames are recorded (`WindowPlan`);
3. each window canonicalised at its own first frame (`shared.features.canonicalize`) and
   normalised (`train.data.Normalizer`), exactly as `train.data.prepare_batch` does;
4. each window encoded in one pass; the model is in eval mode (posterior mean and
   log-variance, no sampling).

Decoding reverses it: latents -> canonical features per window -> world motion through the
window's canonical frame (`recon_to_world`: the one place where model output becomes world
motion) -> whole sequences. A frame covered by several windows (hop < window) is taken from
the earliest of them, where it sits furthest from the window start and so has the most past
context (the model is causal) (`OVERLAP_RULE`).

Live streams: `MotionStream` encodes world motion as it arrives, frame by frame, with the
model's streaming encoder re-anchored (canonical frame from the window's first frame, conv
state reset) at each window boundary; it gives the latents of the offline non-overlapping
encode, each latent as soon as its 4 frames have arrived.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared.errors import InputError
from shared.features import (
    CanonicalFrame,
    WorldMotion,
    apply_rigid,
    canonical_frame,
    canonicalize,
    decoded_to_world,
    sequence_features,
    uncanonicalize,
)
from shared.layout import FEATURE_DIM
from shared.skeleton import NUM_JOINTS
from train.checkpoint import Checkpoint
from train.data import Normalizer
from train.device import resolve_device
from train.inference import config_from_checkpoint, load_for_inference
from train.model import FRAMES_PER_LATENT, MotionVAE, latent_mask

PADDING_RULE = (
    "the last window of a sequence is padded to the window length by repeating the sequence's "
    "last frame; its valid frames are recorded, decode returns only those"
)
OVERLAP_RULE = (
    "a frame covered by several windows is taken from the earliest of them (the most past "
    "context for the causal model)"
)

DEFAULT_BATCH_WINDOWS = 64
"""Windows per model call: bounds memory on long recordings."""


@dataclass(frozen=True)
class WindowPlan:
    """Where the windows of a `num_frames`-long sequence lie: starts every `hop_frames`, until
    one reaches the last frame."""

    num_frames: int
    window_frames: int
    hop_frames: int

    def __post_init__(self) -> None:
        if self.num_frames < 1:
            raise InputError(f"a sequence to encode needs a frame or more, found {self.num_frames}")
        if self.window_frames < 1 or self.window_frames % FRAMES_PER_LATENT:
            raise InputError(
                f"window_frames must be a positive multiple of {FRAMES_PER_LATENT} (frames per "
                f"latent), found {self.window_frames}"
            )
        if not 1 <= self.hop_frames <= self.window_frames:
            raise InputError(
                f"hop_frames must be in 1..window_frames={self.window_frames} so that every frame "
                f"is in a window, found {self.hop_frames}"
            )

    @property
    def num_windows(self) -> int:
        return 1 + -(-max(self.num_frames - self.window_frames, 0) // self.hop_frames)

    @property
    def latents_per_window(self) -> int:
        return self.window_frames // FRAMES_PER_LATENT

    @property
    def first_frame(self) -> np.ndarray:
        """(W,) int64: each window's first frame in the sequence."""
        return np.arange(self.num_windows, dtype=np.int64) * self.hop_frames

    @property
    def valid_frames(self) -> np.ndarray:
        """(W,) int64: frames of each window inside the sequence; the rest is padding."""
        return np.minimum(self.window_frames, self.num_frames - self.first_frame)

    def frame_index(self) -> np.ndarray:
        """(W, window_frames): the sequence frame in each window slot; padding repeats the last."""
        slots = self.first_frame[:, None] + np.arange(self.window_frames)
        return np.minimum(slots, self.num_frames - 1)

    def frame_mask(self) -> np.ndarray:
        """(W, window_frames) bool, True on valid slots."""
        return np.arange(self.window_frames) < self.valid_frames[:, None]

    def latent_valid(self) -> np.ndarray:
        """(W, latents_per_window) bool: valid if any of its 4 frames is (as in training)."""
        return latent_mask(torch.from_numpy(self.frame_mask()), self.latents_per_window).numpy()

    def source_slot(self) -> tuple[np.ndarray, np.ndarray]:
        """(window, slot), each (num_frames,): where `join_windows` takes each frame from.

        The earliest window covering frame t, w = max(0, (t - window) // hop + 1) (`OVERLAP_RULE`).
        """
        t = np.arange(self.num_frames, dtype=np.int64)
        window = np.maximum((t - self.window_frames) // self.hop_frames + 1, 0)
        return window, t - window * self.hop_frames


def cut_windows(
    features_world: torch.Tensor, frame_index: np.ndarray
) -> tuple[torch.Tensor, CanonicalFrame]:
    """(B, T, 294) world features -> canonical windows (B, W, window, 294) and their frames
    (B, W, ...), for the rows of `WindowPlan.frame_index()` given; the training transform."""
    index = torch.as_tensor(frame_index, device=features_world.device)
    return canonicalize(features_world[:, index])  # (B, W, window, 294)


def join_windows(per_window: torch.Tensor, plan: WindowPlan) -> torch.Tensor:
    """(B, W, window, ...) per-window frames -> (B, T, ...) whole sequences (`OVERLAP_RULE`)."""
    window, slot = (torch.as_tensor(a, device=per_window.device) for a in plan.source_slot())
    return per_window[:, window, slot]


def recon_to_world(
    recon: torch.Tensor, frame: CanonicalFrame, head_blend: float = 0.0
) -> WorldMotion:
    """Decoded canonical features (..., T, 294) in physical units, and the canonical frame of
    their window (...) -> world motion (..., T, ...).

    Every conversion of model output to world motion goes through here (the codec, `train
    decode --world`): the window's motion is decoded in its canonical frame with the
    checkpoint's head blend (`shared.features.decoded_to_world`, as training and `train eval`
    decode it), then moved to the world by the inverse of `frame`.
    """
    motion = decoded_to_world(recon, head_blend)
    R_world_canon = frame.R_canon_world.transpose(-1, -2)[..., None, :, :]  # (..., 1, 3, 3)
    offset = frame.offset_world[..., None, :]  # (..., 1, 3)
    return WorldMotion(
        (R_world_canon @ motion.cpf_translation[..., None])[..., 0] + offset,
        R_world_canon @ motion.cpf_orientation,
        (R_world_canon[..., None, :, :] @ motion.joint_translation[..., None])[..., 0]
        + offset[..., None, :],
        R_world_canon[..., None, :, :] @ motion.joint_orientation,
    )


@dataclass(frozen=True)
class MotionLatents:
    """Latents of one sequence, or of a batch of sequences of equal length, window by window.

    Shapes: `mean`, `logvar` ([B,] W, K, L) with W = plan.num_windows and K = window / 4
    latents per window; `frame` holds R_canon_world ([B,] W, 3, 3) and offset_world ([B,] W, 3),
    with p_canon = R_canon_world @ (p_world - offset_world). Latents of a window's padded tail
    (`plan.latent_valid()` False) encode repeated frames only.
    """

    mean: torch.Tensor
    logvar: torch.Tensor | None  # None when read back from a store written without --logvar
    frame: CanonicalFrame
    plan: WindowPlan


_WORLD_FIELDS = ("cpf_translation", "cpf_orientation", "joint_translation", "joint_orientation")
_WORLD_SHAPES = ((3,), (3, 3), (NUM_JOINTS, 3), (NUM_JOINTS, 3, 3))  # per frame


def _motion_arrays(*motion: Any) -> list[np.ndarray]:
    """The four world motion arrays (numpy, or torch on any device) as numpy arrays that share
    their leading (batch, time) axes, or a ValueError with the shapes expected and found."""
    arrays = [
        m.detach().cpu().numpy() if isinstance(m, torch.Tensor) else np.asarray(m) for m in motion
    ]
    lead = arrays[0].shape[:-1]
    for array, shape in zip(arrays, _WORLD_SHAPES, strict=True):
        if array.shape != (*lead, *shape) or len(lead) not in (1, 2):
            expected = ", ".join(
                f"{name} ([B,] T, {', '.join(map(str, shape))})"
                for name, shape in zip(_WORLD_FIELDS, _WORLD_SHAPES)
            )
            found = ", ".join(f"{n} {tuple(a.shape)}" for n, a in zip(_WORLD_FIELDS, arrays))
            raise ValueError(f"world motion must be {expected}; found {found}")
    return arrays


def _join_frames(frames: list[CanonicalFrame], combine: Any) -> CanonicalFrame:
    """Per-window frames combined by `combine` (e.g. torch.stack) field by field."""
    return CanonicalFrame(
        combine([f.R_canon_world for f in frames]), combine([f.offset_world for f in frames])
    )


class MotionCodec:
    """A trained checkpoint as a codec between world motion and windowed latents.

    Owns the checkpoint's model, normalisation statistics, feature layout and canonical
    windows; inputs are numpy arrays or torch tensors (any device, any float dtype; the
    results are the same), outputs torch tensors on `device`.

        codec = MotionCodec.from_checkpoint("runs/x/checkpoints/best.pt", device="auto")
        latents = codec.encode_world(cpf_translation, cpf_orientation, joint_translation,
                                     joint_orientation)
        motion = codec.decode_world(latents)  # WorldMotion: joints, joint rotations, head pose
    """

    def __init__(
        self,
        model: MotionVAE,
        normalizer: Normalizer,
        checkpoint: Checkpoint | None = None,
        batch_windows: int = DEFAULT_BATCH_WINDOWS,
    ) -> None:
        self.model = model.eval()
        self.normalizer = normalizer
        self.checkpoint = checkpoint
        self.batch_windows = batch_windows
        self.device = next(model.parameters()).device
        self.window_frames = model.config.seq_len
        # How world motion is decoded, as the checkpoint was trained (0: the seed's decoding).
        self.head_blend = (
            config_from_checkpoint(checkpoint).train.decode_head_blend if checkpoint else 0.0
        )
        """Default window: the training window of the checkpoint."""

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "auto") -> MotionCodec:
        """Load `path` for inference; device `auto` picks CUDA, then MPS, then CPU."""
        torch_device = resolve_device(device) if isinstance(device, str) else torch.device(device)
        checkpoint, model, normalizer = load_for_inference(Path(path), torch_device)
        return cls(model, normalizer, checkpoint)

    def plan(
        self, num_frames: int, window_frames: int | None = None, hop_frames: int | None = None
    ) -> WindowPlan:
        """The windows of a sequence; window defaults to the training window, hop to the window."""
        window = self.window_frames if window_frames is None else window_frames
        return WindowPlan(num_frames, window, window if hop_frames is None else hop_frames)

    # --- encode -------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_world(
        self,
        cpf_translation: Any,
        cpf_orientation: Any,
        joint_translation: Any,
        joint_orientation: Any,
        window_frames: int | None = None,
        hop_frames: int | None = None,
    ) -> MotionLatents:
        """World motion of one whole sequence (T, ...) or a batch (B, T, ...), any T >= 1 ->
        latents. Arrays as in `shared.features.WorldMotion`: head (CPF) position (T, 3) and
        rotation (T, 3, 3), joint positions (T, 23, 3) and rotations (T, 23, 3, 3), Z up, metres."""
        motion = (cpf_translation, cpf_orientation, joint_translation, joint_orientation)
        features = sequence_features(*_motion_arrays(*motion))
        return self.encode_features(features, window_frames, hop_frames)

    @torch.no_grad()
    def encode_features(
        self, features_world: Any, window_frames: int | None = None, hop_frames: int | None = None
    ) -> MotionLatents:
        """World features of whole sequences as a store holds them, ([B,] T, 294) -> latents."""
        # Cast where the input lives, then move: MPS has no float64 to cast from.
        x = torch.as_tensor(features_world).to(dtype=torch.float32).to(self.device)
        if x.ndim not in (2, 3) or x.shape[-1] != FEATURE_DIM:
            raise ValueError(f"features must be ([B,] T, {FEATURE_DIM}), found {tuple(x.shape)}")
        batched = x.ndim == 3
        if not batched:
            x = x[None]
        plan = self.plan(x.shape[1], window_frames, hop_frames)
        B, K, L = x.shape[0], plan.latents_per_window, self.model.config.latent_dim
        frame_index = plan.frame_index()
        means, logvars, frames = [], [], []
        for rows in self._window_batches(plan):
            canonical, frame = cut_windows(x, frame_index[rows])  # (B, w, window, 294)
            w = canonical.shape[1]
            mean, logvar = self.model.encode(self.normalizer.normalize(canonical).flatten(0, 1))
            means.append(mean.view(B, w, K, L))
            logvars.append(logvar.view(B, w, K, L))
            frames.append(frame)
        frame = _join_frames(frames, lambda parts: torch.cat(parts, 1))
        latents = MotionLatents(torch.cat(means, 1), torch.cat(logvars, 1), frame, plan)
        return latents if batched else _unbatch(latents)

    # --- decode -------------------------------------------------------------------------------

    @torch.no_grad()
    def decode_canonical(self, latents: MotionLatents) -> torch.Tensor:
        """Latents -> decoded windows ([B,] W, window, 294): canonical features, physical units."""
        mean = latents.mean.to(self.device, torch.float32)
        batched = mean.ndim == 4
        if not batched:
            mean = mean[None]
        B, W, K, _ = mean.shape
        if K != latents.plan.latents_per_window or W != latents.plan.num_windows:
            raise ValueError(
                f"latents of shape {tuple(latents.mean.shape)} do not match their plan: "
                f"{latents.plan.num_windows} windows of {latents.plan.latents_per_window} latents"
            )
        parts = []
        for rows in self._window_batches(latents.plan):
            recon = self.model.decode(mean[:, rows].flatten(0, 1))  # (B * w, window, 294)
            parts.append(self.normalizer.denormalize(recon).view(B, -1, *recon.shape[1:]))
        recon = torch.cat(parts, 1)  # (B, W, window, 294)
        return recon if batched else recon[0]

    @torch.no_grad()
    def decode_world(self, latents: MotionLatents) -> WorldMotion:
        """Latents -> world motion of whole sequences, ([B,] T, ...) tensors (`recon_to_world`)."""
        motion = recon_to_world(
            self.decode_canonical(latents), self._frame_on_device(latents), self.head_blend
        )
        return WorldMotion(*(self._join(getattr(motion, name), latents) for name in _WORLD_FIELDS))

    @torch.no_grad()
    def decode_features(self, latents: MotionLatents) -> torch.Tensor:
        """Latents -> ([B,] T, 294) decoded features moved back to the world frame."""
        world = uncanonicalize(self.decode_canonical(latents), self._frame_on_device(latents))
        return self._join(world, latents)

    # --- streaming ----------------------------------------------------------------------------

    def stream(self) -> MotionStream:
        """A causal encoder of one live motion stream (non-overlapping training windows)."""
        return MotionStream(self)

    # --- helpers ------------------------------------------------------------------------------

    def _window_batches(self, plan: WindowPlan) -> Iterator[slice]:
        for start in range(0, plan.num_windows, self.batch_windows):
            yield slice(start, start + self.batch_windows)

    def _frame_on_device(self, latents: MotionLatents) -> CanonicalFrame:
        frame = latents.frame
        return CanonicalFrame(
            torch.as_tensor(frame.R_canon_world, dtype=torch.float32, device=self.device),
            torch.as_tensor(frame.offset_world, dtype=torch.float32, device=self.device),
        )

    @staticmethod
    def _join(per_window: torch.Tensor, latents: MotionLatents) -> torch.Tensor:
        if latents.mean.ndim == 4:
            return join_windows(per_window, latents.plan)
        return join_windows(per_window[None], latents.plan)[0]


def _unbatch(latents: MotionLatents) -> MotionLatents:
    frame = CanonicalFrame(latents.frame.R_canon_world[0], latents.frame.offset_world[0])
    return MotionLatents(latents.mean[0], latents.logvar[0], frame, latents.plan)


class MotionStream:
    """Causal encoding of one live motion stream, window by window as `MotionCodec.encode_world`.

    `push` takes the next frames (t >= 1 of them, any t) of world motion and returns the
    latents they complete: a latent is out as soon as its 4 frames are in. Windows are the
    codec's training windows, back to back (hop = window): at each window's first frame the
    stream takes that frame's canonical frame (`frames[w]`) and resets the model's conv state,
    so latent i belongs to window i // K (K = window / 4) and equals the offline encode's.
    `close` pads the last window by repeating the last frame, as the offline encode does, and
    returns its remaining latents; `latents()` then gives everything as `MotionLatents`.
    """

    def __init__(self, codec: MotionCodec) -> None:
        self.codec = codec
        self.window_frames = codec.window_frames
        self.frames: list[CanonicalFrame] = []  # per window, tensors (3, 3) and (3,)
        self.num_frames = 0
        self._encoder = codec.model.stream_encoder()
        self._previous: list[np.ndarray] | None = None  # last frame of motion, for velocities
        # Normalised canonical frames not yet encoded (fewer than 4), and the last one (padding).
        self._pending = torch.empty(1, 0, FEATURE_DIM, device=codec.device)
        self._last: torch.Tensor | None = None
        self._in_window = 0  # frames of the current window pushed so far
        self._means: list[torch.Tensor] = []
        self._logvars: list[torch.Tensor] = []
        self._closed = False

    @torch.no_grad()
    def push(
        self,
        cpf_translation: Any,
        cpf_orientation: Any,
        joint_translation: Any,
        joint_orientation: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (t, ...) frames of world motion -> (mean, logvar) of the n latents they
        complete, each (n, L); n may be 0."""
        if self._closed:
            raise RuntimeError("push after close: start a new stream with codec.stream()")
        motion = (cpf_translation, cpf_orientation, joint_translation, joint_orientation)
        arrays = _motion_arrays(*motion)
        if arrays[0].ndim != 2 or arrays[0].shape[0] < 1:
            found = arrays[0].shape
            raise ValueError(f"push takes (t, ...) frames of one stream, t >= 1; found {found}")
        if self._previous is not None:  # gives the first new frame its velocities, then is dropped
            arrays = [np.concatenate([p, a]) for p, a in zip(self._previous, arrays, strict=True)]
        features = sequence_features(*arrays)[0 if self._previous is None else 1 :]
        self._previous = [a[-1:] for a in arrays]
        return self._push_features(torch.as_tensor(features, device=self.codec.device))

    @torch.no_grad()
    def close(self) -> tuple[torch.Tensor, torch.Tensor]:
        """End of the stream: the last window padded by repeating its last frame -> its latents."""
        if self._closed or self.num_frames == 0:
            raise RuntimeError("close needs an open stream with at least one frame pushed")
        self._closed = True
        if not self._in_window:
            return self._no_latents()
        padding = self._last.expand(1, self.window_frames - self._in_window, FEATURE_DIM)
        return self._emit(*self._encoder(torch.cat([self._pending, padding], 1)))

    def latents(self) -> MotionLatents:
        """All latents of the closed stream, as `MotionCodec.encode_world` gives them offline."""
        if not self._closed:
            raise RuntimeError("latents() needs a closed stream: call close() first")
        plan = WindowPlan(self.num_frames, self.window_frames, self.window_frames)
        W, K = plan.num_windows, plan.latents_per_window
        frame = _join_frames(self.frames, torch.stack)
        mean, logvar = (torch.cat(parts).view(W, K, -1) for parts in (self._means, self._logvars))
        return MotionLatents(mean, logvar, frame, plan)

    def _push_features(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        means, logvars = [], []
        while len(features):
            if self._in_window == 0:  # a new window: anchor it at this frame, forget the past
                frame = canonical_frame(features[None, :1])
                self.frames.append(CanonicalFrame(frame.R_canon_world[0], frame.offset_world[0]))
                self._encoder.reset()
            take = min(len(features), self.window_frames - self._in_window)
            part, features = features[:take], features[take:]
            frame = self.frames[-1]
            canonical = apply_rigid(part[None], frame.R_canon_world[None], frame.offset_world[None])
            normalised = self.codec.normalizer.normalize(canonical)  # (1, take, 294)
            self._pending = torch.cat([self._pending, normalised], 1)
            self._last = normalised[:, -1:]
            self._in_window = (self._in_window + take) % self.window_frames
            self.num_frames += take
            ready = self._pending.shape[1] // FRAMES_PER_LATENT * FRAMES_PER_LATENT
            if ready:
                mean, logvar = self._emit(*self._encoder(self._pending[:, :ready]))
                self._pending = self._pending[:, ready:]
                means.append(mean)
                logvars.append(logvar)
        return (torch.cat(means), torch.cat(logvars)) if means else self._no_latents()

    def _no_latents(self) -> tuple[torch.Tensor, torch.Tensor]:
        empty = torch.empty(0, self.codec.model.config.latent_dim, device=self.codec.device)
        return empty, empty

    def _emit(self, mean: torch.Tensor, logvar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._means.append(mean[0])
        self._logvars.append(logvar[0])
        return mean[0], logvar[0]
