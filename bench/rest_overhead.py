"""The latency a REST request adds over the Gradio path: the same photo, answered from the recognizer's cache, so
what is timed is each face (upload, queue, encoding), not the model.

    python -m bench.rest_overhead [ROUNDS]      # prints a table and writes bench/out/rest_overhead.json
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time

import httpx

from bench.common import OUT, built
from devtools.demo_server import EXAMPLES, launched, test_settings


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> None:
    from gradio_client import Client, handle_file

    from devtools.standins import make_tiny_captioner, make_tiny_classifier

    rounds = int((sys.argv[1:] if argv is None else argv)[0]) if (sys.argv[1:] if argv is None else argv) else 50
    classifier = built(OUT / "models" / "tiny-vit", make_tiny_classifier)
    captioner = built(OUT / "models" / "tiny-blip", make_tiny_captioner)
    photo = sorted(EXAMPLES.glob("*.jpg"))[0]
    (OUT / "rest").mkdir(parents=True, exist_ok=True)
    db = OUT / "rest" / f"log-{time.time_ns()}.duckdb"
    config = test_settings(classifier, captioner, db, rate_limit=0)
    times: dict[str, list[float]] = {"rest": [], "gradio": []}
    with launched(config) as (_, url), httpx.Client(base_url=url, timeout=120) as http:
        client = Client(url, verbose=False)
        body = photo.read_bytes()

        def rest() -> None:
            answer = http.post("/v1/predict", files={"image": (photo.name, body, "image/jpeg")},
                               data={"tasks": "classify,caption"})
            answer.raise_for_status()

        def gradio() -> None:
            client.predict(handle_file(str(photo)), None, ["classify", "caption"], api_name="/predict")

        rest(), gradio()  # warm: models loaded, the answer cached, connections open
        for i in range(rounds):
            for name, call in (("rest", rest), ("gradio", gradio)) if i % 2 else (("gradio", gradio), ("rest", rest)):
                started = time.perf_counter()
                call()
                times[name].append((time.perf_counter() - started) * 1000)
    result = {"cpu": cpu_name(), "rounds": rounds, "photo": photo.name,
              **{f"{name}_p50_ms": round(statistics.median(v), 2) for name, v in times.items()},
              **{f"{name}_p90_ms": round(statistics.quantiles(v, n=10)[-1], 2) for name, v in times.items()}}
    result["rest_minus_gradio_p50_ms"] = round(result["rest_p50_ms"] - result["gradio_p50_ms"], 2)
    print(json.dumps(result, indent=2))
    (OUT / "rest_overhead.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
