"""`nymeria-train` / `python -m train`: the trainer's command line."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator

import click
import torch
from torch import nn

from train.model import MotionVAE, MotionVAEConfig


@click.group()
def main() -> None:
    """Train and use the causal motion VAE on a Nymeria feature store."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")


def _table_rows(model: MotionVAE) -> Iterator[tuple[str, nn.Module]]:
    """The encoder's and decoder's layers in execution order, ModuleLists expanded."""
    for part_name in ("encoder", "decoder"):
        for name, child in getattr(model, part_name).named_children():
            if isinstance(child, nn.ModuleList):
                for i, layer in enumerate(child):
                    yield f"{part_name}.{name}.{i}", layer
            else:
                yield f"{part_name}.{name}", child


@main.command()
@click.option("--hidden", type=click.IntRange(min=1), help="Channels of the ResNet stages.")
@click.option("--latent", type=click.IntRange(min=1), help="Channels of a latent step.")
@click.option("--blocks", type=click.IntRange(min=1), help="ResNet blocks per stage.")
@click.option("--seq-len", type=click.IntRange(min=4), help="Window in frames, a multiple of 4.")
def describe(
    hidden: int | None, latent: int | None, blocks: int | None, seq_len: int | None
) -> None:
    """Print the layer table and parameter count of a MotionVAE (defaults unless overridden)."""
    overrides = {"hidden_dim": hidden, "latent_dim": latent, "blocks_per_stage": blocks,
                 "seq_len": seq_len}  # fmt: skip
    try:
        config = dataclasses.replace(
            MotionVAEConfig(), **{k: v for k, v in overrides.items() if v is not None}
        )
    except ValueError as e:
        raise click.UsageError(str(e)) from e
    model = MotionVAE(config).eval()

    rows = list(_table_rows(model))
    shapes: dict[nn.Module, str] = {}

    def record(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        _, T, C = output.shape
        shapes[module] = f"{T} x {C}"

    hooks = [module.register_forward_hook(record) for _, module in rows]
    with torch.no_grad():
        model(torch.zeros(1, config.seq_len, config.input_dim))
    for hook in hooks:
        hook.remove()

    click.echo(" ".join(f"{k}={v}" for k, v in dataclasses.asdict(config).items()))
    click.echo(f"{'module':<20} {'type':<16} {'output T x C':>14} {'params':>12}")
    click.echo(f"{'input':<20} {'frames':<16} {f'{config.seq_len} x {config.input_dim}':>14}")
    for name, module in rows:
        params = sum(p.numel() for p in module.parameters())
        click.echo(f"{name:<20} {type(module).__name__:<16} {shapes[module]:>14} {params:>12,}")
    for part_name in ("encoder", "decoder"):
        params = sum(p.numel() for p in getattr(model, part_name).parameters())
        click.echo(f"{part_name + ' total':<20} {'':<16} {'':>14} {params:>12,}")
    click.echo(f"total parameters: {model.num_parameters():,}")
