"""A random-weight ViT tower saved to a local directory, for benchmarks comparing full-parameter
and LoRA training of the same tower without downloading a checkpoint."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch

from bench.models.image_encoders import ImageEncoderConfig
from bench.models.lora import LoraConfig
from bench.models.student import ModelConfig


def add_vit_arguments(parser: argparse.ArgumentParser) -> None:
    vit = parser.add_argument_group("--tower vit (a random-weight ViT, full vs LoRA)")
    vit.add_argument("--vit-hidden", type=int, default=192)
    vit.add_argument("--vit-layers", type=int, default=12)
    vit.add_argument("--vit-heads", type=int, default=3)
    vit.add_argument("--vit-patch", type=int, default=8)
    vit.add_argument("--vit-resolution", type=int, default=32, help="image size in px")
    vit.add_argument("--lora-rank", type=int, default=8)


def tower_models(args: argparse.Namespace, base: ModelConfig, directory: Path) -> dict[str, ModelConfig]:
    """Save a random-weight ViT to ``directory``; the full-parameter and the LoRA student on it."""
    from transformers import ViTConfig, ViTModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards" / "Loading weights" bars

    vit = ViTConfig(hidden_size=args.vit_hidden, num_hidden_layers=args.vit_layers,
                    num_attention_heads=args.vit_heads, intermediate_size=4 * args.vit_hidden,
                    image_size=args.vit_resolution, patch_size=args.vit_patch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        ViTModel(vit).save_pretrained(directory)
    encoder = ImageEncoderConfig(name="hf", path=str(directory))
    lora = LoraConfig(rank=args.lora_rank, alpha=2.0 * args.lora_rank)
    return {"full": replace(base, image_encoder=encoder),
            f"lora r{args.lora_rank}": replace(base, image_encoder=replace(encoder, lora=lora))}


def describe_vit(args: argparse.Namespace) -> str:
    tokens = (args.vit_resolution // args.vit_patch) ** 2 + 1
    return (f"ViT tower (random weights, eager attention) hidden {args.vit_hidden}, {args.vit_layers} layers, "
            f"{args.vit_heads} heads, patch {args.vit_patch}, {args.vit_resolution} px ({tokens} tokens)")
