"""The latent store's root-attribute check: what is wrong, and what to run."""

from __future__ import annotations

import pytest

from train.latents import LATENT_SCHEMA, SCHEMA_VERSION, check_latent_attrs


def test_latent_attrs_check_names_what_is_wrong():
    good = {"schema": {"name": LATENT_SCHEMA, "version": SCHEMA_VERSION}, "complete": True}
    check_latent_attrs(good, "l.zarr")
    with pytest.raises(ValueError, match="expected a 'nymeria-motion-latents' store"):
        check_latent_attrs(
            {**good, "schema": {"name": "nymeria-feature-store", "version": 1}}, "l.zarr"
        )
    with pytest.raises(ValueError, match="schema version 99, this code reads version 2"):
        check_latent_attrs({**good, "schema": {"name": LATENT_SCHEMA, "version": 99}}, "l.zarr")
    with pytest.raises(ValueError, match="l.zarr is incomplete"):
        check_latent_attrs({**good, "complete": False}, "l.zarr")


def test_a_version_1_latent_store_is_refused_with_what_to_run():
    v1 = {"schema": {"name": LATENT_SCHEMA, "version": 1}, "complete": True}
    with pytest.raises(
        ValueError, match=r"version 1 \(one pass per whole sequence.*`train encode`"
    ):
        check_latent_attrs(v1, "old.zarr")
