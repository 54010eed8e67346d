"""The latent store's root-attribute check: what is wrong, and what to run."""

from __future__ import annotations

import pytest

from train.latents import LATENT_SCHEMA, SCHEMA_VERSION, check_latent_attrs


def test_latent_attrs_check_names_what_is_wrong():
    good = {"schema": {"name": LATENT_SCHEMA, "version": SCHEMA_VERSION}, "complete": True}
    check_latent_attrs(good, "l.zarr")
    with pytest.raises(ValueError, match="is not a 'nymeria-motion-latents' store"):
        check_latent_attrs(
            {**good, "schema": {"name": "nymeria-feature-store", "version": 1}}, "l.zarr"
        )
    with pytest.raises(ValueError, match="schema version 99, this code reads version 3"):
        check_latent_attrs({**good, "schema": {"name": LATENT_SCHEMA, "version": 99}}, "l.zarr")
    with pytest.raises(ValueError, match="l.zarr is incomplete"):
        check_latent_attrs({**good, "complete": False}, "l.zarr")


@pytest.mark.parametrize(
    ("version", "why"),
    [(1, r"one pass per whole sequence"), (2, r"its sequence table in string arrays")],
)
def test_an_older_latent_store_is_refused_with_what_to_run(version, why):
    old = {"schema": {"name": LATENT_SCHEMA, "version": version}, "complete": True}
    with pytest.raises(ValueError, match=rf"version {version} \({why}.*`train encode`"):
        check_latent_attrs(old, "old.zarr")
