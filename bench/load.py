"""Concurrent clients against a running demo: `python -m bench.load URL CLIENTS REQUESTS PHOTO...`, JSON out.

Run by the benchmark in its own process at low CPU priority (nice 10): on a 2-core machine the load generator
shares the cores with the server it measures, and at normal priority its client threads would steal time from
the server's torch threads instead of waiting their turn like remote clients do.
"""

from __future__ import annotations

import json
import resource
import sys
import threading
import time
from pathlib import Path


def run(url: str, paths: list[Path], clients: int, requests: int) -> dict:
    """`requests` predictions from `clients` threads, each with its own gradio_client, as fast as answered."""
    from bench.common import percentile
    from bench.run import _client, _predict

    pool = [_client(url) for _ in range(clients)]
    jobs = list(range(requests))
    lock = threading.Lock()
    latencies: list[float] = []
    model_ms: list[float] = []  # classify + caption as the server timed them: grows if the clients crowd it
    errors: list[str] = []
    barrier = threading.Barrier(clients + 1)

    def worker(client):
        barrier.wait()
        while True:
            with lock:
                if not jobs:
                    return
                i = jobs.pop()
            try:
                wall, result = _predict(client, paths[i % len(paths)])
                with lock:
                    latencies.append(wall)
                    model_ms.append(result["timings_ms"]["classify"] + result["timings_ms"]["caption"])
            except Exception as exc:  # a refused or failed request is counted, not fatal
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])

    threads = [threading.Thread(target=worker, args=(c,)) for c in pool]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    return {"clients": clients, "requests": len(latencies), "errors": errors, "seconds": round(elapsed, 2),
            "req_per_s": round(len(latencies) / elapsed, 3), "p50_ms": round(percentile(latencies, 50), 1),
            "p95_ms": round(percentile(latencies, 95), 1), "p99_ms": round(percentile(latencies, 99), 1),
            "model_ms_p50": round(percentile(model_ms, 50), 1),
            "client_cpu_s": round(sum(resource.getrusage(resource.RUSAGE_SELF)[:2]), 2)}


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    url, clients, requests, paths = args[0], int(args[1]), int(args[2]), [Path(p) for p in args[3:]]
    print(json.dumps(run(url, paths, clients, requests)))


if __name__ == "__main__":
    main()
