"""Feature store -> causal motion VAE. Imports neither h5py nor hdf5plugin."""

from train.model import MotionVAE, MotionVAEConfig

__all__ = ["MotionVAE", "MotionVAEConfig"]
