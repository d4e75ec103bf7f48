"""jepa-eval export: one encoder of a checkpoint as safetensors + a JSON model card, loadable by plain timm."""
from __future__ import annotations

import argparse

HELP = "export an encoder as safetensors + JSON model card (loads into timm's VisionTransformer)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="I-JEPA checkpoint file (official or this suite's)")
    p.add_argument("--encoder", choices=["target", "context"], default="target",
                   help="which encoder (the paper evaluates the target encoder)")
    p.add_argument("--out", required=True, help="folder for NAME-ENCODER.safetensors and NAME-ENCODER.json")
    p.add_argument("--num-heads", type=int, default=None, help="attention heads (default: from the width)")
    p.add_argument("--cache", default=None, help="feature cache folder (remembers checkpoint hashes)")


def run(args: argparse.Namespace) -> int:
    from ..export import export_encoder
    weights, card = export_encoder(args.checkpoint, args.encoder, args.out, args.num_heads, args.cache)
    print(f"{weights}\n{card}")
    return 0
