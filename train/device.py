"""The torch device a command runs on: `auto` or an explicit name (training and inference)."""

from __future__ import annotations

import torch

from shared.errors import InputError


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """`auto` -> CUDA, then MPS, then CPU; an explicit name must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' requested but torch.cuda.is_available() is False")
    if name == "mps" and not torch.backends.mps.is_available():
        raise InputError("device 'mps' requested but MPS is not available")
    return torch.device(name, local_rank) if name == "cuda" else torch.device(name)
