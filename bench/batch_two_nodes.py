"""A real two-node Ray cluster on this machine: `ray start --head`, a second `ray start --address` with its own
ports, the batch job submitted with `--ray`; prints and saves how many images each node recognised.

    python -m bench.batch_two_nodes [--images 63] [--batch-size 4]

Tiny models (built from configs): the point is the cluster, not model speed. Each node gets 1 CPU so the job
needs both. The nodes are stopped at the end (`ray stop` would stop every Ray on the machine: they are ended by
their own process ids instead).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import OUT, PHOTOS, built, machine

RAY = str(Path(sys.executable).with_name("ray"))


def _ports(base: int) -> list[str]:
    """One node's own ports, so two raylets on one host do not collide."""
    return ["--node-manager-port", str(base), "--object-manager-port", str(base + 1),
            "--runtime-env-agent-port", str(base + 2), "--dashboard-agent-grpc-port", str(base + 3),
            "--dashboard-agent-listen-port", str(base + 4), "--metrics-export-port", str(base + 5),
            "--min-worker-port", str(base + 10), "--max-worker-port", str(base + 200)]


def _start(args: list[str], env: dict) -> None:
    subprocess.run([RAY, "start", *args, "--disable-usage-stats", "--num-cpus", "1",
                    "--object-store-memory", str(200 * 1024 * 1024)], check=True, env=env,
                   stdout=subprocess.DEVNULL)


def _node_pids(session: Path) -> list[int]:
    """The Ray processes of this session: those whose command line names its temp dir, and their children."""
    table = [line.split(None, 2) for line in
             subprocess.run(["ps", "-eo", "pid,ppid,args"], capture_output=True, text=True).stdout.splitlines()[1:]]
    mine = {int(pid) for pid, _, cmd in (row for row in table if len(row) == 3) if str(session) in cmd}
    return sorted(mine | {int(row[0]) for row in table if len(row) >= 2 and int(row[1]) in mine})


def _stop(session: Path) -> None:
    """End this session's Ray processes by id: SIGTERM, then SIGKILL for those still there after 10 s."""
    pids = _node_pids(session)
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 0)):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while wait and time.monotonic() < deadline and any(os.path.exists(f"/proc/{pid}") for pid in pids):
            time.sleep(0.5)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=63)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--port", type=int, default=26379, help="the head's GCS port")
    args = parser.parse_args(argv)

    from devtools.standins import make_tiny_captioner, make_tiny_classifier

    classifier = built(OUT / "models" / "tiny-vit", make_tiny_classifier)
    captioner = built(OUT / "models" / "tiny-blip", make_tiny_captioner)
    OUT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="batch-two-nodes-", dir=OUT))
    listing = work / "inputs.txt"
    listing.write_text("\n".join(str(p) for p in sorted(PHOTOS.glob("*.JPEG"))[: args.images]) + "\n")
    # both nodes' files under one short temp dir of our own (socket paths have a length limit): its processes are
    # found by it
    session = Path(tempfile.mkdtemp(prefix="rb2n-", dir="/tmp"))
    # Ray's token authentication: every node and the job must hold the cluster's token (a real cluster does the same)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    address = f"127.0.0.1:{args.port}"
    result: dict = {}
    try:
        _start(["--head", "--port", str(args.port), "--node-ip-address", "127.0.0.1", "--include-dashboard=false",
                "--temp-dir", str(session), *_ports(args.port + 10)],
               env)
        _start(["--address", address, "--node-ip-address", "127.0.0.1", *_ports(args.port + 300)], env)
        started = time.perf_counter()
        job = subprocess.run([sys.executable, "-m", "pipelines.batch", str(listing), "--out", str(work / "out"),
                              "--ray", address, "--batch-size", str(args.batch_size), "--classifier", str(classifier),
                              "--captioner", str(captioner), "--log", "none", "--no-progress"],
                             env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if job.returncode:
            raise SystemExit(f"the job failed ({job.returncode}):\n{job.stderr[-3000:]}")
        import pyarrow.dataset as pads

        rows = pads.dataset(work / "out", format="parquet").to_table(columns=["path", "status", "node"]).to_pylist()
        per_node = collections.Counter(r["node"] for r in rows)
        result = {"address": address, "images": len(rows), "batch_size": args.batch_size, "wall_s": round(wall, 1),
                  "images_per_s_wall": round(len(rows) / wall, 2), "rows_per_node": dict(per_node),
                  "nodes_that_worked": len(per_node), "summary": job.stdout.strip().splitlines()[-1],
                  "machine": machine()}
        print(json.dumps(result, indent=2))
        (OUT / "batch_two_nodes.json").write_text(json.dumps(result, indent=2) + "\n")
    finally:
        _stop(session)
    return result


if __name__ == "__main__":
    main()
