"""DINOv3: the forward pass equals transformers' DINOv3ViTModel on random weights, in every checkpoint
layout; RoPE conventions and precision; registry sizes; weight lookup; extractor and CLI."""

from __future__ import annotations

import dataclasses
import json
import math
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dinofeat.models.weights
from conftest import random_vit, save_png
from dinofeat.errors import InputError, WeightsError
from dinofeat.features.extractor import Extractor
from dinofeat.features.featuremap import FeatureMap
from dinofeat.io.images import processed_size
from dinofeat.models.build import build_model, count_parameters
from dinofeat.models.dinov3 import DinoV3VisionTransformer, apply_rope, rope_coordinates, rope_periods
from dinofeat.models.registry import MODELS, get_spec
from dinofeat.models.statekeys import to_meta_keys
from dinofeat.models.weights import cached_locally, hub_checkpoint_path, load_model, load_state

transformers = pytest.importorskip("transformers")

DINOV3 = sorted(name for name, spec in MODELS.items() if spec.family == "dinov3")
# (embed dim, depth, heads, FFN, FFN hidden, parameters) from Meta's hub definitions and model card
TABLE = {
    "dinov3_vits16": (384, 12, 6, "mlp", 1536, 21.6e6),
    "dinov3_vits16plus": (384, 12, 6, "swiglu", 1536, 28.7e6),
    "dinov3_vitb16": (768, 12, 12, "mlp", 3072, 85.7e6),
    "dinov3_vitl16": (1024, 24, 16, "mlp", 4096, 303e6),
    "dinov3_vitl16_sat493m": (1024, 24, 16, "mlp", 4096, 303e6),
    "dinov3_vith16plus": (1280, 32, 20, "swiglu", 5120, 841e6),
    "dinov3_vit7b16": (4096, 40, 32, "swiglu", 8192, 6.7e9),
    "dinov3_vit7b16_sat493m": (4096, 40, 32, "swiglu", 8192, 6.7e9),
}
# the ViT-7B's code path (no qkv bias, SwiGLU rounded to 64, head dim 128) at a size tests can afford
SMALL_7B = dataclasses.replace(get_spec("dinov3_vit7b16"), name="small_7b_like", embed_dim=512, num_heads=4, depth=2)


# ---------------------------------------------------------------------------------------------
# helpers: random weights that all matter, and an independent Meta -> transformers conversion


def _randomised(spec, depth, seed=0) -> DinoV3VisionTransformer:
    """Our model with every weight random: norms, LayerScale, biases (the masked key bias too), tokens.

    q/k weights are scaled up so that attention is sharp and RoPE changes the result a lot.
    """
    model = DinoV3VisionTransformer(spec, depth=depth)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=gen)
            if name.endswith("gamma") or (".norm" in f".{name}" and name.endswith("weight")):
                p.copy_(1 + 0.3 * r)
            elif name.endswith("bias"):
                p.copy_(0.1 * r)
            elif p.ndim >= 2 and name.endswith("weight"):
                fan_in = math.prod(p.shape[1:])
                p.copy_(r * (1.5 if "qkv" in name else 1.0) / math.sqrt(fan_in))
            else:  # cls, storage and mask tokens
                p.copy_(r)
    return model.eval()


def _hf_config(spec, depth):
    swiglu = spec.ffn == "swiglu"
    return transformers.DINOv3ViTConfig(
        hidden_size=spec.embed_dim,
        num_attention_heads=spec.num_heads,
        intermediate_size=spec.ffn_hidden,
        num_hidden_layers=depth,
        num_register_tokens=spec.num_registers,
        patch_size=16,
        layer_norm_eps=1e-5,
        rope_theta=100.0,
        use_gated_mlp=swiglu,
        hidden_act="silu" if swiglu else "gelu",
        query_bias=spec.qkv_bias,
        key_bias=False,
        value_bias=spec.qkv_bias,
        proj_bias=True,
        mlp_bias=True,
        layerscale_value=1.0,
        attn_implementation="sdpa",
    )


def _meta_to_hf(state, spec, depth):
    """Meta's keys -> transformers v5 in-memory keys (written here independently of dinofeat.models.weights)."""
    dim = spec.embed_dim
    hf = {
        "embeddings.cls_token": state["cls_token"],
        "embeddings.mask_token": state["mask_token"].reshape(1, 1, dim),
        "embeddings.register_tokens": state["storage_tokens"],
        "embeddings.patch_embeddings.weight": state["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.bias": state["patch_embed.proj.bias"],
        "norm.weight": state["norm.weight"],
        "norm.bias": state["norm.bias"],
    }
    mlp = {"w1": "gate_proj", "w2": "up_proj", "w3": "down_proj", "fc1": "up_proj", "fc2": "down_proj"}
    for i in range(depth):
        meta, ours = f"blocks.{i}.", f"model.layer.{i}."
        for name, part in zip(("q", "k", "v"), state[meta + "attn.qkv.weight"].chunk(3), strict=True):
            hf[f"{ours}attention.{name}_proj.weight"] = part
        if meta + "attn.qkv.bias" in state:  # the key bias is masked by Meta and absent in transformers
            q_bias, _, v_bias = state[meta + "attn.qkv.bias"].chunk(3)
            hf[ours + "attention.q_proj.bias"], hf[ours + "attention.v_proj.bias"] = q_bias, v_bias
        for kind in ("weight", "bias"):
            hf[f"{ours}attention.o_proj.{kind}"] = state[f"{meta}attn.proj.{kind}"]
            for norm in ("norm1", "norm2"):
                hf[f"{ours}{norm}.{kind}"] = state[f"{meta}{norm}.{kind}"]
            for theirs, name in mlp.items():
                if f"{meta}mlp.{theirs}.{kind}" in state:
                    hf[f"{ours}mlp.{name}.{kind}"] = state[f"{meta}mlp.{theirs}.{kind}"]
        hf[ours + "layer_scale1.lambda1"] = state[meta + "ls1.gamma"]
        hf[ours + "layer_scale2.lambda1"] = state[meta + "ls2.gamma"]
    return hf


def _hf_twin(model: DinoV3VisionTransformer):
    depth = len(model.blocks)
    hf = transformers.DINOv3ViTModel(_hf_config(model.spec, depth)).eval()
    hf.load_state_dict(_meta_to_hf(model.state_dict(), model.spec, depth), strict=True)
    return hf


def _max_diffs(ours, hf, x) -> tuple[float, float, float]:
    """max |diff| of patch tokens, CLS and storage tokens (fp32)."""
    with torch.inference_mode():
        expected = hf(pixel_values=x).last_hidden_state
        out = ours.forward_features(x)
    first = 1 + ours.num_registers
    return (
        (out.patch_tokens[0] - expected[:, first:]).abs().max().item(),
        (out.cls_token - expected[:, 0]).abs().max().item(),
        (out.register_tokens - expected[:, 1:first]).abs().max().item(),
    )


def _images(*shapes):
    gen = torch.Generator().manual_seed(7)
    return [torch.randn(2, 3, h, w, generator=gen) for h, w in shapes]


# ---------------------------------------------------------------------------------------------
# equivalence with transformers


@pytest.mark.parametrize("name,depth", [("dinov3_vits16", None), ("dinov3_vits16plus", None), ("dinov3_vitb16", 3)])
def test_matches_transformers(name, depth):
    spec = get_spec(name)
    ours = _randomised(spec, depth)
    hf = _hf_twin(ours)
    for x in _images((224, 224), (96, 160), (176, 80)):
        assert max(_max_diffs(ours, hf, x)) <= 1e-4


def test_7b_code_path_matches_transformers():
    """No qkv bias, SwiGLU hidden rounded to 64, head dim 128 (the 7B's) at a small width."""
    ours = _randomised(SMALL_7B, 2)
    assert ours.spec.ffn_hidden == 1024 and ours.blocks[0].attn.qkv.bias is None
    assert "blocks.0.attn.qkv.bias_mask" not in ours.state_dict()
    hf = _hf_twin(ours)
    for x in _images((64, 64), (48, 112)):
        assert max(_max_diffs(ours, hf, x)) <= 1e-4
    # transformers' keys convert back to ours exactly (no bias anywhere)
    fresh = DinoV3VisionTransformer(SMALL_7B, depth=2)
    load_state(fresh, to_meta_keys(hf.state_dict()), "test")
    for key, value in ours.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_rope_matters_and_the_key_bias_does_not():
    """Guards the equivalence tests: they would notice a wrong rotation, and bias_mask cancels the key bias."""
    ours = _randomised(get_spec("dinov3_vits16"), 2)
    x = _images((64, 96))[0]
    reference = ours(x)
    qkv = ours.blocks[0].attn.qkv
    with torch.no_grad():
        qkv.bias[384:768] += 5.0
        assert torch.allclose(ours(x), reference, atol=1e-5)
        qkv.bias[:384] += 0.5
        assert not torch.allclose(ours(x), reference, atol=1e-2)
        qkv.bias[384:768] -= 5.0
        qkv.bias[:384] -= 0.5
    periods = ours.rope_embed.periods.clone()
    try:
        ours.rope_embed.periods.mul_(2)
        assert (ours(x) - reference).abs().max() > 1e-2
    finally:
        ours.rope_embed.periods.copy_(periods)


# ---------------------------------------------------------------------------------------------
# checkpoint layouts


def _meta_checkpoint(seed=3, depth=2):
    """A random ViT-S/16 in Meta's layout: a NON-ZERO key bias that bias_mask must cancel, the
    periods buffer, and a training-only local_cls_norm."""
    model = _randomised(get_spec("dinov3_vits16"), depth, seed)
    state = model.state_dict()
    assert state["blocks.0.attn.qkv.bias"][384:768].abs().min() > 0
    assert state["mask_token"].shape == (1, 384)
    state["local_cls_norm.weight"], state["local_cls_norm.bias"] = torch.ones(384), torch.zeros(384)
    return model, state


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_meta_layout_checkpoints_load(tmp_path, suffix):
    model, state = _meta_checkpoint()
    path = tmp_path / f"dinov3_vits16_pretrain_lvd1689m-01234567{suffix}"
    if suffix == ".pth":
        torch.save({"teacher": {f"backbone.{k}": v for k, v in state.items()}}, path)
    else:
        from safetensors.torch import save_file

        save_file(state, path)
    loaded = load_model("dinov3_vits16", path, depth=2)
    assert torch.equal(loaded.blocks[1].attn.qkv.bias, state["blocks.1.attn.qkv.bias"])  # kept, and masked
    hf = _hf_twin(model)
    for x in _images((64, 64), (48, 96)):
        assert max(_max_diffs(loaded, hf, x)) <= 1e-4


def test_meta_layout_with_swiglu_and_without_buffers(tmp_path):
    """S+ keys (w1/w2/w3); checkpoints without periods / bias_mask get the fixed values."""
    model = _randomised(get_spec("dinov3_vits16plus"), 2)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith(("bias_mask", "periods"))}
    torch.save(state, tmp_path / "w.pth")
    loaded = load_model("dinov3_vits16plus", tmp_path / "w.pth", depth=2)
    assert torch.equal(loaded.rope_embed.periods, rope_periods(64))
    assert loaded.blocks[0].attn.qkv.bias_mask.tolist() == [1.0] * 384 + [0.0] * 384 + [1.0] * 384
    assert max(_max_diffs(loaded, _hf_twin(model), _images((48, 64))[0])) <= 1e-4


def test_bad_fixed_buffers_are_named(tmp_path):
    _, state = _meta_checkpoint()
    bad_periods = dict(state, **{"rope_embed.periods": rope_periods(64, base=10_000.0)})
    torch.save(bad_periods, tmp_path / "p.pth")
    with pytest.raises(WeightsError, match="RoPE periods"):
        load_model("dinov3_vits16", tmp_path / "p.pth", depth=2)
    bad_mask = dict(state, **{"blocks.1.attn.qkv.bias_mask": torch.ones(1152)})
    torch.save(bad_mask, tmp_path / "m.pth")
    with pytest.raises(WeightsError, match=r"blocks.1.attn.qkv.bias_mask .*key mask"):
        load_model("dinov3_vits16", tmp_path / "m.pth", depth=2)


@pytest.mark.parametrize("layout", ["save_pretrained", "v5_in_memory", "sharded"])
def test_hugging_face_layouts_load(tmp_path, layout):
    model, _ = _meta_checkpoint(seed=5)
    hf = _hf_twin(model)
    if layout == "v5_in_memory":  # model.layer.N keys, as a DINOv3ViTModel holds them
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, tmp_path / "model.safetensors")
        source = tmp_path / "model.safetensors"
    else:  # v4 layout on disk (layer.N), as save_pretrained writes it and the hub serves it
        hf.save_pretrained(tmp_path, max_shard_size="1MB" if layout == "sharded" else "5GB")
        source = tmp_path
        keys = (
            json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"]
            if layout == "sharded"
            else {}
        )
        assert layout != "sharded" or len(set(keys.values())) > 1
    loaded = load_model("dinov3_vits16", source, depth=2)
    assert torch.equal(loaded.mask_token, model.mask_token)
    assert loaded.blocks[0].attn.qkv.bias[384:768].abs().max() == 0  # transformers has no key bias
    assert max(_max_diffs(loaded, hf, _images((64, 80))[0])) <= 1e-4


def test_a_transformers_key_bias_is_refused():
    hf_state = _hf_twin(_randomised(get_spec("dinov3_vits16"), 1)).state_dict()
    hf_state["model.layer.0.attention.k_proj.bias"] = torch.ones(384)
    with pytest.raises(WeightsError, match="unexpected keys .*k_proj.bias"):
        load_state(DinoV3VisionTransformer(get_spec("dinov3_vits16"), depth=1), to_meta_keys(hf_state), "test")


def test_dinov2_conversions_still_apply():
    v4 = to_meta_keys(
        {
            "encoder.layer.0.mlp.weights_in.weight": torch.ones(4, 2),
            "embeddings.patch_embeddings.projection.weight": torch.ones(1),
        }
    )
    assert set(v4) == {"blocks.0.mlp.w12.weight", "patch_embed.proj.weight"}


# ---------------------------------------------------------------------------------------------
# RoPE conventions


def _official_rope(grid_h, grid_w, head_dim, base=100.0):
    """Meta's RopePositionEmbedding.forward (normalize_coords="separate", eval), restated."""
    periods = base ** (2 * torch.arange(head_dim // 4, dtype=torch.float32) / (head_dim // 2))
    coords_h = torch.arange(0.5, grid_h, dtype=torch.float32) / grid_h
    coords_w = torch.arange(0.5, grid_w, dtype=torch.float32) / grid_w
    coords = torch.stack(torch.meshgrid(coords_h, coords_w, indexing="ij"), dim=-1).flatten(0, 1) * 2.0 - 1.0
    angles = (2 * math.pi * coords[:, :, None] / periods[None, None, :]).flatten(1, 2).tile(2)
    return torch.sin(angles), torch.cos(angles)


@pytest.mark.parametrize("grid_hw", [(14, 14), (3, 7), (9, 2)])
def test_rope_equals_the_official_layout_at_stride_16(grid_hw):
    model = random_vit("dinov3_vits16", depth=1)
    sin, cos = model.rope(grid_hw, 16, torch.device("cpu"))
    expected_sin, expected_cos = _official_rope(*grid_hw, 64)
    assert torch.allclose(sin, expected_sin, atol=1e-6) and torch.allclose(cos, expected_cos, atol=1e-6)
    assert torch.equal(model.rope_embed.periods, rope_periods(64))


def test_rope_is_float32_under_autocast():
    model = random_vit("dinov3_vits16", depth=1)
    seen = []
    model.rope_embed.register_forward_hook(lambda module, args, out: seen.append(out))
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16), torch.inference_mode():
            out = model.forward_features(torch.randn(1, 3, 48, 64), facet="key")
    finally:
        model.rope_embed._forward_hooks.clear()
    assert out.patch_tokens[0].dtype == torch.bfloat16  # autocast was on: the projections ran in bf16
    sin, cos = seen[0]
    assert sin.dtype == cos.dtype == torch.float32
    reference_sin, reference_cos = model.rope((3, 4), 16, torch.device("cpu"))
    assert torch.equal(sin, reference_sin) and torch.equal(cos, reference_cos)
    # the rotation itself runs in float32 and is rounded once, back to the projection's dtype
    q = torch.randn(1, 6, 5 + 12, 64).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rotated = apply_rope(q, sin, cos, prefix=5)
    assert rotated.dtype == torch.bfloat16
    assert torch.equal(rotated, apply_rope(q.float(), sin, cos, prefix=5).bfloat16())
    assert torch.equal(rotated[:, :, :5], q[:, :, :5])  # CLS and storage tokens are not rotated


def test_stride_8_coordinates_are_true_patch_centres():
    coarse = rope_coordinates((4, 6), 16, 16).reshape(4, 6, 2)
    fine = rope_coordinates((7, 11), 16, 8).reshape(7, 11, 2)  # same 64 x 96 px image
    assert torch.equal(fine[::2, ::2], coarse)
    # in general: centre in processed pixels / processed size, mapped to [-1, 1]
    assert torch.allclose(fine[0, :, 1], (torch.arange(11) * 8 + 8) / 96 * 2 - 1)
    assert torch.allclose(fine[:, 0, 0], (torch.arange(7) * 8 + 8) / 64 * 2 - 1)
    model = random_vit("dinov3_vits16", depth=1)
    sin8, _ = model.rope((7, 11), 8, torch.device("cpu"))
    sin16, _ = model.rope((4, 6), 16, torch.device("cpu"))
    assert torch.equal(sin8.reshape(7, 11, -1)[::2, ::2], sin16.reshape(4, 6, -1))


@pytest.mark.parametrize("patch", [14, 16])
@pytest.mark.parametrize("stride_div", [1, 2])
def test_geometry_for_both_patch_sizes(patch, stride_div):
    """Processed sizes fit the grid; patch j's centre is p*j + (p-1)/2 processed pixels (16 j + 7.5 at
    p = 16), which is where the DINOv3 RoPE coordinate puts it."""
    stride = patch // stride_div
    for size_wh in [(451, 300), (300, 451), (640, 480), (1000, 999)]:
        w, h = processed_size(size_wh, 224, patch_size=patch, stride=stride, max_size=None)
        assert (w - patch) % stride == 0 and (h - patch) % stride == 0
        grid = ((h - patch) // stride + 1, (w - patch) // stride + 1)
        fmap = FeatureMap(
            torch.zeros(*grid, 1), image_size_wh=(w, h), processed_size_wh=(w, h), patch_size=patch, stride=stride
        )
        centres = fmap.patch_centers()
        assert torch.allclose(centres[0, :, 0], torch.arange(grid[1]) * stride + (patch - 1) / 2)
        if patch == 16:
            # pixel centre c covers [c - 0.5, c + 0.5]: RoPE's coordinate is (c + 0.5) / size -> [-1, 1]
            coords = rope_coordinates(grid, patch, stride).reshape(*grid, 2)
            assert torch.allclose(coords[0, :, 1], (centres[0, :, 0] + 0.5) / w * 2 - 1, atol=1e-6)
            assert torch.allclose(coords[:, 0, 0], (centres[:, 0, 1] + 0.5) / h * 2 - 1, atol=1e-6)
    if patch == 16:
        assert processed_size((451, 300), 224, patch_size=16) == (336, 224)


# ---------------------------------------------------------------------------------------------
# facets, precision, registry


def test_facets_are_taken_before_rope():
    model = random_vit("dinov3_vits16", depth=2)
    x = torch.randn(1, 3, 48, 64)
    with torch.inference_mode():
        key = model.forward_features(x, layers=(1,), facet="key").patch_tokens[0]
        query = model.forward_features(x, layers=(1,), facet="query").patch_tokens[0]
        tokens, _ = model.prepare_tokens(x)
        tokens = model.blocks[0](tokens, model.rope((3, 4), 16, x.device))[0]
        qkv = model.blocks[1].attn.qkv(model.blocks[1].norm1(tokens))
    assert key.shape == (1, 12, 384)
    assert torch.allclose(key, qkv[:, 5:, 384:768], atol=1e-6)  # unrotated, key bias masked
    assert torch.allclose(query, qkv[:, 5:, :384], atol=1e-6)


def test_bf16_autocast_agrees_with_fp32(photo):
    vit = random_vit("dinov3_vits16", depth=4)
    fp32 = Extractor(vit, device="cpu", precision="fp32", resolution=96).extract(photo)
    bf16 = Extractor(vit, device="cpu", precision="bf16", resolution=96).extract(photo)
    cosine = F.cosine_similarity(fp32.features, bf16.features, dim=-1)
    assert cosine.min() >= 0.999


@pytest.mark.parametrize("name", DINOV3)
def test_parameter_counts_match_the_table(name):
    dim, depth, heads, ffn, hidden, params = TABLE[name]
    spec = get_spec(name)
    assert (spec.embed_dim, spec.depth, spec.num_heads, spec.ffn, spec.ffn_hidden) == (dim, depth, heads, ffn, hidden)
    assert (spec.patch_size, spec.num_registers, spec.family, spec.gated) == (16, 4, "dinov3", True)
    assert abs(count_parameters(spec) - params) / params < 0.005


def test_registry_names_weight_sets_and_normalisation():
    assert set(DINOV3) == set(TABLE)
    for name in DINOV3:
        spec = get_spec(name)
        satellite = name.endswith("_sat493m")
        assert spec.weight_set == ("SAT-493M" if satellite else "LVD-1689M")
        assert spec.mean == ((0.430, 0.411, 0.296) if satellite else (0.485, 0.456, 0.406))
        assert spec.std == ((0.213, 0.156, 0.143) if satellite else (0.229, 0.224, 0.225))
        assert spec.hf_repo == f"facebook/dinov3-{spec.arch}-pretrain-{'sat493m' if satellite else 'lvd1689m'}"
        assert spec.url is None and spec.checkpoint_pattern.endswith("-*.pth")
    assert get_spec("dinov3_vit7b16").qkv_bias is False
    assert get_spec("dinov3_vits16").checkpoint_file == "dinov3_vits16_pretrain_lvd1689m-08c60483.pth"


@pytest.mark.parametrize("name", DINOV3)
def test_every_model_builds_at_reduced_depth_and_runs(name):
    spec = get_spec(name)
    with torch.device("meta"):  # skips torch's default initialisation, which init_random replaces
        vit = build_model(spec, depth=1)
    vit = vit.to_empty(device="cpu").init_random()
    assert torch.equal(vit.rope_embed.periods, rope_periods(spec.embed_dim // spec.num_heads))
    with torch.inference_mode():
        out = vit.eval().forward_features(torch.randn(1, 3, 32, 48))
    assert out.grid_hw == (2, 3)
    assert out.patch_tokens[0].shape == (1, 6, spec.embed_dim)
    assert out.register_tokens.shape == (1, 4, spec.embed_dim)
    assert torch.isfinite(out.patch_tokens[0]).all()


def test_bad_layer_facet_and_stride():
    vit = random_vit("dinov3_vits16", depth=2)
    x = torch.zeros(1, 3, 32, 32)
    with pytest.raises(InputError, match="layers=5 does not exist"):
        vit.forward_features(x, layers=(5,))
    with pytest.raises(InputError, match="facet"):
        vit.forward_features(x, facet="attn")
    with pytest.raises(InputError, match="stride"):
        vit.forward_features(x, stride=17)


# ---------------------------------------------------------------------------------------------
# weight lookup


@pytest.fixture(scope="module")
def vits16_checkpoint(tmp_path_factory):
    """A full-depth ViT-S/16 with random weights in Meta's layout, named as Meta names it."""
    path = tmp_path_factory.mktemp("dinov3") / "dinov3_vits16_pretrain_lvd1689m-08c60483.pth"
    torch.save(random_vit("dinov3_vits16", depth=None, seed=1).state_dict(), path)
    return path


def _empty_caches(tmp_path, monkeypatch, *, offline=True):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(dinofeat.models.weights, "reachable", lambda url, timeout=0: True)  # no real probe
    return tmp_path / "torch" / "hub" / "checkpoints", tmp_path / "hf"


def test_torch_hub_cache_file_with_any_hash(tmp_path, monkeypatch):
    folder, _ = _empty_caches(tmp_path, monkeypatch)
    folder.mkdir(parents=True)
    model, state = _meta_checkpoint(seed=11)
    torch.save(_meta_checkpoint(seed=12)[1], folder / "dinov3_vits16plus_pretrain_lvd1689m-aaaaaaaa.pth")  # decoy
    torch.save(state, folder / "dinov3_vits16_pretrain_lvd1689m-1234abcd.pth")
    spec = get_spec("dinov3_vits16")
    assert hub_checkpoint_path(spec).name == "dinov3_vits16_pretrain_lvd1689m-1234abcd.pth"
    assert cached_locally(spec) == "torch hub" and cached_locally(get_spec("dinov3_vitb16")) is None
    loaded = load_model("dinov3_vits16", depth=2)
    assert torch.equal(loaded.blocks[1].mlp.fc2.weight, model.blocks[1].mlp.fc2.weight)


def test_hugging_face_hub_cache_offline(tmp_path, monkeypatch):
    _, cache = _empty_caches(tmp_path, monkeypatch)
    repo = cache / "models--facebook--dinov3-vits16-pretrain-lvd1689m"
    snapshot = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(snapshot.name)
    model, _ = _meta_checkpoint(seed=13)
    _hf_twin(model).save_pretrained(snapshot)
    assert cached_locally(get_spec("dinov3_vits16")) == "hugging face"
    loaded = load_model("dinov3_vits16", depth=2)
    assert torch.equal(loaded.storage_tokens, model.storage_tokens)


def _http_error(cls, status):
    response = types.SimpleNamespace(status_code=status, headers={}, request=None)
    return cls(
        f"{status} Client Error: access to model facebook/dinov3-vits16-pretrain-lvd1689m is restricted",
        response=response,
    )


@pytest.mark.parametrize("error", ["gated", "403"])
def test_gated_refusal_is_one_actionable_line(tmp_path, monkeypatch, capsys, error):
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError

    _empty_caches(tmp_path, monkeypatch, offline=False)
    refusal = _http_error(GatedRepoError, 401) if error == "gated" else _http_error(HfHubHTTPError, 403)

    def refuse(*args, **kwargs):
        raise refusal

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    with pytest.raises(WeightsError) as info:
        load_model("dinov3_vits16")
    message = str(info.value)
    assert "\n" not in message and "gated" in message
    for part in (
        "https://huggingface.co/facebook/dinov3-vits16-pretrain-lvd1689m",
        "HF_TOKEN",
        "weights=FILE",  # Python sees the field; the command line says --weights FILE
        "ai.meta.com",
    ):
        assert part in message
    from dinofeat.cli import main

    image = save_png(tmp_path / "a.png", np.zeros((32, 32, 3), np.uint8))
    assert main(["extract", str(image), "-o", str(tmp_path / "f.npz"), "--model", "dinov3_vits16"]) == 2
    err = capsys.readouterr().err
    said, error = err.splitlines()[-2:]  # what is tried, then the error
    assert said.startswith("dinofeat extract: looking for dinov3_vits16 weights")
    assert "accept the licence" in error.lower() and "pass --weights FILE" in error


def test_nothing_found_explains_every_source(tmp_path, monkeypatch):
    _empty_caches(tmp_path, monkeypatch)
    with pytest.raises(WeightsError) as info:
        load_model("dinov3_vitl16_sat493m")
    message = str(info.value)
    for part in (
        "torch hub cache",
        "dinov3_vitl16_pretrain_sat493m-*.pth",
        "Hugging Face hub facebook/dinov3-vitl16-pretrain-sat493m",
        "https://huggingface.co/facebook/dinov3-vitl16-pretrain-sat493m",
        "HF_TOKEN",
        "ai.meta.com/resources/models-and-libraries/dinov3-downloads",
        "weights=FILE",
    ):
        assert part in message
    assert "\n" not in message and "dl.fbaipublicfiles.com" not in message


def test_wrong_architecture_is_named(vits16_checkpoint, vits14_checkpoint):
    with pytest.raises(WeightsError, match="looks like dinov3_vits16 .*not dinov3_vitb16"):
        load_model("dinov3_vitb16", vits16_checkpoint)
    with pytest.raises(WeightsError, match="looks like dinov3_vits16 .*not dinov3_vits16plus"):
        load_model("dinov3_vits16plus", vits16_checkpoint)
    with pytest.raises(WeightsError, match="looks like dinov3_vits16 .*not dinov2_vits14_reg"):
        load_model("dinov2_vits14_reg", vits16_checkpoint)
    with pytest.raises(WeightsError, match="looks like dinov2_vits14 .*not dinov3_vits16"):
        load_model("dinov3_vits16", vits14_checkpoint)


# ---------------------------------------------------------------------------------------------
# extractor and CLI


def test_extractor_grids_at_patch_16(photo):
    vit = random_vit("dinov3_vits16", depth=2)
    fmap = Extractor(vit, device="cpu", precision="fp32", resolution=224).extract(photo)  # 451 x 300
    assert fmap.processed_size_wh == (336, 224) and fmap.grid_hw == (14, 21) and fmap.dim == 384
    assert fmap.patch_size == fmap.stride == 16
    assert fmap.register_tokens.shape == (4, 384)
    dense = Extractor(vit, device="cpu", precision="fp32", resolution=224, stride=8).extract(photo)
    assert dense.processed_size_wh == (336, 224) and dense.grid_hw == (27, 41)
    # processed pixel centre of patch (0, 0) is 7.5 at both strides
    assert np.allclose(fmap.grid_to_pixel(np.zeros((1, 2))), dense.grid_to_pixel(np.zeros((1, 2))))
    layers = Extractor(vit, device="cpu", resolution=64, layers=[0, -1]).extract(photo)
    key = Extractor(vit, device="cpu", resolution=64, facet="key").extract(photo)
    assert layers.dim == 768 and key.dim == 384 and layers.grid_hw == key.grid_hw == (4, 6)
    assert not torch.allclose(key.features, layers.features[..., 384:])
    with pytest.raises(InputError, match="stride"):
        Extractor(vit, device="cpu", stride=17)


def test_extractor_uses_the_satellite_normalisation():
    vit = build_model(get_spec("dinov3_vitl16_sat493m"), depth=1)
    extractor = Extractor(vit, device="cpu")
    assert torch.allclose(extractor._mean.flatten(), torch.tensor([0.430, 0.411, 0.296]) * 255)


def _vits16_options(checkpoint) -> list[str]:
    """The command-line options that select the random ViT-S/16 checkpoint, small and on the CPU."""
    return ["--model", "dinov3_vits16", "--weights", str(checkpoint), "--resolution", "64", "--device", "cpu"]


def test_cli_extract_end_to_end(tmp_path, photo, vits16_checkpoint):
    from safetensors import safe_open

    from dinofeat.cli import main

    image = save_png(tmp_path / "a.png", photo)
    out = tmp_path / "f.npz"
    options = _vits16_options(vits16_checkpoint)
    assert main(["extract", str(image), "-o", str(out), *options, "--precision", "fp32"]) == 0
    with np.load(out) as f:
        assert f["features_0"].shape == (4, 6, 384)
        assert str(f["model"]) == "dinov3_vits16" and f["processed_size_0"].tolist() == [96, 64]
    dense = tmp_path / "f.safetensors"
    dense_options = ["--stride", "8", "--layer", "3", "-1", "--facet", "value"]
    assert main(["extract", str(image), "-o", str(dense), *options, *dense_options]) == 0
    with safe_open(str(dense), "np") as f:
        assert f.get_tensor("features_0").shape == (7, 11, 768)
        assert f.metadata()["patch_size"] == "16" and f.metadata()["stride"] == "8"


def test_cli_models_lists_dinov3(tmp_path, monkeypatch, capsys):
    from dinofeat.cli import main

    _empty_caches(tmp_path, monkeypatch)
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:8] == ["name", "params", "patch", "registers", "dim", "cached", "gated", "hugging"]
    row = next(line.split() for line in lines if line.startswith("dinov3_vits16 "))
    assert row == [
        "dinov3_vits16",
        "21.6M",
        "16",
        "4",
        "384",
        "no",
        "yes",
        "facebook/dinov3-vits16-pretrain-lvd1689m",
        "vit_small_patch16_dinov3.lvd1689m",
    ]
    assert any(line.startswith("dinov3_vit7b16_sat493m ") for line in lines)
    assert next(line for line in lines if line.startswith("dinov2_vits14 ")).split()[-3] == "no"  # gated


def test_every_command_runs_with_a_dinov3_model(tmp_path, photo, vits16_checkpoint):
    """``--model dinov3_vits16`` works in match, pca and track (extract above), and in the app's session;
    the tracking window and cycle tolerance follow the 16-pixel patch."""
    from dinofeat.app import AppSession
    from dinofeat.cli import main
    from dinofeat.features.extractor import Extractor
    from dinofeat.io.video import VideoWriter

    args = [*_vits16_options(vits16_checkpoint), "--precision", "fp32"]
    a = save_png(tmp_path / "a.png", photo[:128, :192])
    b = save_png(tmp_path / "b.png", photo[16:144, 16:208])
    match_json = tmp_path / "m.json"
    assert main(["match", str(a), str(b), "--grid", "3", "--json", str(match_json), *args]) == 0
    assert json.loads(match_json.read_text())["model"] == "dinov3_vits16"
    assert main(["pca", str(a), str(b), "-o", str(tmp_path / "p.png"), *args]) == 0
    video = tmp_path / "v.mp4"
    with VideoWriter(video, fps=5, size_wh=(96, 64)) as sink:
        for k in range(3):
            sink.write(np.ascontiguousarray(photo[40:104, 100 + 16 * k : 196 + 16 * k]))
    track_json = tmp_path / "t.json"
    assert main(["track", str(video), "--point", "50,30", "--json", str(track_json), *args]) == 0
    assert len(json.loads(track_json.read_text())["tracks"][0]["points"]) == 3
    session = AppSession(
        Extractor(random_vit("dinov3_vits16", depth=2), resolution=64, device="cpu"), workdir=tmp_path / "app"
    )
    image = np.ascontiguousarray(photo[:64, :96])
    view = session.match(image, image, [[40.0, 30.0]])
    assert view.data["model"] == "dinov3_vits16" and len(view.data["matches"]) == 1
