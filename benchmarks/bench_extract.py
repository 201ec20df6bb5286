"""Images/s of dinofeat's ViTs vs transformers' (same weights, SDPA), same run.

ViT-S/14 against ``Dinov2Model`` and DINOv3 ViT-S/16 against ``DINOv3ViTModel``:

    python benchmarks/bench_extract.py                    # both; 224, 448, 518 px (DINOv3: 224, 448, 512)
    python benchmarks/bench_extract.py --family dinov3    # one family
    python benchmarks/bench_extract.py --quick            # smoke run

Both models get the same normalised batch; the time is the forward pass only (inference mode,
autocast for bf16), the two models' runs interleaved. Ratios > 1 mean dinofeat is faster.
Absolute numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from dinofeat.models.registry import get_spec
from dinofeat.models.weights import load_model
from dinofeat.runtime.devices import autocast

MODELS = {"dinov2": "dinov2_vits14", "dinov3": "dinov3_vits16"}
SIZES = {"dinov2": [224, 448, 518], "dinov3": [224, 448, 512]}  # multiples of the patch size


def build_models(family: str, depth: int | None):
    """dinofeat's model and transformers' with the same random weights (saved by transformers, loaded by us)."""
    import transformers

    spec = get_spec(MODELS[family])
    layers = depth or spec.depth
    if family == "dinov2":
        config = transformers.Dinov2Config(
            hidden_size=spec.embed_dim,
            num_attention_heads=spec.num_heads,
            num_hidden_layers=layers,
            image_size=518,
            patch_size=14,
            attn_implementation="sdpa",
        )
        hf = transformers.Dinov2Model(config).eval()
    else:
        config = transformers.DINOv3ViTConfig(
            hidden_size=spec.embed_dim,
            num_attention_heads=spec.num_heads,
            intermediate_size=spec.ffn_hidden,
            num_hidden_layers=layers,
            num_register_tokens=spec.num_registers,
            patch_size=16,
            layer_norm_eps=1e-5,
            attn_implementation="sdpa",
        )
        hf = transformers.DINOv3ViTModel(config).eval()
    with tempfile.TemporaryDirectory() as folder:
        hf.save_pretrained(folder)
        ours = load_model(spec.name, folder, depth=depth)
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
    parser.add_argument("--family", choices=("dinov2", "dinov3", "both"), default="both")
    args = parser.parse_args()
    precisions, depth, reps = ["fp32", "bf16"], None, args.reps
    if args.quick:
        precisions, depth, reps = ["fp32"], 2, 2
    device = torch.device(args.device)
    for family in ("dinov2", "dinov3") if args.family == "both" else (args.family,):
        sizes = SIZES[family][:1] if args.quick else SIZES[family]
        bench_family(family, sizes, precisions, depth, reps, args.batch, device)


def bench_family(
    family: str, sizes: list[int], precisions: list[str], depth: int | None, reps: int, batch: int, device: torch.device
) -> None:
    ours, hf = build_models(family, depth)
    ours, hf = ours.to(device), hf.to(device)
    label = {"dinov2": "ViT-S/14 vs Dinov2Model", "dinov3": "DINOv3 ViT-S/16 vs DINOv3ViTModel"}[family]
    print(
        f"device={device} threads={torch.get_num_threads()} batch={batch} model={label} "
        f"depth={depth or ours.spec.depth}"
    )
    print(f"{'size':>5} {'prec':>5} {'dinofeat img/s':>15} {'transformers img/s':>19} {'ratio':>6}")
    for precision in precisions:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
        for size in sizes:
            x = torch.randn(batch, 3, size, size, device=device)

            def run_ours(images, dtype=dtype):
                with torch.inference_mode(), autocast(device, dtype):
                    return ours.forward_features(images).patch_tokens[0]

            def run_hf(images, dtype=dtype):
                with torch.inference_mode(), autocast(device, dtype):
                    return hf(pixel_values=images).last_hidden_state

            ours_ips, hf_ips = images_per_second([run_ours, run_hf], x, reps)
            print(f"{size:>5} {precision:>5} {ours_ips:>15.2f} {hf_ips:>19.2f} {ours_ips / hf_ips:>6.2f}")


if __name__ == "__main__":
    main()
