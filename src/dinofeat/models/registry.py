"""The table of DINOv2 and DINOv3 backbones: architecture, preprocessing and where their weights come from.

Adding a model is one entry in :data:`MODELS`. DINOv3 names are Meta's torch.hub names; the weight
set is part of the name (``dinov3_vitl16`` is trained on LVD-1689M web images,
``dinov3_vitl16_sat493m`` on SAT-493M satellite images, with its own mean and std).

>>> spec = get_spec("dinov2_vits14")
>>> spec.embed_dim, spec.depth, spec.patch_size, spec.num_registers
(384, 12, 14, 0)
>>> get_spec("dinov2_vitg14_reg").ffn
'swiglu'
>>> v3 = get_spec("dinov3_vitl16_sat493m")
>>> v3.family, v3.patch_size, v3.num_registers, v3.weight_set, v3.gated
('dinov3', 16, 4, 'SAT-493M', True)
>>> v3.checkpoint_file, v3.checkpoint_pattern
('dinov3_vitl16_pretrain_sat493m-eadcf0ff.pth', 'dinov3_vitl16_pretrain_sat493m-*.pth')
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Literal

from dinofeat.errors import UnknownModelError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SAT493M_MEAN = (0.430, 0.411, 0.296)  # Meta's normalisation for the satellite (SAT-493M) weights
SAT493M_STD = (0.213, 0.156, 0.143)
DEFAULT_MODEL = "dinov2_vits14"
_META_URL = "https://dl.fbaipublicfiles.com/dinov2"
#: Where Meta's DINOv3 download links are requested (they are sent by e-mail; there is no public URL).
DINOV3_DOWNLOADS = "https://ai.meta.com/resources/models-and-libraries/dinov3-downloads/"


#: The feed-forward network of a block: a two-layer MLP, or SwiGLU.
Ffn = Literal["mlp", "swiglu"]


@dataclass(frozen=True)
class ModelSpec:
    """One DINOv2 or DINOv3 backbone.

    Weight sources are tried in this order: an explicit file, ``checkpoint_file`` (DINOv3: any file
    matching ``checkpoint_pattern``) in the torch hub cache, ``hf_repo`` on the Hugging Face hub,
    then ``url`` (DINOv2 only: Meta sends DINOv3 download links by e-mail, so it has none).
    """

    name: str
    arch: str  # DINOv2: "vit_small" | "vit_base" | "vit_large" | "vit_giant2"; DINOv3: "vits16" ... "vit7b16"
    embed_dim: int
    depth: int
    num_heads: int
    ffn: Ffn
    num_registers: int  # DINOv3 calls them storage tokens
    hf_repo: str
    patch_size: int = 14
    pos_grid: int = 37  # the positional embedding covers 37x37 patches (518 px); 0: none (DINOv3 uses RoPE)
    mlp_ratio: float = 4.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    family: Literal["dinov2", "dinov3"] = "dinov2"
    weight_set: str = "LVD-142M"  # the pretraining data: "LVD-142M", "LVD-1689M" or "SAT-493M"
    gated: bool = False  # the Hugging Face repo asks users to accept a licence first
    qkv_bias: bool = True  # DINOv3 ViT-7B has no q/k/v bias
    ffn_align: int = 8  # SwiGLU hidden size is rounded up to this multiple (DINOv3 ViT-7B: 64)
    checkpoint_hash: str = ""  # DINOv3: the hash in Meta's file name (files with any hash are found)

    @property
    def checkpoint_file(self) -> str:
        """File name of the official checkpoint, as torch.hub stores it."""
        if self.family == "dinov3":
            return f"{self._dinov3_stem}-{self.checkpoint_hash}.pth"
        base = self.name.removesuffix("_reg")
        suffix = "_reg4" if self.num_registers else ""
        return f"{base}{suffix}_pretrain.pth"

    @property
    def checkpoint_pattern(self) -> str:
        """Glob for the official checkpoint in the torch hub cache (DINOv3 file names end in a hash)."""
        if self.family == "dinov3":
            return f"{self._dinov3_stem}-*.pth"
        return self.checkpoint_file

    @property
    def _dinov3_stem(self) -> str:
        return f"dinov3_{self.arch}_pretrain_{self.weight_set.replace('-', '').lower()}"

    @property
    def url(self) -> str | None:
        """Official download address of the Meta checkpoint (None for DINOv3: links come by e-mail)."""
        if self.family == "dinov3":
            return None
        return f"{_META_URL}/{self.name.removesuffix('_reg')}/{self.checkpoint_file}"

    @property
    def ffn_hidden(self) -> int:
        """Hidden width of the feed-forward network (SwiGLU: 2/3 of ``mlp_ratio * dim``, rounded up)."""
        hidden = int(self.embed_dim * self.mlp_ratio)
        if self.ffn == "mlp":
            return hidden
        hidden = int(hidden * 2 / 3)
        return hidden + (-hidden % self.ffn_align)

    @property
    def parameter_count(self) -> int:
        """Number of learned parameters of the full model, by arithmetic (no torch, no allocation)."""
        dim, hidden = self.embed_dim, self.ffn_hidden
        ffn_in = 2 * hidden if self.ffn == "swiglu" else hidden  # SwiGLU: gate and up projections
        attention = 3 * dim * dim + (3 * dim if self.qkv_bias else 0) + dim * dim + dim
        block = 4 * dim + 2 * dim + attention + dim * ffn_in + ffn_in + hidden * dim + dim  # norms, scales
        tokens = dim * (2 + self.num_registers)  # CLS, mask token, registers
        positions = (1 + self.pos_grid**2) * dim if self.pos_grid else 0
        patch_embed = 3 * self.patch_size**2 * dim + dim
        return patch_embed + tokens + positions + self.depth * block + 2 * dim

    @property
    def interpolate_offset(self) -> float:
        """Offset added to the positional-embedding scale factor (0.1 plain, 0 with registers)."""
        return 0.0 if self.num_registers else 0.1

    @property
    def interpolate_antialias(self) -> bool:
        """Whether the positional embedding is resized with antialiasing (register models only)."""
        return bool(self.num_registers)


def _family(size: str, arch: str, dim: int, depth: int, heads: int, ffn: Ffn, hf: str) -> list[ModelSpec]:
    plain = ModelSpec(f"dinov2_vit{size}14", arch, dim, depth, heads, ffn, 0, f"facebook/dinov2-{hf}")
    reg = ModelSpec(f"dinov2_vit{size}14_reg", arch, dim, depth, heads, ffn, 4, f"facebook/dinov2-with-registers-{hf}")
    return [plain, reg]


def _dinov3(
    arch: str,
    dim: int,
    depth: int,
    heads: int,
    ffn: Ffn,
    ratio: float,
    hashes: dict[str, str],
    *,
    qkv_bias: bool = True,
    align: int = 8,
) -> list[ModelSpec]:
    """One DINOv3 ViT (patch 16, 4 storage tokens, RoPE) per weight set in ``hashes``.

    Shapes follow Meta's ``dinov3/hub/backbones.py``: ``ratio`` is its ``ffn_ratio`` and ``align``
    the SwiGLU rounding (``swiglu64`` for the 7B).
    """
    specs = []
    for weight_set, checkpoint_hash in hashes.items():
        tag = weight_set.replace("-", "").lower()
        satellite = weight_set == "SAT-493M"
        specs.append(
            ModelSpec(
                name=f"dinov3_{arch}" + (f"_{tag}" if satellite else ""),
                arch=arch,
                embed_dim=dim,
                depth=depth,
                num_heads=heads,
                ffn=ffn,
                num_registers=4,
                hf_repo=f"facebook/dinov3-{arch}-pretrain-{tag}",
                patch_size=16,
                pos_grid=0,
                mlp_ratio=ratio,
                mean=SAT493M_MEAN if satellite else IMAGENET_MEAN,
                std=SAT493M_STD if satellite else IMAGENET_STD,
                family="dinov3",
                weight_set=weight_set,
                gated=True,
                qkv_bias=qkv_bias,
                ffn_align=align,
                checkpoint_hash=checkpoint_hash,
            )
        )
    return specs


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        *_family("s", "vit_small", 384, 12, 6, "mlp", "small"),
        *_family("b", "vit_base", 768, 12, 12, "mlp", "base"),
        *_family("l", "vit_large", 1024, 24, 16, "mlp", "large"),
        *_family("g", "vit_giant2", 1536, 40, 24, "swiglu", "giant"),
        *_dinov3("vits16", 384, 12, 6, "mlp", 4, {"LVD-1689M": "08c60483"}),
        *_dinov3("vits16plus", 384, 12, 6, "swiglu", 6, {"LVD-1689M": "4057cbaa"}),
        *_dinov3("vitb16", 768, 12, 12, "mlp", 4, {"LVD-1689M": "73cec8be"}),
        *_dinov3("vitl16", 1024, 24, 16, "mlp", 4, {"LVD-1689M": "8aa4cbdd", "SAT-493M": "eadcf0ff"}),
        *_dinov3("vith16plus", 1280, 32, 20, "swiglu", 6, {"LVD-1689M": "7c1da9a5"}),
        *_dinov3(
            "vit7b16",
            4096,
            40,
            32,
            "swiglu",
            3,
            {"LVD-1689M": "a955f4ea", "SAT-493M": "a6675841"},
            qkv_bias=False,
            align=64,
        ),
    )
}


#: timm's word for each architecture (``vit_small_patch14_dinov2``, ``vit_huge_plus_patch16_dinov3``).
_TIMM_SIZES = {
    "vit_small": "small",
    "vit_base": "base",
    "vit_large": "large",
    "vit_giant2": "giant",
    "vits16": "small",
    "vits16plus": "small_plus",
    "vitb16": "base",
    "vitl16": "large",
    "vith16plus": "huge_plus",
    "vit7b16": "7b",
}


def timm_names(spec: ModelSpec) -> list[str]:
    """The names timm gives ``spec``'s weights, its pretrained tag first
    (``vit_small_patch14_reg4_dinov2.lvd142m``); DINOv3 also with timm's ``_qkvb`` (q/v bias) variant.

    >>> timm_names(get_spec("dinov2_vits14_reg"))
    ['vit_small_patch14_reg4_dinov2.lvd142m', 'vit_small_patch14_reg4_dinov2']
    >>> timm_names(get_spec("dinov3_vitl16_sat493m"))[:2]
    ['vit_large_patch16_dinov3.sat493m', 'vit_large_patch16_dinov3_qkvb.sat493m']
    """
    size = _TIMM_SIZES[spec.arch]
    tag = spec.weight_set.replace("-", "").lower()
    if spec.family == "dinov2":
        base = f"vit_{size}_patch14{'_reg4' if spec.num_registers else ''}_dinov2"
        return [f"{base}.{tag}", base]
    bases = [f"vit_{size}_patch16_dinov3", f"vit_{size}_patch16_dinov3_qkvb"]
    tagged = [f"{base}.{tag}" for base in bases]
    return tagged if spec.weight_set != "LVD-1689M" else [*tagged, *bases]  # an untagged name is timm's default


#: Names users copy from elsewhere, each standing for one of ours: the Hugging Face repo ids
#: (``facebook/dinov2-small``) and timm's model names (``vit_small_patch14_dinov2.lvd142m``).
ALIASES: dict[str, str] = {alias: spec.name for spec in MODELS.values() for alias in (spec.hf_repo, *timm_names(spec))}


def canonical_name(name: str) -> str:
    """Our name for ``name`` (itself, or what an alias in :data:`ALIASES` stands for); an unknown
    name is returned as it is (:func:`get_spec` says what is wrong with it).

    >>> canonical_name("facebook/dinov2-with-registers-base"), canonical_name("vit_small_patch16_dinov3.lvd1689m")
    ('dinov2_vitb14_reg', 'dinov3_vits16')
    """
    return ALIASES.get(name, name)


def get_spec(name: str) -> ModelSpec:
    """Look a model up by name or alias (:data:`ALIASES`); unknown names raise
    :class:`UnknownModelError` with suggestions."""
    try:
        return MODELS[canonical_name(name)]
    except KeyError:
        close = difflib.get_close_matches(name, [*MODELS, *ALIASES], n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownModelError(
            f"unknown model {name!r}.{hint} Known models: {', '.join(MODELS)} (or their Hugging Face ids and timm "
            "names: see `dinofeat models`)."
        ) from None
