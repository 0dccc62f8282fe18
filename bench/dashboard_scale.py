"""How the dashboard's queries scale: seed 10k, 100k and 1M-row logs and time each page's queries.

    python bench/dashboard_scale.py                  # 10k, 100k, 1M rows; about 2 minutes on 2 cores
    python bench/dashboard_scale.py --sizes 10000 100000 --runs 3

A "page" is what one tab of the dashboard runs on a cache miss: open a read-only connection, check the
log, read the sidebar's context, run the tab's queries, close. Each is timed from a cold connection
(best and median of --runs), every tab in queries.PAGES (Objects & custom labels included: the seeded
logs hold detect and zero_shot outputs), for the default view (last 7 days) and for all time. Results go to
bench/out/dashboard_scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import duckdb  # noqa: E402

from dashboard import logfile, queries  # noqa: E402
from pipelines.log import eventlog  # noqa: E402

END = "2025-06-01T00:00:00"  # fixed, so every run seeds the same rows
TARGET_S = 1.0


def seed(path: Path, rows: int) -> float:
    """Seed a fresh log with `python -m pipelines.seed`; returns the seconds it took."""
    path.unlink(missing_ok=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipelines.seed", "--db", str(path), "--rows", str(rows), "--end", END,
                    "--days", "30"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def views(path: Path) -> dict[str, tuple[queries.Filters, str]]:
    """The filters of the default view (last 7 days, as the app opens) and of all time."""
    with eventlog.reader(path) as con:
        ctx = queries.context(con)
    end = ctx.newest.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    week = queries.Filters(start=end - timedelta(days=7), end=end)
    return {"last 7 days": (week, queries.pick_interval(week.start, week.end)),
            "all time": (queries.Filters(), queries.pick_interval(ctx.oldest, end))}


def render(path: Path, page: str, filters: queries.Filters, interval: str) -> None:
    """What the app does for one tab on a cache miss, on one fresh connection."""
    with logfile.Session(path) as session:
        assert logfile.check(session).ok
        queries.context(session.con)
        queries.PAGES[page](session.con, filters, interval)


def export(path: Path, filters: queries.Filters, interval: str) -> None:
    """The Recent tab's download (Parquet, capped at EXPORT_LIMIT rows), also on a fresh connection."""
    with eventlog.reader(path) as con:
        queries.export(con, filters, "parquet")


def measure(fn, runs: int) -> dict:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return {"best_s": min(times), "median_s": statistics.median(times), "runs": times}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per page (default 5)")
    parser.add_argument("--workdir", type=Path, default=None, help="where to seed the logs (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "dashboard_scale.json")
    args = parser.parse_args(argv)

    results: dict = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                 "python": platform.python_version(), "duckdb": duckdb.__version__,
                                 "load_avg_at_start": os.getloadavg()},
                     "started": datetime.now().isoformat(timespec="seconds"), "runs": args.runs, "sizes": {}}
    tasks = {name: (lambda page: lambda p, f, i: render(p, page, f, i))(name) for name in queries.PAGES}
    tasks["Export (download)"] = export
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for rows in args.sizes:
            path = Path(tmp) / f"log-{rows}.duckdb"
            seconds = seed(path, rows)
            print(f"seeded {rows:,} rows in {seconds:.1f} s", flush=True)
            size = {"seed_s": seconds, "views": {}}
            for view, (filters, interval) in views(path).items():
                timings = {}
                for name, task in tasks.items():
                    task(path, filters, interval)  # one untimed run: the OS file cache, not DuckDB's, warm
                    timings[name] = measure(lambda: task(path, filters, interval), args.runs)
                size["views"][view] = {"interval": interval, "pages": timings}
            results["sizes"][str(rows)] = size
            path.unlink()
    results["load_avg_at_end"] = os.getloadavg()
    report(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0


def report(results: dict) -> None:
    """Print best/median per page and size, and how the cost grows from one size to the next."""
    sizes = list(results["sizes"])
    for view in next(iter(results["sizes"].values()))["views"]:
        print(f"\n{view}: seconds per page render (best / median of {results['runs']}), cold connection included")
        header = f"{'page':<24}" + "".join(f"{int(s):>18,}" for s in sizes)
        growth = [f"x{int(b) // int(a)} rows" for a, b in zip(sizes, sizes[1:])]
        header += "".join(f"{g:>13}" for g in growth)
        print(header)
        pages = results["sizes"][sizes[0]]["views"][view]["pages"]
        for page in pages:
            cells = [results["sizes"][s]["views"][view]["pages"][page] for s in sizes]
            line = f"{page:<24}" + "".join(f"{c['best_s']:>9.3f} /{c['median_s']:>6.3f}" for c in cells)
            line += "".join(f"{b['best_s'] / a['best_s']:>12.1f}x" for a, b in zip(cells, cells[1:]))
            print(line)
        biggest = results["sizes"][sizes[-1]]["views"][view]["pages"]
        worst = max((p for p in biggest if p in queries.PAGES), key=lambda p: biggest[p]["best_s"])
        verdict = "meets" if biggest[worst]["best_s"] < TARGET_S else "MISSES"
        print(f"slowest page at {int(sizes[-1]):,} rows: {worst} {biggest[worst]['best_s']:.3f} s best, "
              f"{biggest[worst]['median_s']:.3f} s median ({verdict} the {TARGET_S:.0f} s target)")


if __name__ == "__main__":
    sys.exit(main())
