"""The forward pass equals the official model (via transformers' port) on random weights."""

import math

import pytest
import torch
import torch.nn.functional as F

from dinofeat.models.registry import get_spec
from dinofeat.models.weights import load_model

transformers = pytest.importorskip("transformers")

from conftest import random_vit  # noqa: E402


def _hf_model(registers: bool, swiglu: bool = False, hidden=384, heads=6, layers=2, image_size=518, seed=0):
    torch.manual_seed(seed)
    kwargs = {
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "image_size": image_size,
        "patch_size": 14,
        "use_swiglu_ffn": swiglu,
        "layerscale_value": 1.0,
        "attn_implementation": "sdpa",
    }
    if registers:
        model = transformers.Dinov2WithRegistersModel(
            transformers.Dinov2WithRegistersConfig(num_register_tokens=4, **kwargs)
        )
    else:
        model = transformers.Dinov2Model(transformers.Dinov2Config(**kwargs))
    with torch.no_grad():  # make LayerScale and norms non-trivial so every weight matters
        for name, p in model.named_parameters():
            if "lambda1" in name or "norm" in name:
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif name.endswith(("cls_token", "register_tokens", "position_embeddings")):
                p.copy_(torch.randn_like(p))
    return model.eval()


def _ours_from_hf(hf_model, name, tmp_path):
    hf_model.save_pretrained(tmp_path)
    return load_model(name, tmp_path, depth=hf_model.config.num_hidden_layers)


def _hf_at_size(hf_model, ours, size):
    """A copy of hf_model whose positional embedding is ours, resized officially to size x size."""
    grid = size // 14
    config = hf_model.config.__class__(**{**hf_model.config.to_dict(), "image_size": size})
    resized = hf_model.__class__(config).eval()
    state = hf_model.state_dict()
    state["embeddings.position_embeddings"] = ours.interpolate_pos_encoding((grid, grid)).detach()
    resized.load_state_dict(state)
    return resized


CASES = [
    ("dinov2_vits14", False, False, 384, 6),
    ("dinov2_vits14_reg", True, False, 384, 6),
    ("dinov2_vitg14", False, True, 1536, 24),
]


@pytest.mark.parametrize("name,registers,swiglu,hidden,heads", CASES)
@pytest.mark.parametrize("size", [518, 224, 448])
def test_matches_transformers(tmp_path, name, registers, swiglu, hidden, heads, size):
    layers = 1 if swiglu else 2
    hf = _hf_model(registers, swiglu, hidden, heads, layers)
    ours = _ours_from_hf(hf, name, tmp_path)
    reference = hf if size == 518 else _hf_at_size(hf, ours, size)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    with torch.inference_mode():
        expected = reference(pixel_values=x).last_hidden_state
        out = ours.forward_features(x)
    first_patch = 1 + (4 if registers else 0)
    assert (out.patch_tokens[0] - expected[:, first_patch:]).abs().max() <= 1e-4
    assert (out.cls_token - expected[:, 0]).abs().max() <= 1e-4
    if registers:
        assert (out.register_tokens - expected[:, 1:5]).abs().max() <= 1e-4


def _official_interpolation(pos_embed, height, width, patch, offset, antialias):
    """The official dinov2 `interpolate_pos_encoding`, with its own (w, h) naming kept literally."""
    w, h = height, width  # the official code unpacks `B, nc, w, h = x.shape`
    n = pos_embed.shape[1] - 1
    if (w // patch) * (h // patch) == n and w == h:
        return pos_embed
    patch_pos = pos_embed[:, 1:].float()
    dim = pos_embed.shape[-1]
    w0, h0 = w // patch, h // patch
    m = int(math.sqrt(n))
    if offset:
        kwargs = {"scale_factor": (float(w0 + offset) / m, float(h0 + offset) / m)}
    else:
        kwargs = {"size": (w0, h0)}
    patch_pos = F.interpolate(
        patch_pos.reshape(1, m, m, dim).permute(0, 3, 1, 2), mode="bicubic", antialias=antialias, **kwargs
    )
    patch_pos = patch_pos.permute(0, 2, 3, 1).view(1, -1, dim)
    return torch.cat((pos_embed[:, :1].float(), patch_pos), dim=1)


@pytest.mark.parametrize("name", ["dinov2_vits14", "dinov2_vits14_reg"])
@pytest.mark.parametrize("height,width", [(224, 308), (308, 224), (448, 602), (518, 518), (14, 700)])
def test_nonsquare_positional_embedding_follows_official_rule(name, height, width):
    vit = random_vit(name, depth=1)
    spec = get_spec(name)
    expected = _official_interpolation(
        vit.pos_embed.detach(), height, width, 14, spec.interpolate_offset, spec.interpolate_antialias
    )
    got = vit.interpolate_pos_encoding((height // 14, width // 14))
    assert got.shape == expected.shape
    assert torch.equal(got, expected)


def test_rows_and_columns_get_their_own_scale():
    """A positional embedding that encodes (row, col) linearly is resampled per axis."""
    vit = random_vit("dinov2_vits14", depth=1)
    rows, cols = torch.meshgrid(torch.arange(37.0), torch.arange(37.0), indexing="ij")
    pos = torch.zeros(1, 1 + 37 * 37, 384)
    pos[0, 1:, 0], pos[0, 1:, 1] = rows.flatten(), cols.flatten()
    original = vit.pos_embed.data.clone()
    try:
        vit.pos_embed.data.copy_(pos)
        grid = vit.interpolate_pos_encoding((16, 22))[0, 1:].reshape(16, 22, -1)
    finally:
        vit.pos_embed.data.copy_(original)
    # official source coordinate: (i + 0.5) * 37 / (n + 0.1) - 0.5, per axis; bicubic follows
    # a linear ramp up to the ~0.05 wiggle of its a=-0.75 kernel
    i, j = torch.arange(3, 13.0), torch.arange(3, 19.0)
    assert torch.allclose(grid[3:13, 10, 0], (i + 0.5) * 37 / 16.1 - 0.5, atol=0.08)
    assert torch.allclose(grid[8, 3:19, 1], (j + 0.5) * 37 / 22.1 - 0.5, atol=0.08)
    assert torch.allclose(grid[3:13, :, 0], grid[3:13, :1, 0].expand(-1, 22), atol=1e-5)


def test_intermediate_layers_and_facets():
    vit = random_vit("dinov2_vits14", depth=3)
    x = torch.randn(1, 3, 56, 42)
    with torch.inference_mode():
        full = vit.forward_features(x, layers=(0, 1, -1))
        key = vit.forward_features(x, layers=(1,), facet="key")
        block1_in = vit.prepare_tokens(x)[0]
        block1_in = vit.blocks[0](block1_in)[0]
        qkv = vit.blocks[1].attn.qkv(vit.blocks[1].norm1(block1_in))
    assert [t.shape for t in full.patch_tokens] == [(1, 12, 384)] * 3
    assert torch.allclose(full.patch_tokens[2], vit(x))
    expected_key = qkv[:, 1:, 384:768]
    assert torch.allclose(key.patch_tokens[0], expected_key, atol=1e-6)


def test_overlapping_patches_give_denser_grid():
    vit = random_vit("dinov2_vits14", depth=1)
    x = torch.randn(1, 3, 56, 70)
    out = vit.forward_features(x, stride=7)
    assert out.grid_hw == (7, 9)
    assert out.patch_tokens[0].shape == (1, 63, 384)
    # the even positions of a stride-7 grid see exactly the stride-14 patches (before attention)
    dense = vit.patch_embed(x, 7).reshape(1, 7, 9, -1)
    sparse = vit.patch_embed(x, 14).reshape(1, 4, 5, -1)
    assert torch.allclose(dense[:, ::2, ::2], sparse, atol=1e-5)


def test_bad_layer_and_facet():
    from dinofeat.errors import InputError

    vit = random_vit("dinov2_vits14", depth=2)
    with pytest.raises(InputError, match="layers=5 does not exist"):
        vit.forward_features(torch.zeros(1, 3, 28, 28), layers=(5,))
    with pytest.raises(InputError, match="facet"):
        vit.forward_features(torch.zeros(1, 3, 28, 28), facet="attn")


def test_the_feed_forward_width_is_the_specs():
    """One formula, ModelSpec.ffn_hidden, for both families and both FFN kinds (its rounding too)."""
    import dataclasses

    from dinofeat.models.build import build_model
    from dinofeat.models.registry import MODELS

    odd = dataclasses.replace(get_spec("dinov2_vitg14"), embed_dim=100, num_heads=4, depth=1, ffn_align=64)
    assert odd.ffn_hidden == 320  # 2/3 of 400 = 266, rounded up to a multiple of 64
    for spec in [*(s for s in MODELS.values() if s.family == "dinov2"), odd]:
        with torch.device("meta"):
            mlp = build_model(dataclasses.replace(spec, depth=1)).blocks[0].mlp
        inner = mlp.w3.in_features if spec.ffn == "swiglu" else mlp.fc2.in_features
        assert inner == spec.ffn_hidden, spec.name
