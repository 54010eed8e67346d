"""Feature store -> causal motion VAE. Imports neither h5py nor hdf5plugin."""

from train.codec import MotionCodec, MotionLatents, MotionStream
from train.model import MotionVAE, MotionVAEConfig

__all__ = ["MotionCodec", "MotionLatents", "MotionStream", "MotionVAE", "MotionVAEConfig"]
