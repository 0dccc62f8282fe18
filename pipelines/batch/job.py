"""One batch job on Ray Data: list the input, skip what OUT has, recognise the rest in an actor pool, write Parquet."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.dataset as pads
from pyarrow import fs as pafs

from pipelines import tasks as registry
from pipelines.batch import inputs, worker
from pipelines.intake import ImageRejected, Limits, check_size
from pipelines.log.eventlog import new_id, utcnow
from pipelines.settings import Settings

READ_CPUS = 0.25  # reading and writing files wait on I/O: they must not hold a CPU the model actors need
# A model actor runs one torch thread on its CPU but reserves less than a whole one: with every CPU reserved by an
# actor, Ray could never schedule the reads that feed them, and the job would wait forever.
ACTOR_CPUS = 0.75


@dataclass(frozen=True)
class Job:
    """What to run: the input, where results go, the tasks, the settings (models) and how to spread the work."""

    input: str
    out: str
    config: Settings
    tasks: tuple[str, ...] = registry.DEFAULT_TASKS
    batch_size: int = 8
    ray_address: str | None = None
    workers: int = 0  # model actors; 0: one per GPU when the cluster has GPUs, else one per CPU


@dataclass
class Summary:
    """What a job did; images_per_s counts the files it read (done, refused, errors) over its wall time."""

    run_id: str
    started: object
    images: int = 0
    done: int = 0
    refused: int = 0
    skipped: int = 0
    errors: int = 0
    seconds: float = 0.0
    models: dict = field(default_factory=dict)
    rows: list = field(default_factory=list)  # this run's OUT rows, for the log

    @property
    def images_per_s(self) -> float:
        worked = self.done + self.refused + self.errors
        return round(worked / self.seconds, 3) if self.seconds > 0 else 0.0

    def line(self) -> str:
        return (f"{self.images} images: {self.done} done, {self.refused} refused, {self.skipped} skipped, "
                f"{self.errors} errors in {self.seconds:.1f} s ({self.images_per_s:.2f} images/s)")


def limits_of(config: Settings) -> Limits:
    """Intake's limits from the settings, as the demo sets them."""
    return Limits(max_bytes=int(config.max_upload_mb * 1_000_000), max_pixels=config.max_pixels,
                  min_side=config.min_side, max_decoded_bytes=int(config.max_decoded_mb * 1_000_000))


def planned_versions(tasks: dict, names: tuple[str, ...]) -> dict[str, str]:
    """Task -> the model version it will run, found without loading any weights."""
    return {name: tasks[name].model.planned_version() for name in names}


def _out(uri: str) -> tuple[pafs.FileSystem, str]:
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


def _read_out(filesystem: pafs.FileSystem, path: str, names: tuple[str, ...], where=None):
    """OUT's rows (all runs' files, read with this job's schema: a column an older run lacked reads as null)."""
    if filesystem.get_file_info(path).type != pafs.FileType.Directory:
        return None
    dataset = pads.dataset(path, filesystem=filesystem, format="parquet", schema=worker.schema(names),
                           exclude_invalid_files=True)
    return dataset.to_table(filter=where)


def already_done(filesystem: pafs.FileSystem, path: str, names: tuple[str, ...], models: str) -> set[str]:
    """Paths OUT holds a final row for (recognised or refused) made with these model versions."""
    where = (pc.field("models") == models) & pc.field("status").isin([worker.DONE, worker.REFUSED])
    found = _read_out(filesystem, path, names, where)
    return set(found.column("path").to_pylist()) if found is not None else set()


def _ray_init(address: str | None) -> None:
    import ray

    if ray.is_initialized():  # a caller (a test, a notebook) started or joined Ray already: use that
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address:
        # the workers on other machines need this package: Ray ships it with the job
        ray.init(address=address, runtime_env={"py_modules": [str(Path(__file__).resolve().parents[1])]},
                 log_to_driver=False)
    else:
        ray.init(include_dashboard=False, log_to_driver=False)


def _pool(job: Job, files: int) -> dict:
    """map_batches' actor pool and resources: an actor per GPU when the cluster has GPUs, else an actor per CPU.

    Ray Data restarts an actor that dies and retries its batches (max_restarts and max_task_retries default to
    unlimited for actor pools), so a lost worker costs time, not rows.
    """
    import ray

    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    size = job.workers or gpus or max(1, int(resources.get("CPU", 1)))
    size = max(1, min(size, -(-files // job.batch_size)))  # no more actors than batches
    pool = ray.data.ActorPoolStrategy(size=size)
    if gpus:
        return {"compute": pool, "num_gpus": 1, "num_cpus": READ_CPUS}
    return {"compute": pool, "num_cpus": ACTOR_CPUS}


def run(job: Job, progress: bool = True) -> Summary:
    """Run the job; returns what it did (OUT has one row per file read)."""
    import ray

    names = registry.resolve(job.tasks)
    request = registry.Request()
    built = registry.build(job.config)
    for name in names:  # the job's options, checked before any work (a ValueError is the sentence to show)
        built[name].check(request)
    summary = Summary(run_id=new_id(), started=utcnow())
    started = time.perf_counter()
    listing = inputs.list_input(job.input)
    summary.images = len(listing.files)
    summary.models = planned_versions(built, names)
    models = worker.models_key(summary.models)
    out_fs, out_path = _out(job.out)
    skip = already_done(out_fs, out_path, names, models)
    limits = limits_of(job.config)
    todo, refused_now = [], []
    for found in listing.files:
        if found.path in skip:
            summary.skipped += 1
            continue
        try:  # empty, missing and oversized files are refused from the listing: their bytes are never read
            if found.size < 0:
                raise ImageRejected("The file could not be found.")
            check_size(found.size, limits)
            todo.append(found)
        except ImageRejected as exc:
            refused_now.append(worker.refusal(found.path, str(exc), models, summary.run_id))
    if todo or refused_now:
        _ray_init(job.ray_address)
        ray.data.DataContext.get_current().enable_progress_bars = progress
        parts = []
        if todo:
            prefix = todo[0].path[: len(todo[0].path) - len(todo[0].location)]
            read = ray.data.read_binary_files([f.location for f in todo], filesystem=listing.filesystem,
                                              include_paths=True, num_cpus=READ_CPUS,
                                              ignore_missing_paths=True)  # gone since listed: the next run says so
            parts.append(read.map_batches(
                worker.Recognize, batch_size=job.batch_size,
                fn_constructor_kwargs={"config": job.config, "task_names": names, "limits": limits,
                                       "models": models, "run_id": summary.run_id, "prefix": prefix,
                                       "threads": job.config.threads or 1},
                **_pool(job, len(todo))))
        if refused_now:
            parts.append(ray.data.from_arrow(worker.table(refused_now, names)))
        dataset = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
        dataset.write_parquet(out_path, filesystem=out_fs, ray_remote_args={"num_cpus": READ_CPUS})
    mine = _read_out(out_fs, out_path, names, pc.field("run_id") == summary.run_id)
    summary.rows = mine.to_pylist() if mine is not None else []
    for row in summary.rows:
        status = row["status"]
        summary.done += status == worker.DONE
        summary.refused += status == worker.REFUSED
        summary.errors += status == worker.ERROR
    summary.seconds = round(time.perf_counter() - started, 3)
    return summary
