"""Images/s of dinofeat's ViTs vs transformers' (same weights, SDPA), eager and compiled, same run.

DINOv2 ViT-S/14 and ViT-B/14 against ``Dinov2Model``, DINOv3 ViT-S/16 against ``DINOv3ViTModel``:

    python benchmarks/bench_extract.py                      # all three; 224 and 448 px; fp32 and bf16
    python benchmarks/bench_extract.py --models dinov2_vits14 --sizes 448
    python benchmarks/bench_extract.py --no-compile         # eager columns only
    python benchmarks/bench_extract.py --quick              # smoke run

Four columns per row, timed interleaved so that load drift hits all alike: dinofeat eager,
dinofeat compiled (as ``--compile on`` runs a pass: :mod:`dinofeat.runtime.compile`),
transformers eager, transformers compiled (``torch.compile`` of the whole model, with the same
inductor settings: frozen weights on the CPU). All get the same normalised batch; the time is the
forward pass only (inference mode, autocast for bf16). Each row compiles afresh (static shapes, as
a job of one size); ``first s`` is the first compiled call (the compile, plus one pass). Ratios > 1
mean the first named is faster. Absolute numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from dinofeat.models.registry import get_spec
from dinofeat.models.weights import load_model
from dinofeat.runtime.compile import compiled_model
from dinofeat.runtime.devices import autocast

MODELS = ("dinov2_vits14", "dinov2_vitb14", "dinov3_vits16")


def build_models(name: str, depth: int | None):
    """dinofeat's model and transformers' with the same random weights (saved by transformers, loaded by us)."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    spec = get_spec(name)
    layers = depth or spec.depth
    if spec.family == "dinov2":
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


def first_call_seconds(fn, x: torch.Tensor) -> float:
    start = time.perf_counter()
    fn(x)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[224, 448], help="multiples of both patch sizes")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--no-compile", action="store_true", help="the eager columns only")
    args = parser.parse_args()
    depth, reps, sizes, names = None, args.reps, args.sizes, args.models
    if args.quick:
        depth, reps, sizes, names = 2, 2, [112], names[:1]
    device = torch.device(args.device)
    print(f"device={device} ({_device_name(device)}) threads={torch.get_num_threads()} batch={args.batch}")
    columns = ["dinofeat eager", "transformers eager"]
    if not args.no_compile:
        columns = ["dinofeat eager", "dinofeat compiled", "transformers eager", "transformers compiled"]
    header = f"{'model':>15} {'size':>5} {'prec':>5} " + " ".join(f"{c + ' img/s':>24}" for c in columns)
    if not args.no_compile:
        header += f" {'ours comp/eager':>16} {'ours/tf comp':>13} {'first s ours':>13} {'first s tf':>11}"
    else:
        header += f" {'ours/tf':>8}"
    print(header)
    for name in names:
        for precision in args.precisions:
            bench_model(name, sizes, precision, depth, reps, args.batch, device, compiled=not args.no_compile)


def bench_model(
    name: str,
    sizes: list[int],
    precision: str,
    depth: int | None,
    reps: int,
    batch: int,
    device: torch.device,
    *,
    compiled: bool,
) -> None:
    """One model in one precision: a fresh pair of models (and compiles) for each, every size."""
    ours, hf = build_models(name, depth)
    ours, hf = ours.to(device), hf.to(device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    our_run = compiled_model(ours, device).run_blocks if compiled else None
    hf_compiled = torch.compile(hf) if compiled else None

    def run_ours(images, run_blocks=None):
        with torch.inference_mode(), autocast(device, dtype):
            return ours.forward_features(images, run_blocks=run_blocks).patch_tokens[0]

    def run_hf(images, model=hf):
        frozen = torch._inductor.config.patch(freezing=device.type == "cpu")
        with torch.inference_mode(), autocast(device, dtype), frozen:
            return model(pixel_values=images).last_hidden_state

    fns = [run_ours, run_hf]
    if compiled:
        fns = [run_ours, lambda x: run_ours(x, our_run), run_hf, lambda x: run_hf(x, hf_compiled)]
    for size in sizes:
        torch._dynamo.reset()  # each row compiles afresh for its size, as a job of one size does
        x = torch.randn(batch, 3, size, size, device=device)
        first = [first_call_seconds(fn, x) for fn in (fns[1], fns[3])] if compiled else []
        speeds = images_per_second(fns, x, reps)
        row = f"{name:>15} {size:>5} {precision:>5} " + " ".join(f"{v:>24.2f}" for v in speeds)
        if compiled:
            row += f" {speeds[1] / speeds[0]:>16.2f} {speeds[1] / speeds[3]:>13.2f} {first[0]:>13.1f} {first[1]:>11.1f}"
        else:
            row += f" {speeds[0] / speeds[1]:>8.2f}"
        print(row, flush=True)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text(errors="ignore").splitlines() if cpuinfo.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    flags = [line for line in lines if line.startswith("flags")]
    units = [f for f in ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni") if flags and f in flags[0].split()]
    return f"{names[0] if names else 'cpu'}; {' '.join(units) or 'no bf16/int8 matrix units'}"


if __name__ == "__main__":
    main()
