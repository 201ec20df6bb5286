"""timm's checkpoint layouts (``vit_*_patch14_dinov2``, ``vit_*_patch16_dinov3``) load into our models
and give the features timm's own model gives, on random weights.

timm imports torchvision at import time; where the torchvision wheel cannot load (a CPU-only torch
with PyPI's CUDA-built torchvision, or none installed: ``pip install --no-deps timm`` beside a CPU
torch), a stand-in module lets timm import: the model code compared here never uses torchvision.
"""

from __future__ import annotations

import enum
import importlib
import importlib.util
import sys
import types

import pytest
import torch
from safetensors.torch import save_file

from dinofeat.models.registry import get_spec
from dinofeat.models.weights import load_model


class _Stand:
    """Any attribute of the torchvision stand-in: a class that is anything."""


class _StandModule(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Stand


class _InterpolationMode(enum.Enum):  # timm builds tables of these at import
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


_TORCHVISION_MODULES = (
    "torchvision",
    "torchvision.ops",
    "torchvision.ops.misc",
    "torchvision.transforms",
    "torchvision.transforms.functional",
    "torchvision.transforms.v2",
    "torchvision.models",
    "torchvision.models.feature_extraction",
    "torchvision.utils",
    "torchvision.io",
    "torchvision.datasets",
)


def _import_timm():
    """timm, imported with the real torchvision if it loads, else with the stand-in, which is taken
    out of ``sys.modules`` again at once (other tests look for torchvision by its spec)."""
    if importlib.util.find_spec("timm") is None:
        return pytest.importorskip("timm")
    try:
        importlib.import_module("torchvision")
        return importlib.import_module("timm")
    except Exception:  # noqa: BLE001 - missing, or a wheel built for another torch: use the stand-in
        pass
    for name in _TORCHVISION_MODULES:
        module = _StandModule(name)
        module.__path__ = []
        module.InterpolationMode = _InterpolationMode
        sys.modules[name] = module
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)
    try:
        return importlib.import_module("timm")
    finally:
        for name in _TORCHVISION_MODULES:
            sys.modules.pop(name, None)


timm = _import_timm()


def _randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Weights that make every part count: norm and LayerScale scales 1 + N(0, 0.1) (timm starts
    LayerScale at 1e-5, which would hide the blocks), everything else N(0, 0.1), so attention is
    peaked (a wrong query, key or position changes the output)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen) * 0.1
            scale = "gamma" in name or ("norm" in name and name.endswith(".weight"))  # ls1.gamma, gamma_1
            param.copy_(noise + 1 if scale else noise)
    return model.eval()


CASES = [  # (timm model, our model, input height and width, blocks)
    ("vit_small_patch14_dinov2", "dinov2_vits14", (518, 518), 2),
    ("vit_small_patch14_reg4_dinov2", "dinov2_vits14_reg", (518, 518), 2),
    ("vit_giant_patch14_dinov2", "dinov2_vitg14", (518, 518), 1),
    ("vit_small_patch16_dinov3", "dinov3_vits16", (64, 96), 2),
    ("vit_small_plus_patch16_dinov3_qkvb", "dinov3_vits16plus", (64, 96), 2),
    ("vit_large_patch16_dinov3_qkvb", "dinov3_vitl16", (48, 32), 1),
]


@pytest.mark.parametrize(("timm_name", "ours", "size_hw", "depth"), CASES)
def test_a_timm_checkpoint_gives_timm_features(tmp_path, timm_name, ours, size_hw, depth):
    reference = _randomise(timm.create_model(timm_name, pretrained=False, num_classes=0, depth=depth), seed=depth)
    path = tmp_path / "timm.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    model = load_model(timm_name, path, depth=depth)  # the timm name is an alias of ours
    assert model.spec.name == ours == get_spec(timm_name).name
    images = torch.randn(2, 3, *size_hw, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = reference.forward_features(images)[:, reference.num_prefix_tokens :]
        got = model.forward_features(images).patch_tokens[0]
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
