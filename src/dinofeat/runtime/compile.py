"""The model compiled with ``torch.compile``: where it pays, and eager when it fails.

What is compiled (:class:`CompiledModel`): a pass short enough to run in the calling thread runs
all blocks in one graph (:meth:`~dinofeat.models.vit.DenseViT.run_blocks`); a long pass, which
needs the hook between blocks (block-by-block progress, and the point where Ctrl-C stops it),
runs each block compiled on its own. One graph measured 1.26x faster than block by block (ViT-S/14
at 224², bf16, 2-core AMX CPU: 19.1 against 24.0 ms a pass); the patch embedding stays eager in
both (its positional-embedding resize would specialise the graph to every size).

On the CPU the graphs compile with inductor's ``freezing``: the weights become constants, cast to
the run's precision and packed for oneDNN once instead of at every pass, which is most of the gain
(ViT-S/14 at 448², bf16, blocks one by one, each against eager in its own run: frozen 1.48x,
unfrozen 1.24x, frozen without packing 1.28x). On CUDA the default mode, unfrozen (neither ``freezing`` nor
``max-autotune`` was measured on a GPU: none was lent).

Sizes: dynamo's automatic dynamic shapes. A graph compiles for the first input size and once more,
shape-generic, when another size comes, and once more when the batch size changes; so a job of
many sizes (datasets, eval) compiles at most three times per precision, never once per image. The
cost: packed weights cannot go into inductor's on-disk cache ("mkldnn tensors unpickleable"), so
every run compiles again (ViT-S/14: about 10 s on 2 cores); unfrozen graphs (CUDA) are cached
(``TORCHINDUCTOR_CACHE_DIR``, by default in the temporary folder).

``auto`` (:class:`CompilePlan`) runs the first passes eagerly, times them, and compiles when the
passes the job said are left (:meth:`CompilePlan.expect`) save more than compiling costs, with
the speed-up and compile time measured for the device (:func:`compile_cost`).
"""

from __future__ import annotations

import logging
import math
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dinofeat.errors import FieldMessage
from dinofeat.options import COMPILE_MODES

log = logging.getLogger(__name__)

#: Eager passes timed before ``auto`` decides (the first one also pays one-off set-up costs).
TIMED_PASSES = 2


@dataclass(frozen=True)
class CompileCost:
    """What compiling brings on a device: ``speedup`` (eager time / compiled time of a pass) and
    ``seconds_per_block`` (first-time compile time, per block, without inductor's cache)."""

    speedup: float
    seconds_per_block: float


#: Measured with benchmarks/bench_extract.py (2-core AMX Xeon; DINOv2 S and B, DINOv3 S; 224 and 448
#: px): compiled 1.31-1.91x eager in bf16 and 1.16-1.41x in fp32 (the lower ends, at 448 px, are
#: taken), 7-13 s to compile 12 blocks (every run: see above). CUDA: timm's published tables give
#: 1.2-1.7x for the DINOv2/v3 family (the lower end is taken); the compile time there was not
#: measured here (no GPU lent): Triton's kernels are assumed to take twice the CPU's.
_COSTS = {
    ("cpu", torch.bfloat16): CompileCost(speedup=1.35, seconds_per_block=1.1),
    ("cpu", torch.float32): CompileCost(speedup=1.15, seconds_per_block=1.1),
    ("cuda", torch.bfloat16): CompileCost(speedup=1.2, seconds_per_block=2.2),
    ("cuda", torch.float16): CompileCost(speedup=1.2, seconds_per_block=2.2),
    ("cuda", torch.float32): CompileCost(speedup=1.2, seconds_per_block=2.2),
}


def compile_cost(device: torch.device, dtype: torch.dtype) -> CompileCost | None:
    """What compiling brings on ``device`` in ``dtype``; None where it was not measured to win
    (Apple MPS, fp16 on the CPU), where ``auto`` never compiles."""
    return _COSTS.get((device.type, dtype))


def compile_pays(eager_seconds: float, passes_left: float, blocks: int, cost: CompileCost) -> bool:
    """Whether ``passes_left`` passes of ``eager_seconds`` each save more than compiling ``blocks``
    blocks costs.

    >>> cost = CompileCost(speedup=1.25, seconds_per_block=1.0)
    >>> compile_pays(0.1, 1000, 12, cost), compile_pays(0.1, 100, 12, cost)
    (True, False)
    """
    return passes_left * eager_seconds * (1 - 1 / cost.speedup) > blocks * cost.seconds_per_block


class CompiledModel:
    """A model's compiled forward passes (:mod:`dinofeat.runtime.compile`), each made on first use:
    :attr:`run_blocks`, every block in one graph (:meth:`~dinofeat.models.vit.DenseViT.run_blocks`
    without hooks), and :attr:`blocks`, each block compiled alone for passes that need the hook
    between blocks. After a compile error, ``failed`` says why and the model runs eagerly.

    Shared by every extractor of the model (:func:`compiled_model`): compiled code is kept per
    model, and a failure is said once.
    """

    def __init__(self, model: Any, device: torch.device) -> None:
        self.model = model  # a DenseViT (the runtime layer does not import the models)
        self.frozen = device.type == "cpu"
        self.failed: str | None = None
        self._blocks: list[Callable] | None = None
        self._run_blocks: Callable | None = None
        _allow_recompiles(len(model.blocks))

    @property
    def run_blocks(self) -> Callable:
        """``run_blocks(tokens, extra, wanted, facet, norm)`` in one compiled graph."""
        if self._run_blocks is None:
            self._run_blocks = self._freezing(torch.compile(self.model.run_blocks))
        return self._run_blocks

    @property
    def blocks(self) -> list[Callable]:
        """The blocks, each compiled alone (one graph per block)."""
        if self._blocks is None:
            self._blocks = [self._freezing(torch.compile(block)) for block in self.model.blocks]
        return self._blocks

    def _freezing(self, compiled: Callable) -> Callable:
        return _frozen(compiled) if self.frozen else compiled

    def fail(self, error: BaseException) -> None:
        """Run eagerly from now on, and say so once (one line: the error's type and first line)."""
        if self.failed is not None:
            return
        first_line = (str(error).strip().splitlines() or [""])[0][:200]
        self.failed = f"{type(error).__name__}: {first_line}" if first_line else type(error).__name__
        log.warning(FieldMessage(f"compiling the model failed ({self.failed}); running it uncompiled"))


_compiled: weakref.WeakKeyDictionary[nn.Module, CompiledModel] = weakref.WeakKeyDictionary()
_compiled_lock = threading.Lock()


def compiled_model(model: nn.Module, device: torch.device) -> CompiledModel:
    """The :class:`CompiledModel` of ``model``, made on first call."""
    with _compiled_lock:
        if model not in _compiled:
            _compiled[model] = CompiledModel(model, device)
        return _compiled[model]


def _frozen(compiled: Callable) -> Callable:
    """``compiled`` called with inductor's ``freezing`` on (dynamo reads the global setting when it
    traces: given as a compile option, the weights stay graph inputs and are cast at every pass)."""

    def run(*args: object) -> object:
        with torch._inductor.config.patch(freezing=True):
            return compiled(*args)

    return run


def _allow_recompiles(blocks: int) -> None:
    """Let dynamo keep every block's graphs: the blocks share one ``forward`` and dynamo caps the
    graphs per function (8 by default), beyond which it would run them eagerly without a word."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # torch < 2.6
    # three shape variants per block (see the module) in two precisions; the one-graph pass's function
    # gets the same limit: 8 more for its variants (feature settings, sizes, precisions)
    needed = blocks * 3 * 2 + 8
    if getattr(config, name) < needed:
        setattr(config, name, needed)


class CompilePlan:
    """Whether an extractor's passes run compiled.

    ``on`` and ``off`` say so; ``auto`` runs :data:`TIMED_PASSES` passes eagerly, then compiles if
    :func:`compile_pays` for the passes left that a job said it will run (:meth:`expect`; none
    said: never), with :func:`compile_cost` of the device and precision (``dtype``, what the passes
    run in). Once compiling, always; a decision against is weighed again when a job says more.
    """

    def __init__(self, mode: str, device: torch.device, dtype: torch.dtype, blocks: int) -> None:
        if mode not in COMPILE_MODES:
            raise ValueError(f"unknown compile mode {mode!r}")
        self.mode = mode
        self.cost = compile_cost(device, dtype)
        self.blocks = blocks
        self.decided: bool | None = {"on": True, "off": False}.get(mode)
        self.passes_done = 0
        self.passes_expected = 0.0
        self.compiled_once = False
        self._timed: list[float] = []

    def expect(self, passes: float) -> None:
        """A job is about to run about ``passes`` forward passes (``math.inf``: an open-ended session).
        With ``auto`` decided against compiling, the new length is weighed again."""
        self.passes_expected = max(self.passes_expected, self.passes_done + passes)
        if self.mode == "auto" and self.decided is False:
            self.decided = None
            self._decide()

    def compiled_now(self) -> bool:
        """Whether the next pass runs compiled."""
        return bool(self.decided)

    def record(self, seconds: float) -> None:
        """A pass ran in ``seconds``; with ``auto``, the first :data:`TIMED_PASSES` decide."""
        self.passes_done += 1
        if self.decided is not None:
            return
        self._timed.append(seconds)
        self._decide()

    def _decide(self) -> None:
        if len(self._timed) < TIMED_PASSES:
            return
        left, seconds = self.passes_expected - self.passes_done, min(self._timed)
        self.decided = self.cost is not None and left > 0 and compile_pays(seconds, left, self.blocks, self.cost)
        if self.decided:
            log.debug("compiling: %s passes left of %.3f s each", "many" if math.isinf(left) else int(left), seconds)
