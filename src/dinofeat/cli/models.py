"""``dinofeat models``: the registry, with parameter counts and what is cached locally (torch is not imported)."""

from __future__ import annotations

import argparse

from dinofeat.cli.common import add_debug_option
from dinofeat.models.registry import DEFAULT_MODEL, MODELS, timm_names


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "models",
        help="list the DINOv2 and DINOv3 models and whether their weights are cached",
        description="List the DINOv2 and DINOv3 backbones dinofeat knows, with their sizes and "
        "whether their weights are in a local cache. 'gated': the Hugging Face repo asks you "
        "to accept the model's licence first.",
    )
    add_debug_option(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    # lazy: huggingface_hub (the cache lookup) takes ~0.1 s to import; the table needs no torch
    from dinofeat.models.locations import cached_locally

    rows = [("name", "params", "patch", "registers", "dim", "cached", "gated", "hugging face repo", "timm name")]
    for spec in MODELS.values():
        name = spec.name + (" (default)" if spec.name == DEFAULT_MODEL else "")
        rows.append(
            (
                name,
                f"{spec.parameter_count / 1e6:.1f}M",
                str(spec.patch_size),
                str(spec.num_registers),
                str(spec.embed_dim),
                cached_locally(spec) or "no",
                "yes" if spec.gated else "no",
                spec.hf_repo,
                timm_names(spec)[0],
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    print(ALIAS_NOTE)
    return 0


#: The line under the table: which other names --model takes.
ALIAS_NOTE = (
    "--model also takes the hugging face repo or the timm name of a model (with or without timm's .tag; "
    "DINOv3 also timm's _qkvb names)"
)
