"""The command line: `python -m pipelines.batch INPUT --out OUT [--tasks ...] [--ray ADDRESS] [--batch-size N]`."""

from __future__ import annotations

import argparse
import os
import sys

from pipelines import settings
from pipelines import tasks as registry
from pipelines.batch import inputs, job as jobs, record
from pipelines.log.eventlog import EventLog, LogError
from pipelines.models import ModelLoadError

# The demo's flags that choose and place models and the log; the server's own (host, port) mean nothing here.
NOT_HERE = ("host", "port")
LOG_CHOICES = ("none", "runs", "rows")


def parser() -> argparse.ArgumentParser:
    """The batch command's flags: its own, then the same model flags as `python -m demo`, from pipelines.settings."""
    p = argparse.ArgumentParser(prog="python -m pipelines.batch",
                                description="Recognise a folder, glob, list of paths or bucket of images on Ray.")
    p.add_argument("input", metavar="INPUT", help="a folder, a glob (quote it), a .txt file of paths one a line, "
                                                  "or a URI pyarrow reads (file://, s3://, gs://)")
    p.add_argument("--out", required=True, help="the Parquet dataset of results (a folder or URI); a rerun adds "
                                                "only the images it lacks for the same model versions")
    p.add_argument("--tasks", default=",".join(registry.DEFAULT_TASKS),
                   help=f"comma-separated tasks of {', '.join(registry.REGISTRY)} (default %(default)s)")
    p.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="join this Ray cluster (else RAY_ADDRESS, else a local Ray on this machine)")
    p.add_argument("--batch-size", type=int, default=8, help="images per model call (default %(default)s)")
    p.add_argument("--workers", type=int, default=0,
                   help="model-holding actors; 0: one per GPU of the cluster, else one per CPU (default)")
    p.add_argument("--log", choices=LOG_CHOICES, default="runs",
                   help="what goes into the DuckDB log at --db: nothing, the run (default), or the run and one "
                        "prediction per recognised image (source 'batch')")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    settings.add_arguments(p, tuple(s.name for s in settings.SETTINGS if s.cli and s.name not in NOT_HERE))
    return p


def _open_log(path: str, mode: str) -> EventLog | None:
    """The log to write the run into, or None; asked-for rows need it, a run record alone only warns."""
    if mode == "none":
        return None
    try:
        return EventLog(path).open()
    except LogError as exc:
        if mode == "rows":
            raise SystemExit(f"{exc} Stop that process or pass --db another file.") from None
        print(f"warning: the run is not logged: {exc}", file=sys.stderr)
        return None


def main(argv: list[str] | None = None) -> int:
    """Run one job; exit status 0, or 1 when a task failed on some image (refusals are results, not failures)."""
    args = parser().parse_args(argv)
    if args.batch_size < 1:
        raise SystemExit("--batch-size must be at least 1.")
    config = settings.resolve(args)
    try:
        names = registry.resolve(args.tasks.split(","))
    except registry.BadRequest as exc:
        raise SystemExit(str(exc)) from None
    job = jobs.Job(input=args.input, out=args.out, config=config, tasks=names, batch_size=args.batch_size,
                   ray_address=args.ray or os.environ.get("RAY_ADDRESS") or None, workers=args.workers)
    log = _open_log(config.db, args.log)  # before the work: a log another process holds is known at once
    try:
        try:
            summary = jobs.run(job, progress=not args.no_progress)
        except (inputs.InputError, ModelLoadError) as exc:  # a sentence for the operator, not a traceback
            raise SystemExit(str(exc)) from None
        if log is not None:
            if args.log == "rows":
                record.log_rows(log, summary.rows, registry.build(config))
            record.log_run(log, summary, job)
    finally:
        if log is not None:
            log.close()
    print(summary.line())
    return 1 if summary.errors else 0
