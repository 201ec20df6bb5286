"""Would int8 pay? The ViT's blocks in int8 against bf16 (eager and compiled), and OpenVINO, same run.

What decided that dinofeat has no ``--precision int8`` (see README, Speed): int8 had to run at
least 1.3x faster than bf16 compiled, which it did not. Run it again on your CPU:

    pip install torchao openvino                        # not dinofeat's dependencies
    python benchmarks/bench_int8.py                     # ViT-S/14, ViT-B/14, DINOv3 ViT-S/16 at 448 px
    python benchmarks/bench_int8.py --weights dinov2_vitb14_pretrain.pth --models dinov2_vitb14 --photos DIR

Rows, timed interleaved on the blocks (the tokens after the patch embedding in, the normalised
tokens out; the patch embedding is the same for all):
- bf16 eager, and bf16 compiled as ``--compile on`` runs it (frozen weights, packed for oneDNN);
- int8 per token: torchao's ``Int8DynamicActivationInt8WeightConfig`` (weights per channel,
  activations per token, quantised at run time), compiled;
- int8 per tensor: torch's x86 inductor quantiser with dynamic activations (one scale per
  tensor, at run time), compiled;
- int8 static: the same with activation scales calibrated on the first photo (optimistic: the
  scales of a real job come from other images);
- OpenVINO bf16: the blocks converted with ``openvino.convert_model``, latency hint.

Fidelity is the per-patch cosine of each row's tokens to fp32 eager (mean and 1st percentile over
every patch of every photo). With random weights (the default: none can be downloaded here) it
says little about real checkpoints, whose activations have outlier channels that per-tensor
scales handle badly: pass ``--weights`` and ``--photos`` for real numbers.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dinofeat.io.images import load_image, resize
from dinofeat.models.build import build_model
from dinofeat.models.registry import get_spec
from dinofeat.models.weights import load_model
from dinofeat.runtime.compile import compiled_model


class Blocks(nn.Module):
    """A model's blocks and final norm: tokens (B, N, C) -> normalised tokens (B, N, C), for one
    grid of patches (``extra``: the model's ``block_inputs`` for it, DINOv3's RoPE)."""

    def __init__(self, model: nn.Module, extra: tuple) -> None:
        super().__init__()
        self.blocks, self.norm, self.extra = model.blocks, model.norm, extra

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            tokens, _ = block(tokens, *self.extra)
        return self.norm(tokens)


def photos(folder: str | None, size: int) -> list[np.ndarray]:
    """Real photos resized to ``size`` x ``size``: a folder's, or scikit-image's public-domain ones."""
    if folder:
        files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
        images = [load_image(p) for p in files[:8]]
    else:
        from skimage import data

        images = [data.chelsea(), data.astronaut(), data.coffee(), data.rocket()]
    return [resize(image, (size, size)) for image in images]


def tokens_of(model, images: list[np.ndarray]) -> list[torch.Tensor]:
    """Each photo's tokens after the patch embedding, (1, N, C) float32."""
    mean, std = torch.tensor(model.spec.mean).view(1, 3, 1, 1), torch.tensor(model.spec.std).view(1, 3, 1, 1)
    out = []
    with torch.no_grad():  # not inference mode: the tokens go through tracing and export too
        for image in images:
            pixels = (torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255 - mean) / std
            out.append(model.prepare_tokens(pixels)[0].clone())
    return out


def variants(model, calibration: torch.Tensor, extra: tuple, wanted: list[str]) -> dict:
    """name -> function of tokens (each runs under bf16 autocast, like ``--precision bf16``)."""
    fns = {}
    if "bf16 eager" in wanted:
        fns["bf16 eager"] = Blocks(model, extra)
    if "bf16 compiled" in wanted:
        run_blocks = compiled_model(copy.deepcopy(model), torch.device("cpu")).run_blocks
        last = (len(model.blocks) - 1,)

        def compiled(tokens, run_blocks=run_blocks, last=last):
            return run_blocks(tokens, extra, last, "token", True)[1]  # as ``--compile on`` runs a short pass

        fns["bf16 compiled"] = compiled
    if "int8 per token" in wanted:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        twin = Blocks(copy.deepcopy(model), extra)
        quantize_(twin, Int8DynamicActivationInt8WeightConfig())
        fns["int8 per token"] = _frozen(torch.compile(twin))
    for name, dynamic in (("int8 per tensor", True), ("int8 static", False)):
        if name in wanted:
            fns[name] = _frozen(torch.compile(_pt2e_int8(model, calibration, extra, dynamic)))
    if "openvino bf16" in wanted:
        import openvino as ov

        with torch.no_grad():
            converted = ov.convert_model(Blocks(model, extra).eval(), example_input=calibration)
        compiled_ov = ov.Core().compile_model(
            converted,
            "CPU",
            {"INFERENCE_PRECISION_HINT": "bf16", "PERFORMANCE_HINT": "LATENCY"},
        )
        request = compiled_ov.create_infer_request()
        fns["openvino bf16"] = lambda tokens: torch.from_numpy(request.infer({0: tokens.numpy()})[0].copy())
    return fns


def _pt2e_int8(model, calibration: torch.Tensor, extra: tuple, dynamic: bool) -> nn.Module:
    """The blocks exported and quantised by the x86 inductor quantiser (torchao's PT2E flow)."""
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as x86
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = x86.X86InductorQuantizer()
    quantizer.set_global(x86.get_default_x86_inductor_quantization_config(is_dynamic=dynamic))
    with torch.no_grad():
        prepared = prepare_pt2e(torch.export.export(Blocks(model, extra), (calibration,)).module(), quantizer)
        prepared(calibration)  # observers: the static scales (dynamic ones are computed per run)
        return convert_pt2e(prepared)


def _frozen(fn):
    def run(tokens):
        with torch._inductor.config.patch(freezing=True):
            return fn(tokens)

    return run


def call(fn, tokens: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
        return fn(tokens).float()


def bench(name: str, weights: str | None, size: int, reps: int, photo_dir: str | None, wanted: list[str]) -> None:
    spec = get_spec(name)
    model = (load_model(name, weights) if weights else build_model(spec).init_random(0)).eval()
    size = size // spec.patch_size * spec.patch_size
    tokens = tokens_of(model, photos(photo_dir, size))
    grid = size // spec.patch_size
    extra = model.block_inputs((grid, grid), spec.patch_size, torch.device("cpu"))
    with torch.inference_mode():
        reference = [Blocks(model, extra)(t) for t in tokens]  # fp32 eager
    fns, first = {}, {}
    for row in wanted:  # a row that cannot be built or compiled is said, and the others go on
        try:
            fn = variants(model, tokens[0], extra, [row])[row]
            first[row] = _seconds(lambda fn=fn: call(fn, tokens[0]))
            fns[row] = fn
        except Exception as error:  # noqa: BLE001 - any failure of a third-party converter
            print(f"{name:>15} {size:>5} {row:>16} failed: {type(error).__name__}: {str(error).splitlines()[0][:120]}")
    times: dict[str, list[float]] = {key: [] for key in fns}
    for _ in range(reps):
        for key, fn in fns.items():
            times[key].append(_seconds(lambda fn=fn: call(fn, tokens[0])))
    base = statistics.median(times["bf16 compiled"]) if "bf16 compiled" in times else None
    for key, fn in fns.items():
        first_patch = 1 + spec.num_registers
        cosines = torch.cat(
            [
                nn.functional.cosine_similarity(call(fn, t)[0, first_patch:], ref[0, first_patch:], dim=-1)
                for t, ref in zip(tokens, reference)
            ]
        )
        median = statistics.median(times[key])
        ratio = f"{base / median:>6.2f}x" if base else "      -"
        print(
            f"{name:>15} {size:>5} {key:>16} {median * 1000:>9.1f} ms {ratio} {first[key]:>8.1f} s "
            f"{cosines.mean():>10.5f} {torch.quantile(cosines, 0.01):>10.5f}",
            flush=True,
        )


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


ROWS = ["bf16 eager", "bf16 compiled", "int8 per token", "int8 per tensor", "int8 static", "openvino bf16"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["dinov2_vits14", "dinov2_vitb14", "dinov3_vits16"])
    parser.add_argument("--weights", help="a real checkpoint (one model); default: random weights")
    parser.add_argument("--photos", help="a folder of photos (default: four of scikit-image's)")
    parser.add_argument("--size", type=int, default=448, help="square input side, rounded to the patch grid")
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--rows", nargs="+", default=ROWS, choices=ROWS)
    parser.add_argument("--quick", action="store_true", help="smoke run: ViT-S at 112 px, bf16 rows")
    args = parser.parse_args()
    if args.quick:
        args.models, args.size, args.reps, args.rows = args.models[:1], 112, 2, ROWS[:2]
    print(f"threads={torch.get_num_threads()}; speed ratio: bf16 compiled time / the row's (> 1: faster)")
    columns = f"{'model':>15} {'size':>5} {'row':>16} {'per pass':>12} {'ratio':>7} {'first':>10}"
    print(f"{columns} {'cos mean':>10} {'cos 1 %':>10}")
    for name in args.models:
        bench(name, args.weights, args.size, args.reps, args.photos, args.rows)


if __name__ == "__main__":
    main()
