"""The compiled model (dinofeat.runtime.compile): when ``auto`` compiles, that compiling changes no
result beyond rounding, that sizes compile a bounded number of times, and the fallback to eager.

The compiling tests run inductor for real (a C++ compiler is on the test machines) on 2-block
models of the real shapes: a few seconds each."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

import dinofeat.features.extractor as extractor_module
from conftest import smooth_vit
from dinofeat.features.extractor import Extractor
from dinofeat.matching import match
from dinofeat.models.build import build_model
from dinofeat.models.registry import get_spec
from dinofeat.runtime.compile import CompileCost, CompilePlan, compile_cost, compile_pays

CPU = torch.device("cpu")


def fresh_vit(name: str = "dinov2_vits14", depth: int = 2, seed: int = 0):
    """A random model of its own (compiled code and a compile failure are kept per model)."""
    return build_model(get_spec(name), depth=depth).init_random(seed).eval()


def random_images(sizes_hw, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes_hw]


def passes_seen(extractor: Extractor, count: int) -> list[str]:
    """What ``count`` passes of a 30x40 image tell the block progress: each pass's description and
    the blocks it reported (``"the model on 42x28: 1/2 2/2"``)."""
    seen: list[str] = []
    extractor.block_progress = lambda what: _Recorder(seen, what)
    for image in random_images([(30, 40)] * count):
        extractor.extract(image)
    return seen


# -- when auto compiles ---------------------------------------------------------------------------


def test_compile_pays_when_the_passes_left_save_more_than_the_compile_costs():
    cost = CompileCost(speedup=2.0, seconds_per_block=1.0)  # a pass saves half its time; 12 s to compile 12 blocks
    assert compile_pays(eager_seconds=1.0, passes_left=25, blocks=12, cost=cost)  # saves 12.5 s
    assert not compile_pays(eager_seconds=1.0, passes_left=23, blocks=12, cost=cost)  # saves 11.5 s
    assert compile_pays(eager_seconds=0.001, passes_left=math.inf, blocks=12, cost=cost)


def test_auto_on_a_bf16_cpu_compiles_a_448_px_vits_video_from_about_400_frames():
    """README's figure: a 640x480 frame at 448 px (602x448) takes about 0.13 s eagerly there."""
    cost = compile_cost(CPU, torch.bfloat16)
    assert not compile_pays(0.13, 350, blocks=12, cost=cost)
    assert compile_pays(0.13, 450, blocks=12, cost=cost)


def test_auto_compiles_after_the_timed_passes_only_for_a_long_enough_job():
    long_job = CompilePlan("auto", CPU, torch.bfloat16, blocks=12)
    long_job.expect(10_000)
    assert not long_job.compiled_now()
    long_job.record(0.1)
    assert not long_job.compiled_now()  # one pass timed: not decided yet
    long_job.record(0.1)
    assert long_job.compiled_now()

    short_job = CompilePlan("auto", CPU, torch.bfloat16, blocks=12)
    short_job.expect(20)
    for _ in range(5):
        short_job.record(0.1)
    assert not short_job.compiled_now()
    short_job.expect(10_000)  # a longer job on the same extractor is weighed again
    assert short_job.compiled_now()


def test_auto_never_compiles_without_a_job_length_or_where_compiling_was_not_measured_to_win():
    unsaid = CompilePlan("auto", CPU, torch.bfloat16, blocks=12)
    for _ in range(3):
        unsaid.record(10.0)
    assert not unsaid.compiled_now()
    apple = CompilePlan("auto", torch.device("mps"), torch.float16, blocks=12)
    apple.expect(math.inf)
    for _ in range(3):
        apple.record(10.0)
    assert not apple.compiled_now()


def test_on_and_off_are_decided_from_the_first_pass():
    assert CompilePlan("on", CPU, torch.bfloat16, blocks=2).compiled_now()
    off = CompilePlan("off", CPU, torch.bfloat16, blocks=2)
    off.expect(math.inf)
    off.record(100.0)
    off.record(100.0)
    assert not off.compiled_now()


def test_an_unknown_compile_mode_is_a_one_line_error_naming_the_option():
    with pytest.raises(Exception, match=r"unknown compile mode 'yes' \(compile\); choose one of auto, on, off"):
        Extractor(fresh_vit(depth=1), compile="yes", device="cpu")


def test_the_extractor_compiles_under_auto_once_a_job_says_it_is_long():
    extractor = Extractor(fresh_vit(depth=1), resolution=28, device="cpu", precision="fp32")
    extractor.expect_images(math.inf)
    assert [what.split(" ")[0] for what in passes_seen(extractor, 4)] == ["the", "the", "compiling", "the"]


# -- compiling changes no result --------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, settings",
    [
        ("dinov2_vits14", {"layers": (0, 1), "facet": "token"}),
        ("dinov2_vits14", {"layers": (1,), "facet": "key", "stride": 7}),
        ("dinov3_vits16", {"layers": (-1,), "facet": "token"}),
    ],
)
def test_compiled_fp32_features_equal_eager_ones(name, settings):
    vit = fresh_vit(name)
    eager = Extractor(vit, resolution=56, device="cpu", precision="fp32", compile="off", **settings)
    compiled = Extractor(vit, resolution=56, device="cpu", precision="fp32", compile="on", **settings)
    for image in random_images([(60, 80), (70, 60)]):
        want, got = eager.extract(image), compiled.extract(image)
        torch.testing.assert_close(got.features, want.features, atol=1e-4, rtol=0)
        torch.testing.assert_close(got.cls_token, want.cls_token, atol=1e-4, rtol=0)


@pytest.mark.parametrize("field", ["random", "smooth"])
def test_the_exact_search_finds_the_same_matches_compiled(photo, field):
    vit = fresh_vit() if field == "random" else smooth_vit()  # smooth: nearly flat similarity surfaces
    points = [[x, y] for x in range(20, 440, 60) for y in range(20, 290, 60)]
    shifted = np.roll(photo, (7, 11), axis=(0, 1))
    eager, compiled = (
        match(photo, shifted, points, extractor=Extractor(vit, resolution=112, precision="fp32", compile=mode))
        for mode in ("off", "on")
    )
    torch.testing.assert_close(compiled.target_xy, eager.target_xy, atol=1e-3, rtol=0)
    torch.testing.assert_close(compiled.scores, eager.scores, atol=1e-4, rtol=0)


# -- sizes, hooks, fallback -------------------------------------------------------------------------


def test_many_sizes_compile_each_block_a_bounded_number_of_times():
    torch._dynamo.reset()  # dynamo remembers the sizes of earlier tests' passes: start as a new process does
    vit = fresh_vit()
    extractor = Extractor(vit, resolution=56, device="cpu", precision="fp32", compile="on")
    before = counters["stats"]["unique_graphs"]
    sizes = [(60, 80), (60, 100), (70, 60), (56, 150), (90, 90), (60, 80)]
    extractor.extract_many(random_images(sizes))
    extractor.with_options(batch_size=3).extract_many(random_images(sizes[:3] * 2))
    graphs = counters["stats"]["unique_graphs"] - before
    assert 0 < graphs <= 3  # one graph: the first size, then the token count and the batch size made dynamic


def test_long_passes_compile_block_by_block_keeping_progress_and_interrupts(monkeypatch):
    monkeypatch.setattr(extractor_module, "RESPONSIVE_BLOCK_FLOPS", 0)  # every pass is a long one
    extractor = Extractor(fresh_vit(depth=3), resolution=28, device="cpu", precision="fp32", compile="on")
    assert passes_seen(extractor, 1) == ["compiling the model for 42x28: 1/3 2/3 3/3"]

    def stop(what):
        return _Recorder([], what, stop_at=2)

    extractor.block_progress = stop
    with pytest.raises(KeyboardInterrupt):
        extractor.extract(random_images([(30, 40)])[0])


def test_short_passes_run_the_blocks_in_one_graph_without_block_progress():
    extractor = Extractor(fresh_vit(depth=3), resolution=28, device="cpu", precision="fp32", compile="on")
    assert passes_seen(extractor, 1) == ["compiling the model for 42x28"]


def test_the_compile_and_its_time_are_said_once(caplog):
    extractor = Extractor(fresh_vit(depth=1), resolution=28, device="cpu", precision="fp32", compile="on")
    with caplog.at_level(logging.WARNING):
        extractor.extract_many(random_images([(30, 40), (30, 60), (30, 40)]))
        extractor.with_options(resolution=42).extract(random_images([(30, 40)])[0])
    said = [r.getMessage() for r in caplog.records if "compil" in r.getMessage()]
    assert len(said) == 2, said
    assert said[0] == "compiling the model for 42x28, once per run (compile=off skips it)"
    assert said[1].startswith("compiled the model for 42x28 in ") and said[1].endswith(" s")


def test_a_failing_compiler_gives_one_warning_and_eager_features(caplog, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # nothing cached to fall back on
    vit = fresh_vit(depth=2, seed=5)
    images = random_images([(60, 80), (60, 100)])
    want = [fmap.features for fmap in Extractor(vit, resolution=56, device="cpu", compile="off").extract_many(images)]
    extractor = Extractor(vit, resolution=56, device="cpu", compile="on")
    no_compiler = {"cpp.cxx": (None, str(tmp_path / "no-such-compiler")), "force_disable_caches": True}
    with torch._inductor.config.patch(no_compiler), caplog.at_level(logging.WARNING):
        got = [fmap.features for fmap in extractor.extract_many(images)]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=0, rtol=0)
    said = [r.getMessage() for r in caplog.records if r.name.startswith("dinofeat")]
    assert len(said) == 2, said  # the compile announced, then its failure
    assert said[1].startswith("compiling the model failed (") and said[1].endswith("); running it uncompiled")
    assert "\n" not in said[1]


class _Recorder:
    """A block-progress context: records ``what`` and the blocks done; raises KeyboardInterrupt at ``stop_at``."""

    def __init__(self, seen: list[str], what: str, stop_at: int | None = None) -> None:
        self.seen, self.what, self.stop_at, self.done = seen, what, stop_at, []

    def __enter__(self):
        return self

    def __call__(self, done: int, total: int) -> None:
        if done == self.stop_at:
            raise KeyboardInterrupt
        self.done.append(f"{done}/{total}")

    def __exit__(self, *exc):
        self.seen.append(self.what if not self.done else f"{self.what}: {' '.join(self.done)}")
