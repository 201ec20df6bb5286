"""The table of DINOv2 backbones: architecture, preprocessing and where their weights come from.

Adding a model is one entry in :data:`MODELS`.

>>> spec = get_spec("dinov2_vits14")
>>> spec.embed_dim, spec.depth, spec.patch_size, spec.num_registers
(384, 12, 14, 0)
>>> get_spec("dinov2_vitg14_reg").ffn
'swiglu'
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Literal

from dinofeat.errors import UnknownModelError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_MODEL = "dinov2_vits14"
_META_URL = "https://dl.fbaipublicfiles.com/dinov2"


@dataclass(frozen=True)
class ModelSpec:
    """One DINOv2 backbone.

    Weight sources are tried in this order: an explicit file, ``checkpoint_file`` in the torch hub
    cache, ``hf_repo`` on the Hugging Face hub, then ``url``.
    """

    name: str
    arch: str  # "vit_small" | "vit_base" | "vit_large" | "vit_giant2"
    embed_dim: int
    depth: int
    num_heads: int
    ffn: Literal["mlp", "swiglu"]
    num_registers: int
    hf_repo: str
    patch_size: int = 14
    pos_grid: int = 37  # the positional embedding covers 37x37 patches (518 px)
    mlp_ratio: float = 4.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def checkpoint_file(self) -> str:
        """File name of the official checkpoint, as torch.hub stores it."""
        base = self.name.removesuffix("_reg")
        suffix = "_reg4" if self.num_registers else ""
        return f"{base}{suffix}_pretrain.pth"

    @property
    def url(self) -> str:
        """Official download address of the Meta checkpoint."""
        return f"{_META_URL}/{self.name.removesuffix('_reg')}/{self.checkpoint_file}"

    @property
    def interpolate_offset(self) -> float:
        """Offset added to the positional-embedding scale factor (0.1 plain, 0 with registers)."""
        return 0.0 if self.num_registers else 0.1

    @property
    def interpolate_antialias(self) -> bool:
        """Whether the positional embedding is resized with antialiasing (register models only)."""
        return bool(self.num_registers)


def _family(size: str, arch: str, dim: int, depth: int, heads: int, ffn: str, hf: str) -> list[ModelSpec]:
    plain = ModelSpec(f"dinov2_vit{size}14", arch, dim, depth, heads, ffn, 0, f"facebook/dinov2-{hf}")
    reg = ModelSpec(f"dinov2_vit{size}14_reg", arch, dim, depth, heads, ffn, 4,
                    f"facebook/dinov2-with-registers-{hf}")
    return [plain, reg]


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        *_family("s", "vit_small", 384, 12, 6, "mlp", "small"),
        *_family("b", "vit_base", 768, 12, 12, "mlp", "base"),
        *_family("l", "vit_large", 1024, 24, 16, "mlp", "large"),
        *_family("g", "vit_giant2", 1536, 40, 24, "swiglu", "giant"),
    )
}


def get_spec(name: str) -> ModelSpec:
    """Look a model up by name; unknown names raise :class:`UnknownModelError` with suggestions."""
    try:
        return MODELS[name]
    except KeyError:
        close = difflib.get_close_matches(name, MODELS, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownModelError(
            f"unknown model {name!r}.{hint} Known models: {', '.join(MODELS)}."
        ) from None
