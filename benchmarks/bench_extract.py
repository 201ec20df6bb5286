"""Images/s of dinofeat's ViT vs transformers' Dinov2Model (same weights, SDPA), same run.

    python benchmarks/bench_extract.py            # 224, 448, 518 px; fp32 and bf16
    python benchmarks/bench_extract.py --quick    # smoke run

Both models get the same normalised batch; the time is the forward pass only (inference mode,
autocast for bf16). Ratios > 1 mean dinofeat is faster. Absolute numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from dinofeat.devices import autocast
from dinofeat.registry import get_spec
from dinofeat.vit import DinoVisionTransformer
from dinofeat.weights import load_model


def build_models(depth: int | None):
    import transformers

    spec = get_spec("dinov2_vits14")
    config = transformers.Dinov2Config(hidden_size=spec.embed_dim, num_attention_heads=spec.num_heads,
                                       num_hidden_layers=depth or spec.depth, image_size=518, patch_size=14,
                                       attn_implementation="sdpa")
    hf = transformers.Dinov2Model(config).eval()
    with tempfile.TemporaryDirectory() as folder:
        hf.save_pretrained(folder)
        ours = load_model("dinov2_vits14", folder, depth=depth)
    return ours, hf


def images_per_second(fns, x: torch.Tensor, reps: int) -> list[float]:
    """Median images/s of each function, runs interleaved so that load drift hits all alike."""
    for fn in fns:
        fn(x)  # warm-up
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(reps):
        for fn, bucket in zip(fns, times):
            start = time.perf_counter()
            fn(x)
            bucket.append(time.perf_counter() - start)
    return [x.shape[0] / statistics.median(bucket) for bucket in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    sizes, precisions, depth, reps = [224, 448, 518], ["fp32", "bf16"], None, args.reps
    if args.quick:
        sizes, precisions, depth, reps = [224], ["fp32"], 2, 2
    device = torch.device(args.device)
    ours, hf = build_models(depth)
    ours, hf = ours.to(device), hf.to(device)
    print(f"device={device} threads={torch.get_num_threads()} batch={args.batch} model=ViT-S/14 depth={depth or 12}")
    print(f"{'size':>5} {'prec':>5} {'dinofeat img/s':>15} {'transformers img/s':>19} {'ratio':>6}")
    for precision in precisions:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
        for size in sizes:
            x = torch.randn(args.batch, 3, size, size, device=device)

            def run_ours(batch):
                with torch.inference_mode(), autocast(device, dtype):
                    return ours.forward_features(batch).patch_tokens[0]

            def run_hf(batch):
                with torch.inference_mode(), autocast(device, dtype):
                    return hf(pixel_values=batch).last_hidden_state

            ours_ips, hf_ips = images_per_second([run_ours, run_hf], x, reps)
            print(f"{size:>5} {precision:>5} {ours_ips:>15.2f} {hf_ips:>19.2f} {ours_ips / hf_ips:>6.2f}")


if __name__ == "__main__":
    main()
