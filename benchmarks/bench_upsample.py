"""AnyUp upsampling: our window attention against the official dense form, and against the backbone.

    python benchmarks/bench_upsample.py                  # 224, 448 and 896 pixels square, CPU
    python benchmarks/bench_upsample.py --sizes 224 448  # fewer sizes
    python benchmarks/bench_upsample.py --device cuda    # on a GPU (peak memory from torch.cuda)

For each size S: an S x S image with ViT-S/14 features (384 channels, an S/14 grid, random values)
upsampled to S x S by AnyUp with random weights (the released architecture, so the cost is the
real one):

* **ours**: :class:`dinofeat.models.anyup.AnyUp` (each pixel attends to its window's patches only,
  chunks under the default memory budget);
* **dense**: the same weights and encoders with the official attention form, a dense
  (pixels x patches) window mask and a dense (heads x pixels x patches) attention matrix; skipped
  where its attention alone would exceed ``--dense-limit-gb`` (the size is printed instead). Its
  output is compared with ours (largest absolute difference);
* **backbone**: the forward pass of DINOv2 ViT-S/14 (random weights, all 12 blocks) on the same
  S x S image through :class:`~dinofeat.features.extractor.Extractor`, for scale.

Each measurement runs in its own process: time is the best of ``--repeat`` runs, peak memory the
growth of the process's peak resident memory (``ru_maxrss``) over the run, after the inputs and
the model exist (CUDA: ``torch.cuda.max_memory_allocated``). Absolute numbers depend on the
machine and its load; the ratios in one run are what to read.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHANNELS = 384  # ViT-S
PATCH = 14
HEADS = 4


def _inputs(size: int, device):
    import torch

    gen = torch.Generator().manual_seed(0)
    image = torch.randn(1, 3, size, size, generator=gen).to(device)
    grid = size // PATCH
    feats = torch.randn(1, CHANNELS, grid, grid, generator=gen).to(device)
    return image, feats


def _model(device):
    import torch

    from dinofeat.models.anyup import AnyUp

    torch.manual_seed(0)
    return AnyUp().eval().to(device)


def dense_upsample(model, image, feats, out_hw: tuple[int, int]):
    """The official forward's attention form on our model's weights: dense mask, dense attention,
    heads averaged, the unprojected features mixed. ``(B, H_out, W_out, C)``."""
    import torch
    import torch.nn.functional as F

    encoded = model.rope(model.image_encoder(image))
    q = F.adaptive_avg_pool2d(model.query_encoder(encoded), out_hw)
    k = F.adaptive_avg_pool2d(model.key_encoder(encoded), tuple(feats.shape[-2:]))
    k = model.aggregation(torch.cat([k, model.key_features_encoder(F.normalize(feats, dim=1))], dim=1))
    decode = model.cross_decode
    q = decode.conv2d(q)
    b, d, out_h, out_w = q.shape
    _, c, h, w = feats.shape
    attn = decode.cross_attn
    q = attn.attention.project(attn.norm_q(q.flatten(2).transpose(1, 2)), 0)
    k = attn.attention.project(attn.norm_k(k.flatten(2).transpose(1, 2)), 1)
    q = q.view(b, -1, HEADS, d // HEADS).transpose(1, 2)
    k = k.view(b, -1, HEADS, d // HEADS).transpose(1, 2)
    mask = _dense_mask(out_h, out_w, h, w, decode.window_ratio, q.device)  # (pixels, patches) bool
    logits = (q / math.sqrt(d // HEADS)) @ k.transpose(-1, -2)
    weights = logits.masked_fill(~mask, float("-inf")).softmax(dim=-1).mean(dim=1)
    out = weights @ feats.flatten(2).transpose(1, 2)
    return out.view(b, out_h, out_w, c)


def _dense_mask(out_h, out_w, h, w, ratio, device):
    import torch

    from dinofeat.models.anyup import window_bounds

    rows, cols = window_bounds(out_h, h, ratio).to(device), window_bounds(out_w, w, ratio).to(device)
    patch_rows, patch_cols = torch.arange(h, device=device), torch.arange(w, device=device)
    row_ok = (patch_rows[None] >= rows[:, :1]) & (patch_rows[None] < rows[:, 1:])  # (H_out, h)
    col_ok = (patch_cols[None] >= cols[:, :1]) & (patch_cols[None] < cols[:, 1:])  # (W_out, w)
    return (row_ok[:, None, :, None] & col_ok[None, :, None, :]).reshape(out_h * out_w, h * w)


def worker(kind: str, size: int, device_name: str, repeat: int, out: str | None) -> dict:
    """One measurement in this process: seconds (best of ``repeat``) and peak memory growth."""
    import numpy as np
    import torch

    device = torch.device(device_name)
    result: dict = {}
    with torch.inference_mode():
        if kind == "backbone":
            from dinofeat.features.extractor import Extractor
            from dinofeat.models.build import build_model
            from dinofeat.models.registry import get_spec

            vit = build_model(get_spec("dinov2_vits14")).init_random(0).eval()
            extractor = Extractor(vit, resolution=size, max_size=None, device=device, precision="fp32")
            picture = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
            run = lambda: extractor.extract(picture)
        else:
            model = _model(device)
            image, feats = _inputs(size, device)
            if kind == "ours":
                run = lambda: model.upsample(image, feats, (size, size))
            else:
                run = lambda: dense_upsample(model, image, feats, (size, size))
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        best = math.inf
        output = None
        for _ in range(repeat):
            output = None
            start = time.perf_counter()
            output = run()
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        if device.type == "cuda":
            result["peak_bytes"] = torch.cuda.max_memory_allocated() - base
        else:
            result["peak_bytes"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
        result["seconds"] = best
        if out is not None and kind != "backbone":
            np.save(out, output.float().cpu().numpy())
    return result


def _measure(kind: str, size: int, args: argparse.Namespace, out: str | None = None) -> dict:
    command = [sys.executable, __file__, "--worker", kind, str(size), "--device", args.device]
    command += ["--repeat", str(args.repeat)] + (["--save", out] if out else [])
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1][:80]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _mb(count: float) -> str:
    return f"{count / 2**20:,.0f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 448, 896])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--dense-limit-gb", type=float, default=8.0)
    parser.add_argument("--worker", nargs=2, metavar=("KIND", "SIZE"), help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, size = args.worker
        print(json.dumps(worker(kind, int(size), args.device, args.repeat, args.save)))
        return
    import numpy as np

    print(f"AnyUp upsampling, ViT-S/14 features ({CHANNELS} channels), output = image size, device {args.device}")
    print("| size | ours: time | ours: peak | dense: time | dense: peak | max abs diff | backbone | ours / backbone |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            grid = size // PATCH
            dense_bytes = 2 * HEADS * size * size * grid * grid * 4  # logits and their softmax, float32
            ours_file, dense_file = str(Path(tmp) / "ours.npy"), str(Path(tmp) / "dense.npy")
            ours = _measure("ours", size, args, ours_file)
            if dense_bytes <= args.dense_limit_gb * 2**30:
                dense = _measure("dense", size, args, dense_file)
            else:
                dense = {"error": f"skipped: its attention alone needs {dense_bytes / 2**30:.0f} GB"}
            backbone = _measure("backbone", size, args)
            diff = "-"
            if "error" not in ours and "error" not in dense:
                diff = f"{np.abs(np.load(ours_file) - np.load(dense_file)).max():.1e}"
            cells = [f"{size}x{size}"]
            for result in (ours, dense):
                if "error" in result:
                    cells += [result["error"], "-"]
                else:
                    cells += [f"{result['seconds']:.2f} s", _mb(result["peak_bytes"])]
            cells.append(diff)
            if "error" in backbone or "error" in ours:
                cells += [backbone.get("error", "-"), "-"]
            else:
                cells += [f"{backbone['seconds']:.2f} s", f"{ours['seconds'] / backbone['seconds']:.2f}x"]
            print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
