"""What one request costs a server process: its resident-memory peak and CPU time, read from /proc."""

from __future__ import annotations

import os
from typing import Any, Callable


def status_kb(pid: int, key: str) -> int:
    """A kB figure (VmRSS, VmHWM, ...) from /proc/PID/status."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used so far."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def cost(pid: int, call: Callable[[], Any]) -> tuple[float, float, Any]:
    """Run call() and return (peak resident rise in MB, CPU seconds of pid, call's result or exception).

    The peak is VmHWM after the call less VmRSS before it, with VmHWM reset first (clear_refs 5), so it is this
    request's own peak, not an earlier one's."""
    with open(f"/proc/{pid}/clear_refs", "w") as fh:
        fh.write("5")
    before, cpu = status_kb(pid, "VmRSS"), cpu_seconds(pid)
    try:
        result = call()
    except Exception as exc:  # a refusal is an answer too: its cost is measured the same way
        result = exc
    return (status_kb(pid, "VmHWM") - before) / 1024, cpu_seconds(pid) - cpu, result
