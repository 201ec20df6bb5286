import pytest
import torch

from conftest import random_vit
from dinofeat.errors import UnknownModelError
from dinofeat.models.build import count_parameters
from dinofeat.models.registry import MODELS, get_spec

PUBLISHED_MILLIONS = {"s": 21, "b": 86, "l": 300, "g": 1100}
DINOV2 = sorted(name for name, spec in MODELS.items() if spec.family == "dinov2")


def test_registry_has_all_published_backbones():
    names = {f"dinov2_vit{s}14{r}" for s in "sblg" for r in ("", "_reg")}
    assert set(DINOV2) == names
    for spec in map(get_spec, DINOV2):
        assert spec.patch_size == 14
        assert spec.num_registers == (4 if spec.name.endswith("_reg") else 0)
        assert spec.hf_repo.startswith("facebook/dinov2-")


@pytest.mark.parametrize("name", DINOV2)
def test_parameter_counts_match_published_sizes(name):
    millions = count_parameters(get_spec(name)) / 1e6
    published = PUBLISHED_MILLIONS[name[len("dinov2_vit")]]
    assert abs(millions - published) / published < 0.06


@pytest.mark.parametrize("name", DINOV2)  # DINOv3 (patch 16): tests/test_dinov3.py
def test_every_model_runs_at_reduced_depth(name):
    spec = get_spec(name)
    vit = random_vit(name, depth=1)
    out = vit.forward_features(torch.randn(1, 3, 28, 42))
    assert out.grid_hw == (2, 3)
    assert out.patch_tokens[0].shape == (1, 6, spec.embed_dim)
    assert out.register_tokens.shape == (1, spec.num_registers, spec.embed_dim)


def test_official_file_names_and_urls():
    spec = get_spec("dinov2_vitb14_reg")
    assert spec.checkpoint_file == "dinov2_vitb14_reg4_pretrain.pth"
    assert spec.url == "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_reg4_pretrain.pth"
    assert get_spec("dinov2_vits14").interpolate_offset == 0.1
    assert get_spec("dinov2_vits14_reg").interpolate_antialias


def test_unknown_model_suggests_close_names():
    with pytest.raises(UnknownModelError, match="dinov2_vits14"):
        get_spec("dinov2_vits16")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_parameter_count_arithmetic_equals_the_built_model(name):
    assert get_spec(name).parameter_count == count_parameters(get_spec(name))


@pytest.mark.parametrize(
    "alias, name",
    [
        ("facebook/dinov2-small", "dinov2_vits14"),
        ("facebook/dinov2-base", "dinov2_vitb14"),
        ("facebook/dinov2-large", "dinov2_vitl14"),
        ("facebook/dinov2-giant", "dinov2_vitg14"),
        ("facebook/dinov2-with-registers-small", "dinov2_vits14_reg"),
        ("facebook/dinov3-vits16-pretrain-lvd1689m", "dinov3_vits16"),
        ("facebook/dinov3-vitl16-pretrain-sat493m", "dinov3_vitl16_sat493m"),
        ("vit_small_patch14_dinov2.lvd142m", "dinov2_vits14"),
        ("vit_giant_patch14_reg4_dinov2.lvd142m", "dinov2_vitg14_reg"),
        ("vit_base_patch14_dinov2", "dinov2_vitb14"),
        ("vit_small_patch16_dinov3.lvd1689m", "dinov3_vits16"),
        ("vit_small_plus_patch16_dinov3_qkvb.lvd1689m", "dinov3_vits16plus"),
        ("vit_huge_plus_patch16_dinov3", "dinov3_vith16plus"),
        ("vit_large_patch16_dinov3.sat493m", "dinov3_vitl16_sat493m"),
        ("vit_7b_patch16_dinov3.lvd1689m", "dinov3_vit7b16"),
    ],
)
def test_hugging_face_ids_and_timm_names_are_aliases(alias, name):
    from dinofeat.options import ExtractorOptions

    assert get_spec(alias).name == name
    assert ExtractorOptions(model=alias).model == name  # every output records our name


def test_every_model_has_its_repo_and_timm_names_and_aliases_are_unambiguous():
    from dinofeat.models.registry import ALIASES, timm_names

    for spec in MODELS.values():
        assert ALIASES[spec.hf_repo] == spec.name
        assert all(ALIASES[alias] == spec.name for alias in timm_names(spec))
    assert not set(ALIASES) & set(MODELS)
    assert len(ALIASES) == sum(1 + len(timm_names(spec)) for spec in MODELS.values())  # no alias names two models


def test_an_unknown_alias_is_suggested():
    with pytest.raises(UnknownModelError, match="Did you mean facebook/dinov2-small"):
        get_spec("facebook/dinov2-smal")
