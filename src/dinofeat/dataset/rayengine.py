"""The Ray dataset engine: Ray Data actors, one model per worker, on this machine or a cluster.

The pipeline is plain Ray Data, no scheduler of ours:

1. the driver writes the pending work (one row per shard of images, or per video) to a Parquet
   plan in the output folder, streaming;
2. ``ray.data.read_parquet(plan)`` reads it back, one block per row, so the rows spread over the
   workers;
3. ``map_batches(_ShardWorker, batch_size=1, concurrency=N, num_gpus=G)``: each worker is an actor
   that loads the model once (``__init__``) and, per row, decodes the shard's images with a few
   threads, computes it with :func:`~dinofeat.dataset.workunits.compute_shard` (the local engine's
   batching, so the files are the same bytes) and writes the shard file atomically (or tracks
   one video and writes its files, :func:`~dinofeat.dataset.workunits.track_item`);
4. the driver streams the small result rows (``iter_rows``) into the progress bar and
   ``errors.jsonl``, and writes the index at the end.

Workers write straight into the output folder, so on a cluster it must be on storage every node
sees (NFS, a mounted bucket), like the inputs and the weights (``--weights`` on shared storage, or
the weights in each node's torch hub / Hugging Face cache). Ray restarts a killed worker and runs
its row again; a row's files appear whole or not at all.

``--ray-address`` (or ``RAY_ADDRESS``) joins a running cluster; otherwise a local Ray is started
for the run and stopped after it (one that is already running in this process is used as it is).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import re
import signal
import sys
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from dinofeat import errors
from dinofeat.dataset.listing import Item
from dinofeat.dataset.workunits import (
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
from dinofeat.errors import DinofeatError, InputError
from dinofeat.features.extractor import Extractor
from dinofeat.models.digest import weights_digest
from dinofeat.models.weights import load_model
from dinofeat.options import DatasetOptions, ExtractorOptions
from dinofeat.pca import PCABasis
from dinofeat.runtime.devices import precision_name, resolve_device, resolve_precision
from dinofeat.runtime.modelthread import block_interrupts

log = logging.getLogger(__name__)

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # terminal colour codes in Ray's error texts
#: Rows of the plan written per Parquet row group.
PLAN_CHUNK = 256
RAY_HINT = 'the ray engine needs Ray: pip install "dinofeat[ray]"'


def _import_ray() -> Any:
    try:
        import ray  # lazy: Ray is an optional extra (dinofeat[ray]), imported only by this engine
        import ray.data  # lazy: the data library is a separate extra of ray
    except ImportError:
        raise InputError(RAY_HINT) from None
    return ray


class RayEngine:
    """Runs a dataset's work on Ray actors; use as a context manager (starts or joins Ray)."""

    def __init__(self, options: DatasetOptions) -> None:
        self.options = options
        self._ray: Any = None  # the ray module, while the engine is entered
        self._started = False

    def __enter__(self) -> RayEngine:
        ray = _import_ray()
        if not ray.is_initialized():
            address = self.options.ray_address or os.environ.get("RAY_ADDRESS") or None
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
            self._started = True
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the command draws its own bar
        context.print_on_execution_start = False
        # Ray Data logs a summary of every execution at INFO; for the run's length only, keep its warnings
        self._data_log = logging.getLogger("ray.data")
        self._data_level = self._data_log.level
        if not log.isEnabledFor(logging.DEBUG):
            self._data_log.setLevel(logging.WARNING)
        self._ray = ray
        return self

    def __exit__(self, *exc: object) -> None:
        if self._started and self._ray is not None:
            self._ray.shutdown()
        if self._ray is not None:
            self._data_log.setLevel(self._data_level)
        self._ray = None

    # -- resources ------------------------------------------------------------------------------
    def resources(self) -> tuple[int, float, float, int | None]:
        """``(workers, gpus per worker, cpus per worker, torch threads per worker)`` from the options
        and the cluster. CPU workers reserve one CPU each (so Ray Data can still schedule its read
        tasks) and run torch on their share of the cluster's CPUs."""
        available = self._ray.cluster_resources()
        gpus = self.options.gpus_per_worker
        if gpus is None:
            gpus = 1.0 if available.get("GPU", 0) >= 1 else 0.0
        workers = self.options.workers or (max(1, int(available.get("GPU", 0) // gpus)) if gpus else 1)
        cpus = self.options.cpus_per_worker or 1.0
        threads = int(self.options.cpus_per_worker or 0) or (
            None if gpus else max(1, int(available.get("CPU", 1) // workers))
        )
        return workers, gpus, cpus, threads

    def _remote(self, function: Callable[..., Any], *, model: bool) -> Any:
        _, gpus, cpus, threads = self.resources()
        if not model:
            return self._ray.remote(num_gpus=0, num_cpus=1)(function)
        return self._ray.remote(num_gpus=gpus, num_cpus=cpus, runtime_env=_threads_env(threads))(function)

    def _get(self, ref: Any) -> Any:
        try:
            return self._ray.get(ref)
        except Exception as err:  # noqa: BLE001 - Ray wraps the worker's exception; ours is the message
            raise _unwrap(err) from None

    # -- the engine interface -------------------------------------------------------------------
    def weights_digest(self, options: ExtractorOptions) -> str:
        """sha256 of the weights, computed on a worker (the driver needs neither the model nor a GPU)."""
        return self._get(self._remote(_weights_digest, model=False).remote(options))

    def precision_used(self, options: ExtractorOptions) -> str:
        """The precision the model runs in (``"auto"`` resolved), asked of a worker with the
        resources the model gets (a GPU's precision is not the driver's)."""
        return self._get(self._remote(_precision_used, model=True).remote(options))

    def fit_pca(self, job: FeatureJob, items: Sequence[Item]) -> PCABasis:
        """The ``--pca`` basis, fitted on one worker with :func:`~dinofeat.dataset.workunits.fit_storage_pca`."""
        return self._get(self._remote(_fit_pca, model=True).remote(job, list(items)))

    def shards(
        self, shards: Iterable[Shard], job: FeatureJob, on_items: Callable[[int], None]
    ) -> Generator[ShardResult, None, None]:
        rows = ({"number": s.number, "items": _items_json(s.items)} for s in shards)
        for row in self._run(rows, _ShardWorker, job):
            result = ShardResult(
                int(row["number"]),
                items=json.loads(row["items"]),
                errors=json.loads(row["errors"]),
                stopped=bool(row["stopped"]),
            )
            on_items(len(result.items) + len(result.errors))
            yield result

    def tracks(self, items: Iterable[Item], job: TrackJob) -> Generator[ItemOutcome, None, None]:
        rows = ({"number": item.index, "items": _items_json([item])} for item in items)
        for row in self._run(rows, _TrackWorker, job):
            yield ItemOutcome(int(row["number"]), row["path"], row["error"] or None)

    def _run(
        self, rows: Iterable[dict[str, Any]], worker: type, job: FeatureJob | TrackJob
    ) -> Iterator[dict[str, Any]]:
        ray = self._ray
        plan = Path(job.folder) / f".plan-{os.getpid()}.parquet"
        count = _write_plan(plan, rows)
        if count == 0:
            plan.unlink(missing_ok=True)
            return
        workers, gpus, cpus, threads = self.resources()
        dataset = ray.data.read_parquet(str(plan), override_num_blocks=count, num_cpus=0).map_batches(
            worker,
            fn_constructor_kwargs={"job": job, "fate_share": self._started},
            batch_size=1,
            batch_format="pandas",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_gpus=gpus,
            num_cpus=cpus,
            runtime_env=_threads_env(threads),
        )
        try:
            for row in dataset.iter_rows():
                if row["fatal"]:
                    raise _revived(row["fatal"])
                yield row
        except DinofeatError:
            raise
        except Exception as err:  # noqa: BLE001 - Ray wraps the worker's exception; ours is the message
            raise _unwrap(err) from None
        finally:
            plan.unlink(missing_ok=True)


def _items_json(items: Sequence[Item]) -> str:
    return json.dumps([[item.index, item.path, item.file, item.points] for item in items])


def _items(text: str) -> list[Item]:
    return [Item(index, path, file, points) for index, path, file, points in json.loads(text)]


def _write_plan(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Stream ``rows`` (``number``: int, ``items``: JSON text) to a Parquet file; returns their count."""
    schema = pa.schema([("number", pa.int64()), ("items", pa.string())])
    count, chunk = 0, []
    with pq.ParquetWriter(str(path), schema) as writer:
        for row in rows:
            chunk.append(row)
            if len(chunk) == PLAN_CHUNK:
                writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
                count, chunk = count + len(chunk), []
        if chunk:
            writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
            count += len(chunk)
    return count


def _fatal(err: DinofeatError) -> str:
    """A worker's error that stops the run (a full disk), as a result row carries it to the driver:
    Ray Data does not carry an exception's cause across, only its traceback as text."""
    return json.dumps([type(err).__name__, err.template])


def _revived(text: str) -> DinofeatError:
    """The error :func:`_fatal` sent, of its own class (a dinofeat error class), marks and all."""
    name, template = json.loads(text)
    kind = getattr(errors, name, None)
    if not (isinstance(kind, type) and issubclass(kind, DinofeatError)):
        kind = DinofeatError
    return kind(template)


def _unwrap(err: BaseException) -> BaseException:
    """The dinofeat error inside Ray's wrappers (RayTaskError, UserCodeException), or a one-line one."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, DinofeatError):
            return seen
        cause = getattr(seen, "cause", None)
        seen = cause if isinstance(cause, BaseException) else seen.__cause__
    text = " ".join(_ANSI.sub("", str(err)).split())
    return RuntimeError(f"a Ray worker failed: {text[:300]}")


# ---------------------------------------------------------------------------------------------
# What runs on the workers (module level, so that Ray pickles them by reference)


def _weights_digest(options: ExtractorOptions) -> str:
    return weights_digest(load_model(options.model, options.weights))


def _precision_used(options: ExtractorOptions) -> str:
    return precision_name(resolve_precision(options.precision, resolve_device(options.device)))


def _fit_pca(job: FeatureJob, items: list[Item]) -> PCABasis:
    return fit_storage_pca(items, Extractor.from_options(job.extractor), job)


def _threads_env(threads: int | None) -> dict[str, dict[str, str]] | None:
    """The runtime environment giving a CPU worker ``threads`` torch threads: Ray sets
    OMP_NUM_THREADS to the reserved CPUs (one), and raising it later with ``torch.set_num_threads``
    runs slower than one thread; set before the worker starts, it runs as fast as a plain process."""
    if not threads:
        return None
    return {"env_vars": {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}}


def _die_with_raylet() -> None:
    """Make this worker die the moment its raylet does (Linux ``PR_SET_PDEATHSIG``; elsewhere
    nothing). A local Ray's raylet dies with the driver (Ray's own kernel fate sharing), but its
    workers notice only a second or two later and meanwhile write shards of a run that is over."""
    if not sys.platform.startswith("linux"):
        return
    raylet = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != raylet or raylet == 1:  # it died before the call: the signal will not come
        os._exit(1)


class _ShardWorker:
    """A Ray actor: the model, loaded once; each call computes and writes one shard."""

    def __init__(self, job: FeatureJob, fate_share: bool = False) -> None:
        if fate_share:
            _die_with_raylet()
        self.job = job
        self.extractor = Extractor.from_options(job.extractor)
        self.extractor.expect_images(job.images)  # every worker weighs the whole dataset: it compiles readily
        self.upsampler = job.upsampler(self.extractor)
        self.decoders = ThreadPoolExecutor(
            job.dataset.decode_threads, thread_name_prefix="dinofeat-decode", initializer=block_interrupts
        )

    def __call__(self, batch: Any) -> Any:
        """``batch``: a pandas DataFrame of plan rows (``number``, ``items``) -> one of result rows."""
        import pandas as pd  # lazy: pandas comes with Ray (an optional extra)

        out = []
        for number, text in zip(batch["number"], batch["items"]):
            try:
                result = self._shard(int(number), text)
            except DinofeatError as err:  # a full disk: the driver raises it (see _fatal)
                out.append(
                    {"number": int(number), "items": "[]", "errors": "[]", "stopped": True, "fatal": _fatal(err)}
                )
                break
            out.append(
                {
                    "number": int(number),
                    "items": json.dumps(result.items),
                    "errors": json.dumps(result.errors),
                    "stopped": result.stopped,
                    "fatal": "",
                }
            )
        return pd.DataFrame(out, columns=["number", "items", "errors", "stopped", "fatal"])

    def _shard(self, number: int, text: str) -> ShardResult:
        """Compute shard ``number`` (its items as the plan's JSON ``text``) and write it, unless stopped."""
        futures = [self.decoders.submit(decode_image, item, self.extractor) for item in _items(text)]
        result = compute_shard(
            number,
            (f.result() for f in futures),
            self.extractor,
            pca=self.job.pca,
            upsampler=self.upsampler,
            upsample_scale=self.job.upsample_scale,
            stop_on_error=self.job.dataset.on_error == "fail",
        )
        if not result.stopped:
            write_shard_result(self.job, result)
        return result


class _TrackWorker:
    """A Ray actor: the model, loaded once; each call tracks one video and writes its files."""

    def __init__(self, job: TrackJob, fate_share: bool = False) -> None:
        if fate_share:
            _die_with_raylet()
        self.job = job
        self.extractor = Extractor.from_options(job.extractor)

    def __call__(self, batch: Any) -> Any:
        """``batch``: a pandas DataFrame of plan rows (``items``) -> one of result rows."""
        import pandas as pd  # lazy: pandas comes with Ray (an optional extra)

        out = []
        for text in batch["items"]:
            for item in _items(text):
                try:
                    outcome = track_item(item, self.extractor, self.job)
                except DinofeatError as err:  # a full disk: the driver raises it (see _fatal)
                    out.append({"number": item.index, "path": item.path, "error": "", "fatal": _fatal(err)})
                    return pd.DataFrame(out, columns=["number", "path", "error", "fatal"])
                out.append({"number": outcome.item, "path": outcome.path, "error": outcome.error or "", "fatal": ""})
        return pd.DataFrame(out, columns=["number", "path", "error", "fatal"])
