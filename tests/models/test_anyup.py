"""AnyUp (models/anyup.py) against an independent dense reimplementation of the official forward
(written here from the paper's and the official code's arithmetic: a dense pixels x patches window
mask and a dense attention matrix), on random weights."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dinofeat.errors import WeightsError
from dinofeat.models.anyup import AnyUp, window_bounds, window_runs
from dinofeat.models.weights import load_anyup

State = dict[str, torch.Tensor]

#: fp32: the windowed and the dense forms agree to this (absolute, features of unit scale).
FP32_TOLERANCE = 1e-4
#: bf16 autocast against the fp32 reference: largest error over the largest feature magnitude.
BF16_RELATIVE_TOLERANCE = 0.05  # measured 0.038 (bf16 keeps 8 bits of mantissa)
#: The same for fp16 autocast (measured 0.010).
FP16_RELATIVE_TOLERANCE = 0.02


def random_state(model: AnyUp, seed: int = 0) -> State:
    """The model's state with every tensor perturbed (norm weights away from 1, biases away from 0)."""
    gen = torch.Generator().manual_seed(seed)
    return {k: v + 0.2 * torch.randn(v.shape, generator=gen) for k, v in model.state_dict().items()}


def _res_block(x: torch.Tensor, state: State, prefix: str) -> torch.Tensor:
    y = F.silu(F.group_norm(x, 8, state[prefix + "block.0.weight"], state[prefix + "block.0.bias"]))
    y = F.conv2d(y, state[prefix + "block.2.weight"])
    y = F.silu(F.group_norm(y, 8, state[prefix + "block.3.weight"], state[prefix + "block.3.bias"]))
    return F.conv2d(y, state[prefix + "block.5.weight"]) + x


def _encode(x: torch.Tensor, state: State, name: str) -> torch.Tensor:
    return _res_block(_res_block(x, state, f"{name}.1."), state, f"{name}.2.")


def _unify(feats: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    b, c, h, w = feats.shape
    out, k = basis.shape[0], basis.shape[-1]
    pad = k // 2
    response = F.conv2d(F.pad(feats, [pad] * 4), basis.repeat(c, 1, 1, 1), groups=c)
    taps = F.conv2d(F.pad(torch.ones(1, 1, h, w), [pad] * 4), torch.ones(1, 1, k, k))
    return (response / taps).view(b, out, c, h, w).softmax(dim=1).mean(dim=2)


def _rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    b, d, h, w = x.shape
    grid = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    angle = torch.stack(grid, dim=-1).view(h * w, 2) @ freqs  # (HW, D)
    tokens = x.flatten(2).transpose(1, 2)  # (B, HW, D)
    first, second = tokens.chunk(2, dim=-1)
    turned = torch.cat((-second, first), dim=-1)
    rotated = tokens * angle.cos() + turned * angle.sin()
    return rotated.transpose(1, 2).view(b, d, h, w)


def dense_window_mask(out_hw: tuple[int, int], grid_hw: tuple[int, int], ratio: float) -> torch.Tensor:
    """``(H_out * W_out, h * w)`` bool, True where a pixel may attend to a patch (the dense form)."""
    (out_h, out_w), (h, w) = out_hw, grid_hw
    ys = (torch.arange(out_h, dtype=torch.float32) + 0.5) / out_h
    xs = (torch.arange(out_w, dtype=torch.float32) + 0.5) / out_w
    y0 = ((ys - ratio).clamp(0, 1) * h).floor()[:, None, None, None]
    y1 = ((ys + ratio).clamp(0, 1) * h).ceil()[:, None, None, None]
    x0 = ((xs - ratio).clamp(0, 1) * w).floor()[None, :, None, None]
    x1 = ((xs + ratio).clamp(0, 1) * w).ceil()[None, :, None, None]
    rows = torch.arange(h)[None, None, :, None]
    cols = torch.arange(w)[None, None, None, :]
    ok = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
    return ok.reshape(out_h * out_w, h * w)


def dense_reference(
    state: State,
    image: torch.Tensor,
    feats: torch.Tensor,
    out_hw: tuple[int, int],
    heads: int = 4,
    ratio: float = 0.1,
) -> torch.Tensor:
    """The official forward, dense: ``(B, C, H_out, W_out)``."""
    enc = F.conv2d(image, state["image_encoder.0.weight"])
    enc = _rope(_encode(enc, state, "image_encoder"), state["rope.freqs"])
    q = _encode(F.conv2d(enc, state["query_encoder.0.weight"]), state, "query_encoder")
    q = F.adaptive_avg_pool2d(q, out_hw)
    k = _encode(F.conv2d(enc, state["key_encoder.0.weight"]), state, "key_encoder")
    k = F.adaptive_avg_pool2d(k, feats.shape[-2:])
    lfu = _encode(
        _unify(F.normalize(feats, dim=1), state["key_features_encoder.0.basis"]), state, "key_features_encoder"
    )
    merged = F.conv2d(F.pad(torch.cat([k, lfu], 1), [1] * 4, mode="reflect"), state["aggregation.0.weight"])
    k = _encode(merged, state, "aggregation")
    q = F.conv2d(q, state["cross_decode.conv2d.weight"], padding=1)
    b, d, out_h, out_w = q.shape
    _, c, h, w = feats.shape
    q = F.rms_norm(q.flatten(2).transpose(1, 2), (d,), state["cross_decode.cross_attn.norm_q.weight"])
    k = F.rms_norm(k.flatten(2).transpose(1, 2), (d,), state["cross_decode.cross_attn.norm_k.weight"])
    w_in, b_in = (
        state["cross_decode.cross_attn.attention.in_proj_weight"],
        state["cross_decode.cross_attn.attention.in_proj_bias"],
    )
    q = F.linear(q, w_in[:d], b_in[:d]).view(b, -1, heads, d // heads).transpose(1, 2)
    k = F.linear(k, w_in[d : 2 * d], b_in[d : 2 * d]).view(b, -1, heads, d // heads).transpose(1, 2)
    logits = (q / math.sqrt(d // heads)) @ k.transpose(-1, -2)  # (B, heads, pixels, patches)
    mask = dense_window_mask((out_h, out_w), (h, w), ratio)
    weights = logits.masked_fill(~mask, float("-inf")).softmax(dim=-1).mean(dim=1)
    out = weights @ feats.flatten(2).transpose(1, 2)  # (B, pixels, C)
    return out.transpose(1, 2).reshape(b, c, out_h, out_w)


@pytest.fixture(scope="module")
def anyup() -> tuple[AnyUp, State]:
    model = AnyUp().eval()
    state = random_state(model)
    model.load_state_dict(state, strict=True)
    return model, state


@pytest.mark.parametrize(
    ("image_hw", "grid_hw", "channels", "out_hw"),
    [
        ((56, 56), (4, 4), 384, (24, 24)),  # square
        ((42, 70), (3, 5), 768, (20, 33)),  # not square
        ((48, 64), (3, 4), 1024, (17, 25)),  # odd
        ((28, 42), (2, 3), 384, None),  # the image's size
        ((64, 48), (4, 3), 384, (9, 70)),  # finer than the image along one axis only
    ],
)
def test_matches_the_dense_reference_in_fp32(anyup, image_hw, grid_hw, channels, out_hw):
    model, state = anyup
    gen = torch.Generator().manual_seed(channels)
    image = torch.randn(2, 3, *image_hw, generator=gen)
    feats = torch.randn(2, channels, *grid_hw, generator=gen)
    with torch.no_grad():
        ours = model(image, feats, out_hw)
        reference = dense_reference(state, image, feats, out_hw or image_hw)
    assert ours.shape == reference.shape == (2, channels, *(out_hw or image_hw))
    assert (ours - reference).abs().max() < FP32_TOLERANCE


def test_small_memory_budgets_give_the_same_result(anyup):
    model, _ = anyup
    gen = torch.Generator().manual_seed(1)
    image, feats = torch.randn(1, 3, 42, 56, generator=gen), torch.randn(1, 384, 3, 4, generator=gen)
    with torch.no_grad():
        roomy = model(image, feats, (30, 41))
        tight = model(image, feats, (30, 41), memory_budget=1)  # one row at a time
    assert (roomy - tight).abs().max() < FP32_TOLERANCE


@pytest.mark.parametrize(
    ("dtype", "tolerance"), [(torch.bfloat16, BF16_RELATIVE_TOLERANCE), (torch.float16, FP16_RELATIVE_TOLERANCE)]
)
def test_half_precision_autocast_is_close_to_the_fp32_reference(anyup, dtype, tolerance):
    model, state = anyup
    gen = torch.Generator().manual_seed(2)
    image, feats = torch.randn(1, 3, 56, 42, generator=gen), torch.randn(1, 384, 4, 3, generator=gen)
    with torch.no_grad():
        reference = dense_reference(state, image, feats, (31, 23))
        with torch.autocast("cpu", dtype=dtype):
            ours = model(image, feats, (31, 23))
    assert ours.dtype == torch.float32  # the values' dtype
    error = (ours - reference).abs().max() / reference.abs().max()
    assert error < tolerance


def test_output_is_a_convex_mix_of_the_input_features():
    model = AnyUp(dim=16, heads=2).eval()
    feats = torch.randn(1, 8, 3, 5)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 42, 70), feats, (13, 29))
    assert (out.amin(dim=(2, 3)) >= feats.amin(dim=(2, 3)) - 1e-5).all()
    assert (out.amax(dim=(2, 3)) <= feats.amax(dim=(2, 3)) + 1e-5).all()


@pytest.mark.parametrize(("out_len", "grid_len"), [(448, 32), (17, 3), (5, 9), (1, 1), (30, 30)])
def test_windows_are_the_dense_masks_rows_and_columns(out_len, grid_len):
    mask = dense_window_mask((out_len, 1), (grid_len, 1), 0.1).view(out_len, grid_len)
    bounds = window_bounds(out_len, grid_len, 0.1)
    for i, (start, stop) in enumerate(bounds.tolist()):
        assert 0 <= start < stop <= grid_len
        assert torch.nonzero(mask[i])[:, 0].tolist() == list(range(start, stop))
    runs = window_runs(out_len, grid_len, 0.1)
    assert [r.start for r in runs] == [0] + [r.stop for r in runs[:-1]] and runs[-1].stop == out_len


def _peak_cpu_bytes(fn) -> int:
    """Peak of the bytes allocated by torch on the CPU while ``fn`` runs (the profiler's memory events)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e for e in prof.events() if e.cpu_memory_usage != 0 and e.name == "[memory]"),
        key=lambda e: e.time_range.start,
    )
    current = peak = 0
    for event in events:
        current += event.cpu_memory_usage
        peak = max(peak, current)
    return peak


_PEAK_SCRIPT = """
import resource, sys, torch
from dinofeat.models.anyup import WindowCrossAttention
torch.set_num_threads(1)
side, grid, channels, budget = (int(a) for a in sys.argv[1:])
torch.manual_seed(0)
model = WindowCrossAttention(16, 2).eval()
q = torch.randn(1, 16, side, side)
k, v = torch.randn(1, 16, grid, grid), torch.randn(1, channels, grid, grid)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with torch.no_grad():
    out = model(q, k, v, memory_budget=budget)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


def _peak_rss_bytes(side: int, grid: int, channels: int, budget: int) -> int:
    """Growth of the peak resident memory of a fresh process while it runs the window attention
    for ``side x side`` queries over a ``grid x grid`` patch map (inputs made before measuring)."""
    import subprocess
    import sys

    args = [sys.executable, "-c", _PEAK_SCRIPT, str(side), str(grid), str(channels), str(budget)]
    return int(subprocess.run(args, capture_output=True, text=True, check=True).stdout.split()[-1])


def test_attention_memory_grows_with_pixels_times_window_not_pixels_times_patches():
    grid, channels, budget, heads = 32, 32, 16 * 2**20, 2
    for side in (448, 896):
        peak = _peak_rss_bytes(side, grid, channels, budget)
        pixels = side * side
        dense = pixels * grid * grid * heads * 4  # the dense form's attention logits alone, float32
        # what must exist: the output (channels last) and the convolved queries, float32
        unavoidable = pixels * (channels + 16) * 4
        assert peak < unavoidable + 2 * budget + 64 * 2**20
        assert peak < dense / 8


# -- weights ---------------------------------------------------------------------------------------


def official_shapes(dim: int = 128) -> dict[str, tuple[int, ...]]:
    """Key names and shapes of the released ``anyup_multi_backbone.pth`` / ``anyup_paper.pth``."""
    shapes: dict[str, tuple[int, ...]] = {}
    first = {
        "image_encoder": (dim, 3, 1, 1),
        "key_encoder": (dim, dim, 1, 1),
        "query_encoder": (dim, dim, 1, 1),
        "key_features_encoder": (dim, 1, 5, 5),
        "aggregation": (dim, 2 * dim, 3, 3),
    }
    for encoder, shape in first.items():
        shapes[f"{encoder}.0.{'basis' if encoder == 'key_features_encoder' else 'weight'}"] = shape
        for block in (1, 2):
            for norm in (0, 3):
                shapes[f"{encoder}.{block}.block.{norm}.weight"] = (dim,)
                shapes[f"{encoder}.{block}.block.{norm}.bias"] = (dim,)
            for conv in (2, 5):
                shapes[f"{encoder}.{block}.block.{conv}.weight"] = (dim, dim, 1, 1)
    attention = "cross_decode.cross_attn."
    shapes |= {
        attention + "norm_q.weight": (dim,),
        attention + "norm_k.weight": (dim,),
        attention + "attention.in_proj_weight": (3 * dim, dim),
        attention + "attention.in_proj_bias": (3 * dim,),
        attention + "attention.out_proj.weight": (dim, dim),
        attention + "attention.out_proj.bias": (dim,),
        "cross_decode.conv2d.weight": (dim, dim, 3, 3),
        "rope.freqs": (2, dim),
    }
    return shapes


def official_random_state(seed: int = 3) -> State:
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=gen) for name, shape in official_shapes().items()}


def test_state_dict_keys_and_shapes_are_the_released_ones():
    ours = {k: tuple(v.shape) for k, v in AnyUp().state_dict().items()}
    assert ours == official_shapes()


def test_a_released_format_checkpoint_loads_strictly(tmp_path):
    state = official_random_state()
    path = tmp_path / "anyup_multi_backbone.pth"
    torch.save(state, path)
    model = load_anyup(path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name]), name


def test_the_released_name_is_found_in_the_torch_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    state = official_random_state(4)
    torch.save(state, checkpoints / "anyup_paper.pth")
    model = load_anyup("anyup_paper")
    assert torch.equal(model.rope.freqs, state["rope.freqs"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError, match="anyup_multi_backbone"):  # the default is another file
        load_anyup()


def test_nothing_found_offline_is_one_line_naming_what_was_tried(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError) as info:
        load_anyup()
    message = str(info.value)
    assert "\n" not in message
    for part in ("torch hub cache", "checkpoint_v2/anyup_multi_backbone.pth", "upsample_weights=FILE"):
        assert part in message


def test_missing_unexpected_and_misshapen_keys_are_named(tmp_path):
    state = official_random_state()
    del state["rope.freqs"]
    state["cross_decode.extra.weight"] = torch.zeros(3)
    state["cross_decode.conv2d.weight"] = torch.zeros(128, 128, 1, 1)
    path = tmp_path / "odd.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError) as info:
        load_anyup(path)
    message = str(info.value)
    assert "1 missing keys (first: rope.freqs)" in message
    assert "1 unexpected keys (first: cross_decode.extra.weight)" in message
    assert "cross_decode.conv2d.weight (128, 128, 1, 1), expected (128, 128, 3, 3)" in message
    assert "\n" not in message


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n" + b"\0" * 64, b"plain text, not weights\n"])
def test_a_wrong_file_is_one_line(tmp_path, content):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(WeightsError) as info:
        load_anyup(path)
    message = str(info.value)
    assert "\n" not in message and "expected an AnyUp state dict" in message and str(path) in message
