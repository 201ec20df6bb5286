"""Turning images into :class:`~dinofeat.features.featuremap.FeatureMap` objects, batched, on any device."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch

from dinofeat.errors import FieldMessage, InputError, field
from dinofeat.features.featuremap import FeatureMap
from dinofeat.io.images import ImageLike, enlargement_note, load_image, processed_size, resize, size_cap_note
from dinofeat.models.digest import DIGEST_PREFIX, weights_digest
from dinofeat.models.registry import DEFAULT_MODEL, ModelSpec
from dinofeat.models.vit import DenseViT
from dinofeat.models.weights import load_model
from dinofeat.options import DEFAULT_MAX_SIZE, DEFAULT_RESOLUTION, ExtractorOptions
from dinofeat.runtime.compile import CompiledModel, CompilePlan, compiled_model
from dinofeat.runtime.devices import (
    autocast,
    default_batch_size,
    precision_name,
    resolve_device,
    resolve_precision,
)
from dinofeat.runtime.memory import ForwardMemory, check_forward_memory, forward_memory, model_bytes
from dinofeat.runtime.modelthread import run_responsively
from dinofeat.runtime.progress import Progress

log = logging.getLogger(__name__)

#: The key of the announcement that small inputs are enlarged (said once per extractor).
_ENLARGED = "enlarged"

#: A forward pass whose blocks are estimated at more multiply-adds than this (a fraction of a second
#: each on a laptop CPU) runs in a helper thread, so that Ctrl-C is answered at once (see
#: :mod:`dinofeat.runtime.modelthread`); smaller ones run in the calling thread.
RESPONSIVE_BLOCK_FLOPS = 2e10
#: ``block_progress(description)`` gives a context manager yielding the forward pass's
#: :class:`~dinofeat.runtime.progress.Progress` (called as ``progress(blocks_done, blocks_total)``).
BlockProgress = Callable[[str], contextlib.AbstractContextManager[Progress | None]]


class Extractor:
    """A loaded model plus the settings that turn images into feature maps.

    Args:
        model: a registry name (weights are found as :func:`~dinofeat.models.weights.load_model` says)
            or an already built model (:class:`~dinofeat.models.dinov2.DinoVisionTransformer` or
            :class:`~dinofeat.models.dinov3.DinoV3VisionTransformer`, see :func:`~dinofeat.models.build.build_model`).
        weights: checkpoint file or Hugging Face folder for a named model.
        device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` | ``mps`` (or a ``torch.device``).
        precision: ``auto`` | ``fp32`` | ``bf16`` | ``fp16``; features always come back float32.
        resolution: shorter image side in pixels before rounding to the patch grid.
        max_size: cap on the longer side (protects memory on panoramas); None for no cap.
        stride: patch stride in processed pixels; below the patch size (14 for DINOv2, 16 for DINOv3)
            gives overlapping patches (a denser grid).
        layers: block index or indices (negative from the end); several are concatenated along C.
        facet: ``token`` (default, normalised block output) or ``key`` / ``query`` / ``value``.
        batch_size: images per forward pass; None: by device (:func:`~dinofeat.runtime.devices.default_batch_size`,
            1 on CPU, 8 on a GPU).
        compile: ``auto`` | ``on`` | ``off``: run the model's blocks compiled (``torch.compile``).
            ``auto`` compiles once a job has said it will run enough passes to repay the compile
            time (:meth:`expect_images`; the jobs do), ``on`` from the first pass. Results equal
            eager ones up to rounding; a compile error gives one warning and eager passes
            (:mod:`dinofeat.runtime.compile`).
        block_progress: for progress within a forward pass (a big image's can take a while):
            called as ``block_progress("the model on 1344x1792")`` before each forward pass, it
            gives a context manager yielding a :class:`~dinofeat.runtime.progress.Progress` that is called
            after each block as ``progress(blocks_done, blocks_total)`` (the CLI draws a bar after
            a few seconds). Raising from it (an interrupt) stops the pass between blocks.

    A forward pass estimated to need more memory than is available is refused
    (:meth:`check_memory`); a resolution capped by ``max_size`` is logged once. Long forward passes
    answer Ctrl-C at once (:mod:`dinofeat.runtime.modelthread`).

    Every option is checked as :class:`~dinofeat.options.ExtractorOptions` says; ``options`` holds
    them, :meth:`with_options` gives a re-checked copy sharing the loaded model.

    >>> from dinofeat.models.registry import get_spec
    >>> from dinofeat.models.dinov2 import DinoVisionTransformer
    >>> vit = DinoVisionTransformer(get_spec("dinov2_vits14"), depth=1).init_random()
    >>> fmap = Extractor(vit, resolution=28, device="cpu").extract(np.zeros((30, 60, 3), np.uint8))
    >>> fmap.grid_hw, fmap.processed_size_wh, fmap.dim
    ((2, 4), (56, 28), 384)
    """

    def __init__(
        self,
        model: str | DenseViT = DEFAULT_MODEL,
        *,
        weights: str | os.PathLike | None = None,
        device: str | torch.device = "auto",
        precision: str = "auto",
        resolution: int = DEFAULT_RESOLUTION,
        max_size: int | None = DEFAULT_MAX_SIZE,
        stride: int | None = None,
        layers: int | Sequence[int] = -1,
        facet: str = "token",
        batch_size: int | None = None,
        compile: str = "auto",
        block_progress: BlockProgress | None = None,
    ) -> None:
        name = model if isinstance(model, str) else model.spec.name
        options = ExtractorOptions(
            model=name,
            weights=None if weights is None else str(weights),
            device=str(device) if isinstance(device, torch.device) else device,
            precision=precision,
            resolution=resolution,
            max_size=max_size,
            stride=stride,
            layers=(layers,) if isinstance(layers, int) else tuple(layers),
            facet=facet,
            batch_size=batch_size,
            compile=compile,
        )
        given = None if isinstance(model, str) else model
        self._load(options, given, block_progress, device if isinstance(device, torch.device) else None)

    @classmethod
    def from_options(
        cls,
        options: ExtractorOptions,
        model: DenseViT | None = None,
        *,
        block_progress: BlockProgress | None = None,
    ) -> Extractor:
        """An extractor for ``options`` (the model is loaded from ``options.model``/``weights`` unless
        given; a model given names itself in ``options.model``)."""
        self = cls.__new__(cls)
        self._load(options, model, block_progress)
        return self

    def _load(
        self,
        options: ExtractorOptions,
        model: DenseViT | None,
        block_progress: BlockProgress | None,
        device: torch.device | None = None,
    ) -> None:
        """What :meth:`__init__` and :meth:`from_options` share: the device (``options.device``
        unless a ``torch.device`` is given), the model (loaded unless given) and the settings."""
        if model is not None and options.model != model.spec.name:
            options = options.replace(model=model.spec.name)  # checked again, against the model's spec
        device = resolve_device(options.device) if device is None else device
        vit = model if model is not None else load_model(options.model, options.weights)
        self._setup(vit.eval().to(device), device, options)
        self.block_progress = block_progress

    def _setup(self, vit: DenseViT, device: torch.device, options: ExtractorOptions) -> None:
        # options are checked against the model's spec (ExtractorOptions); a model built with fewer
        # blocks (a ``depth`` override) may still lack a layer
        vit.resolve_layers(options.layers)
        self.model = vit
        self._weight_bytes = model_bytes(vit)  # once: every batch's memory estimate reports it
        self.device = device
        self.dtype = resolve_precision(options.precision, device)
        self.options = options
        mean, std = torch.tensor(vit.spec.mean), torch.tensor(vit.spec.std)
        self._mean = (mean * 255).view(1, 3, 1, 1).to(device)
        self._std = (std * 255).view(1, 3, 1, 1).to(device)
        # size caps already announced, as (resolution, max_size, stride) (shared with with_options copies)
        self._announced: set[tuple[int, int | None, int] | str] = set()
        blocks_run = max(vit.resolve_layers(options.layers)) + 1
        self._plan = CompilePlan(options.compile, device, self.dtype, blocks_run)

    def with_options(self, **changes: object) -> Extractor:
        """A copy with other feature options (resolution, max_size, stride, layers, facet, batch_size,
        precision), checked again, sharing this one's loaded model."""
        fixed = {"model", "weights", "device"} & set(changes)
        if fixed:
            raise InputError(f"with_options cannot change {', '.join(sorted(fixed))}: build another Extractor")
        other = type(self).__new__(type(self))
        other._setup(self.model, self.device, self.options.replace(**changes))
        other._announced = self._announced
        if (other.options.compile, other.dtype) == (self.options.compile, self.dtype):
            other._plan = self._plan  # one decision, one compile note for the copies
        other.block_progress = self.block_progress
        return other

    def expect_images(self, count: float) -> None:
        """Say that a job is about to extract about ``count`` images (``math.inf``: an open-ended
        session such as the app's). With ``compile="auto"`` this decides whether compiling the model
        repays its compile time (:class:`~dinofeat.runtime.compile.CompilePlan`)."""
        self._plan.expect(count if math.isinf(count) else math.ceil(count / self.batch_size))

    def __repr__(self) -> str:
        """``Extractor(dinov2_vits14 on cpu, bf16, resolution 448, max_size 1344, stride 14, layers [-1], token)``."""
        o = self.options
        return (
            f"Extractor({self.spec.name} on {self.device}, {precision_name(self.dtype)}, resolution {o.resolution}, "
            f"max_size {o.max_size}, stride {self.stride}, layers {list(o.layers)}, {o.facet})"
        )

    # -- settings -------------------------------------------------------------------------------
    @property
    def spec(self) -> ModelSpec:
        return self.model.spec

    @property
    def resolution(self) -> int:
        return self.options.resolution

    @property
    def max_size(self) -> int | None:
        return self.options.max_size

    @property
    def stride(self) -> int:
        return self.options.stride or self.model.patch_size

    @property
    def layers(self) -> list[int]:
        return list(self.options.layers)

    @property
    def facet(self) -> str:
        return self.options.facet

    @property
    def batch_size(self) -> int:
        """Images per forward pass: the option, or the device's default."""
        return self.options.batch_size or default_batch_size(self.device)

    def provenance(self) -> dict[str, Any]:
        """What a file written from these features records about how they were made:
        ``{"weights": {"path", "sha256"}, "precision"}``. ``path`` is where the weights were read
        (a file, or the hub that gave them; None for weights made in code), ``sha256`` the first
        16 hex digits of :func:`~dinofeat.models.digest.weights_digest`, ``precision`` the one the
        model ran in (``"bf16"``, never ``"auto"``)."""
        path = self.model.weights_source or (str(self.options.weights) if self.options.weights else None)
        return {
            "weights": {"path": path, "sha256": weights_digest(self.model)[:DIGEST_PREFIX]},
            "precision": precision_name(self.dtype),
        }

    def processed_size(self, size_wh: tuple[int, int]) -> tuple[int, int]:
        """The (width, height) an image of ``size_wh`` is resized to (:func:`~dinofeat.io.images.processed_size`)."""
        return processed_size(
            size_wh, self.resolution, patch_size=self.model.patch_size, stride=self.stride, max_size=self.max_size
        )

    # -- extraction -----------------------------------------------------------------------------
    def extract(self, image: ImageLike) -> FeatureMap:
        """Feature map of one image (path, PIL image or ``(H, W, 3) uint8`` array)."""
        return self.extract_arrays([load_image(image)])[0]

    def extract_many(self, images: Iterable[ImageLike]) -> list[FeatureMap]:
        """Feature maps of many images, in input order, batched by processed size."""
        return self.extract_arrays([load_image(img) for img in images])

    def extract_arrays(self, images: Sequence[np.ndarray]) -> list[FeatureMap]:
        """Feature maps of ``(H, W, 3) uint8 RGB`` arrays, batched by processed size, in input order."""
        groups: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(images):
            groups.setdefault(self.processed_size((image.shape[1], image.shape[0])), []).append(index)
        results: list[FeatureMap | None] = [None] * len(images)
        for size_wh, indices in groups.items():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                batch = [images[i] for i in chunk]
                for i, fmap in zip(chunk, self._forward(batch, size_wh)):
                    results[i] = fmap
        return results  # type: ignore[return-value]  # every index is in one group, so none is left None

    def memory_needed(self, batch: int, size_wh: tuple[int, int]) -> ForwardMemory:
        """Estimated memory of one forward pass of ``batch`` images of ``size_wh`` processed pixels
        (:func:`~dinofeat.runtime.memory.forward_memory`)."""
        return forward_memory(
            self.model,
            batch,
            size_wh,
            stride=self.stride,
            dtype=self.dtype,
            device=self.device,
            layers=self.layers,
            facet=self.facet,
            weight_bytes=self._weight_bytes,
        )

    def check_memory(self, batch: int, size_wh: tuple[int, int]) -> None:
        """Refuse (:class:`InputError`, with the estimate and what to lower) a forward pass that would
        need more memory than the device has available (:func:`~dinofeat.runtime.memory.check_forward_memory`)."""
        check_forward_memory(self.memory_needed(batch, size_wh), self.device)  # one estimate per batch

    def _announce_cap(self, sizes_wh: Sequence[tuple[int, int]]) -> None:
        """Log, once per resolution and cap (not per image or frame), that ``max_size`` caps the
        resolution asked for, and once per extractor that small inputs are enlarged for the model;
        the first image concerned is the example given."""
        key = (self.resolution, self.max_size, self.stride)
        if key in self._announced and _ENLARGED in self._announced:
            return  # both said: nothing to work out for the frames that follow
        geometry: dict[str, Any] = {
            "patch_size": self.model.patch_size,
            "stride": self.stride,
            "max_size": self.max_size,
        }
        for size_wh in sizes_wh:
            capped = size_cap_note(size_wh, self.resolution, **geometry)
            if capped is not None and key not in self._announced:
                self._announced.add(key)
                log.warning(FieldMessage(f"{capped}; said once, other images are capped alike"))
            if capped is None and _ENLARGED not in self._announced:  # a capped size is said already
                note = enlargement_note(size_wh, self.resolution, **geometry)
                if note is not None:
                    self._announced.add(_ENLARGED)
                    log.warning(FieldMessage(f"{note}; said once"))

    def extract_resized(
        self, images: Sequence[np.ndarray], image_sizes_wh: Sequence[tuple[int, int]]
    ) -> list[FeatureMap]:
        """Feature maps of images already resized to their processed size, in one forward pass.

        ``images`` are ``(H', W', 3) uint8 RGB``, all of one size: the :meth:`processed_size` of
        their original sizes ``image_sizes_wh`` (``(width, height)`` each), resized as
        :func:`~dinofeat.io.images.resize` does. This is one batch of :meth:`extract_arrays`, for callers
        that resize while decoding (the dataset workflows do, so that only small images are queued).
        """
        sizes = {(image.shape[1], image.shape[0]) for image in images}
        if len(sizes) != 1 or len(image_sizes_wh) != len(images):
            raise ValueError("extract_resized needs one or more images of one size, with one original size each")
        (size_wh,) = sizes
        self._announce_cap(image_sizes_wh)
        self.check_memory(len(images), size_wh)
        tokens, cls, regs = self._run_model(list(images))
        # clone outside inference mode: callers get ordinary tensors they may modify
        return [
            FeatureMap(
                features=tokens[b].clone(),
                image_size_wh=(int(original[0]), int(original[1])),
                processed_size_wh=size_wh,
                patch_size=self.model.patch_size,
                stride=self.stride,
                cls_token=cls[b].clone(),
                register_tokens=regs[b].clone(),
            )
            for b, original in enumerate(image_sizes_wh)
        ]

    def _forward(self, images: list[np.ndarray], size_wh: tuple[int, int]) -> list[FeatureMap]:
        resized = [resize(image, size_wh) for image in images]
        return self.extract_resized(resized, [(image.shape[1], image.shape[0]) for image in images])

    def _run_model(self, batch: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Same-size ``(H, W, 3) uint8`` images -> patch tokens (B, h, w, C), CLS (B, C), registers (B, R, C).

        Progress goes to :attr:`block_progress` block by block; a long pass runs in the helper
        thread of :mod:`dinofeat.runtime.modelthread` so that an interrupt is answered at once.
        The model runs compiled where :attr:`options` ``compile`` says so (:class:`CompilePlan`)."""
        h, w = batch[0].shape[:2]
        compiled = self._compiled_model()
        compiling = compiled is not None and not self._plan.compiled_once
        what = f"the model on {w}x{h}" if len(batch) == 1 else f"the model on {len(batch)} images of {w}x{h}"
        if compiling:
            what = f"compiling the model for {w}x{h}"
            log.warning(FieldMessage(f"{what}, once per run ({field('compile', 'off')} skips it)"))
        opened = self.block_progress(what) if self.block_progress is not None else contextlib.nullcontext()
        started = time.perf_counter()
        with opened as progress:
            result = self._run_pass(batch, progress, compiled)
        seconds = time.perf_counter() - started
        if compiling and compiled is not None and compiled.failed is None:
            self._plan.compiled_once = True
            log.warning(FieldMessage(f"compiled the model for {w}x{h} in {seconds:.1f} s"))
        self._plan.record(seconds)
        return result

    def _compiled_model(self) -> CompiledModel | None:
        """The compiled model the next pass runs, or None where it runs eagerly (not compiling, or
        compiling failed)."""
        if not self._plan.compiled_now():
            return None
        compiled = compiled_model(self.model, self.device)
        return compiled if compiled.failed is None else None

    def _run_pass(
        self, batch: list[np.ndarray], progress: Progress | None, compiled: CompiledModel | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One pass, compiled where ``compiled`` is given; a compiled pass that fails runs again
        eagerly, and only an error of the eager pass is raised."""
        try:
            return self._responsive_pass(batch, progress, compiled)
        except Exception as error:
            if compiled is None:
                raise
            result = self._responsive_pass(batch, progress, None)  # a genuine error is raised here again
            compiled.fail(error)
            return result

    def _responsive_pass(
        self, batch: list[np.ndarray], progress: Progress | None, compiled: CompiledModel | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A short pass here, compiled in one graph; a long one in the helper thread, its blocks
        compiled one by one (the hook between them answers Ctrl-C and shows progress)."""
        h, w = batch[0].shape[:2]
        if self._block_flops(len(batch), (w, h)) < RESPONSIVE_BLOCK_FLOPS:
            return self._model_pass(batch, progress, None, compiled, whole=True)
        return run_responsively(lambda cancel: self._model_pass(batch, progress, cancel, compiled))

    def _block_flops(self, batch: int, size_wh: tuple[int, int]) -> float:
        """Multiply-adds of one block (projections, MLP and attention) for ``batch`` images."""
        gh, gw = self.model.grid_size(size_wh[1], size_wh[0], self.stride)
        tokens, dim = gh * gw + 1 + self.model.num_registers, self.spec.embed_dim
        return batch * (12 * tokens * dim * dim + 2 * tokens * tokens * dim)

    @torch.inference_mode()
    def _model_pass(
        self,
        batch: list[np.ndarray],
        progress: Progress | None,
        cancel: threading.Event | None,
        compiled: CompiledModel | None = None,
        *,
        whole: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One forward pass; ``compiled``: with ``whole``, the blocks in one graph (no block
        progress: the pass is short), else each block compiled alone."""

        def on_block(done: int, total: int) -> None:
            if cancel is not None and cancel.is_set():
                raise KeyboardInterrupt  # the caller was interrupted: stop between blocks
            if progress is not None:
                progress(done, total)

        pixels = torch.from_numpy(np.stack(batch)).to(self.device).permute(0, 3, 1, 2).float()
        pixels = (pixels - self._mean) / self._std
        settings: dict[str, Any] = {"layers": self.layers, "facet": self.facet, "stride": self.stride}
        if compiled is not None and whole:
            settings["run_blocks"] = compiled.run_blocks
        else:
            settings.update(on_block=on_block, blocks=compiled.blocks if compiled is not None else None)
        with autocast(self.device, self.dtype):
            out = self.model.forward_features(pixels, **settings)
        gh, gw = out.grid_hw
        tokens = torch.cat(out.patch_tokens, dim=-1).float().reshape(len(batch), gh, gw, -1)
        return tokens, out.cls_token.float(), out.register_tokens.float()
