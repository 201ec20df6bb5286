"""The local dataset engine: everything in this process, decoding, the model and writing overlapped.

Threads decode and resize the images of at most two shards ahead of the model (a semaphore bounds
them, so memory stays flat however large the dataset), the model runs in the calling thread on
full batches (:func:`~dinofeat.dataset.workunits.compute_shard`), and one writer thread writes the
previous shard while the next is computed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from queue import Queue

from dinofeat.dataset.listing import Item
from dinofeat.dataset.workunits import (
    Decoded,
    FeatureJob,
    ItemOutcome,
    Shard,
    ShardResult,
    TrackJob,
    compute_shard,
    decode_image,
    fit_storage_pca,
    track_item,
    write_shard_result,
)
from dinofeat.features.extractor import Extractor
from dinofeat.features.upsample import Upsampler
from dinofeat.models.digest import weights_digest
from dinofeat.models.vit import DenseViT
from dinofeat.options import ExtractorOptions
from dinofeat.pca import PCABasis
from dinofeat.runtime.devices import precision_name
from dinofeat.runtime.modelthread import block_interrupts, start_thread

#: What the listing thread hands the model: a shard and its images being decoded; an error; None at the end.
_Handed = tuple[Shard, list[Future[Decoded]]] | BaseException | None


class LocalEngine:
    """Runs the work in this process: one model; decoding, the model and writing overlap.

    ``model``: an already built model to use instead of loading ``extractor_options.model``.
    """

    def __init__(self, model: DenseViT | None = None) -> None:
        self._model = model
        self._extractor: Extractor | None = None
        self._upsampler: Upsampler | None = None

    def __enter__(self) -> LocalEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self._extractor = None
        self._upsampler = None

    def extractor(self, options: ExtractorOptions) -> Extractor:
        if self._extractor is None:
            self._extractor = Extractor.from_options(options, model=self._model)
        return self._extractor

    def weights_digest(self, options: ExtractorOptions) -> str:
        return weights_digest(self.extractor(options).model)

    def precision_used(self, options: ExtractorOptions) -> str:
        """The precision the model runs in (``"auto"`` resolved: ``"bf16"``, ``"fp32"``...)."""
        return precision_name(self.extractor(options).dtype)

    def fit_pca(self, job: FeatureJob, items: Sequence[Item]) -> PCABasis:
        return fit_storage_pca(items, self.extractor(job.extractor), job)

    def shards(
        self, shards: Iterable[Shard], job: FeatureJob, on_items: Callable[[int], None]
    ) -> Generator[ShardResult, None, None]:
        """Compute and write ``shards``; yields each one's result once it is written.

        Threads decode and resize the images of at most two shards ahead (a semaphore bounds
        them), the model runs here, and a writer thread writes the previous shard.
        """
        extractor = self.extractor(job.extractor)
        extractor.expect_images(job.images)
        if self._upsampler is None:
            self._upsampler = job.upsampler(extractor)
        upsampler = self._upsampler
        decoders = ThreadPoolExecutor(
            job.dataset.decode_threads, thread_name_prefix="dinofeat-decode", initializer=block_interrupts
        )
        writer = ThreadPoolExecutor(1, thread_name_prefix="dinofeat-write", initializer=block_interrupts)
        ahead, stop, queue = threading.Semaphore(2), threading.Event(), Queue[_Handed]()

        def produce() -> None:
            try:
                for shard in shards:
                    while not ahead.acquire(timeout=0.1):
                        if stop.is_set():
                            return
                    if stop.is_set():
                        return
                    queue.put((shard, [decoders.submit(decode_image, item, extractor) for item in shard.items]))
            except BaseException as err:  # noqa: BLE001 - handed to the consumer, which raises it
                queue.put(err)
                return
            queue.put(None)

        start_thread(produce, name="dinofeat-list")
        written: tuple[ShardResult, Future[None]] | None = None
        try:
            while (got := queue.get()) is not None:
                if isinstance(got, BaseException):
                    raise got
                shard, futures = got
                stop_on_error = job.dataset.on_error == "fail"
                result = compute_shard(
                    shard.number,
                    (f.result() for f in futures),
                    extractor,
                    pca=job.pca,
                    upsampler=upsampler,
                    upsample_scale=job.upsample_scale,
                    stop_on_error=stop_on_error,
                    on_items=on_items,
                )
                ahead.release()
                if written is not None:
                    yield _finished(*written)
                    written = None
                if result.stopped:
                    yield result
                    return
                written = (result, writer.submit(write_shard_result, job, result))
            if written is not None:
                yield _finished(*written)
        finally:
            stop.set()
            decoders.shutdown(wait=False, cancel_futures=True)
            writer.shutdown(wait=True)  # a write under way finishes: it is atomic, and then counts as done

    def tracks(self, items: Iterable[Item], job: TrackJob) -> Generator[ItemOutcome, None, None]:
        """Track ``items`` one video after another (each streams its frames)."""
        extractor = self.extractor(job.extractor)
        for item in items:
            yield track_item(item, extractor, job)


def _finished(result: ShardResult, future: Future[None]) -> ShardResult:
    future.result()  # raises the writer's error (disk full, say)
    result.maps = []
    return result
