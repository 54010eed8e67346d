"""Test-wide settings: deterministic hypothesis profile and one compute thread per process.

The suite runs small models on a 2-core machine, often beside subprocesses (Dask
workers, torchrun ranks); OpenMP threads spinning against each other there make small
CPU ops an order of magnitude slower, so every test process computes on one thread.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the subprocesses tests start

import torch
from hypothesis import HealthCheck, settings

torch.set_num_threads(1)

settings.register_profile(
    "ci", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("ci")
