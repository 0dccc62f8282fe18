"""Shared bits of the benchmark: paths, the stand-in models, timing statistics, machine facts."""

from __future__ import annotations

import datetime as dt
import os
import platform
import resource
import statistics
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"  # ignored by git: stand-in models, temp logs
PHOTOS = ROOT.parent / "shared" / "data" / "imagenet-sample"


def built(folder: Path, make: Callable[[Path], object]) -> Path:
    """A stand-in model folder, made by make(folder) the first time only."""
    if not (folder / "model.safetensors").is_file():
        make(folder)
    return folder


def standins(folder: Path = OUT / "models") -> tuple[Path, Path]:
    """The ViT-B/16 and BLIP-base stand-ins (random weights, real shapes), built once into folder."""
    from devtools.standins import make_standin_captioner, make_standin_classifier

    return built(folder / "vit-b16-224", make_standin_classifier), built(folder / "blip-base-384",
                                                                          make_standin_captioner)


def photos(folder: Path = PHOTOS) -> list[Path]:
    found = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    if not found:
        raise SystemExit(f"no photos in {folder}")
    return found


class Timer:
    """with Timer() as t: ...; t.ms"""

    def __enter__(self):
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.ms = (time.perf_counter() - self._start) * 1000


def md_table(headers: list[str], rows: list[list]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary(values: list[float]) -> dict:
    """n, median, mean, p90, min, max of a list of milliseconds, rounded."""
    if not values:
        return {"n": 0}
    return {"n": len(values), "median": round(statistics.median(values), 2), "mean": round(statistics.fmean(values), 2),
            "p90": round(percentile(values, 90), 2), "min": round(min(values), 2), "max": round(max(values), 2)}


def _status_mb(*keys: str) -> dict[str, float]:
    """The named memory lines of /proc/self/status (VmRSS, RssAnon, ...) in MB; empty where there is none."""
    found = {}
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in keys:
                    found[key] = int(value.split()[0]) / 1024
    except OSError:
        pass
    return found


def rss_mb() -> float:
    """This process's resident memory now, in MB (from /proc; 0 where there is none)."""
    return _status_mb("VmRSS").get("VmRSS", 0.0)


def rss_split_mb() -> dict:
    """Resident memory now by kind, in MB: anon (the process's own) and file (mapped files: libraries, weights).

    The file part depends on the page cache as much as on the process: the same libraries count tens of MB more
    right after they were written or read (a fresh install) than once the kernel has dropped some of their pages.
    """
    names = {"RssAnon": "anon", "RssFile": "file", "RssShmem": "shmem"}
    return {names[key]: round(mb, 1) for key, mb in _status_mb(*names).items()}


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB: VmHWM, else ru_maxrss.

    VmHWM first: ru_maxrss survives exec, so a process started from a big parent reports the parent's peak.
    """
    peak = _status_mb("VmHWM").get("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def machine() -> dict:
    """The machine and software the run was on."""
    import gradio
    import gradio_client
    import PIL
    import torch
    import transformers

    from pipelines.models import precision

    model = ""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            model = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "")
    except OSError:
        pass
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": model or platform.processor(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "gradio": gradio.__version__,
        "gradio_client": gradio_client.__version__,
        "pillow": PIL.__version__,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)"),
        "gpu": "none: no GPU machine was lent for this run",
        **precision.describe_machine(),
    }
