"""What one hostile upload costs a running demo: its resident-memory peak rise and CPU seconds, per attack.

    .venv/bin/python bench/hostile_uploads.py [TREE]

starts `python -m demo` from TREE (default: this checkout; give an older checkout to compare) on tiny random
models, sends each hostile image once (by upload, or as a data: URL payload), and prints per request the rise of
VmHWM over VmRSS before it (VmHWM reset first), the CPU seconds the demo used, and the answer."""

from __future__ import annotations

import base64
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))

from gradio_client import Client, handle_file  # noqa: E402

from devtools.standins import make_tiny_captioner, make_tiny_classifier  # noqa: E402
from tests import hostile_images as h  # noqa: E402
from tests import procmem  # noqa: E402
from devtools.demo_server import free_port, stop, wait_for_http  # noqa: E402


def main(tree: Path) -> None:
    """Run every attack once against a demo started from tree and print what each cost."""
    work = Path(tempfile.mkdtemp(prefix="hostile-"))
    vit, blip = make_tiny_classifier(work / "vit"), make_tiny_captioner(work / "blip")
    port = free_port()
    env = {**os.environ, "IMAGEREC_CLASSIFIER": str(vit), "IMAGEREC_CAPTIONER": str(blip),
           "IMAGEREC_DB": str(work / "log.duckdb"), "IMAGEREC_PORT": str(port), "IMAGEREC_CAPTION_MAX_TOKENS": "6",
           "IMAGEREC_RATE_LIMIT": "0", "GRADIO_TEMP_DIR": str(work / "gradio")}
    process = subprocess.Popen([sys.executable, "-m", "demo"], cwd=tree, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for_http(url, process)
        client = Client(url, verbose=False)

        def raw(payload: dict) -> str:
            body = json.dumps({"data": [payload, None]}).encode()
            request = urllib.request.Request(f"{url}gradio_api/call/predict", data=body, method="POST",
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=120) as response:
                event = json.loads(response.read())["event_id"]
            with urllib.request.urlopen(f"{url}gradio_api/call/predict/{event}", timeout=300) as response:
                return response.read().decode()

        def data_url(data: bytes, mime: str = "image/png"):
            return lambda: raw({"path": None, "url": f"data:{mime};base64," + base64.b64encode(data).decode()})

        def upload(data: bytes, name: str):
            path = work / name
            path.write_bytes(data)
            return lambda: client.predict(handle_file(str(path)), api_name="/predict")

        cat = (HERE / "demo" / "examples" / "cat.jpg").read_bytes()
        for _ in range(2):
            upload(cat, "warm.jpg")()  # lazy imports and the models' first run are not an upload's cost
        cases = [
            ("TIFF tag bomb (200 tags x 4 MB blob)", upload(h.tiff_tag_bomb(), "bomb.tif")),
            ("TIFF of 5,000 pages", upload(h.tiff_many_pages(), "pages.tif")),
            ("16-bit PNG 40 MP (78 KB)", upload(h.png16(value=30000), "p16.png")),
            ("16-bit TIFF 40 MP", upload(h.wide_tiff("I;16", 30000), "t16.tif")),
            ("float32 TIFF 40 MP", upload(h.wide_tiff("F", 0.5), "tf.tif")),
            ("palette bomb, 1-bit PNG 40 MP", upload(h.palette_bomb(), "pal.png")),
            ("PNG text bomb (70 x 1 MB zTXt)", upload(h.png_text_bomb(), "text.png")),
            ("APNG 36 MP + 20,000 frames", upload(h.apng_many_frames(), "anim.png")),
            ("GIF 36 MP + 20,000 frames", upload(h.gif_many_frames(), "anim.gif")),
            ("data: URL PNG 9000 x 9000", data_url(h.grey_png((9000, 9000)))),
            ("data: URL BMP 30.6 MB", data_url(h.bmp_of_bytes(30_600_000), "image/bmp")),
            ("data: URL 16-bit PNG 40 MP", data_url(h.png16(value=30000))),
            *((f"data: URL {fmt}", data_url(data)) for fmt, data in h.foreign_images().items()),
            ("normal photo after all of the above", upload(cat, "cat.jpg")),
        ]
        print(f"tree={tree} machine={_cpu_model()} ({os.cpu_count()} CPUs), python {platform.python_version()}")
        for name, call in cases:
            start = time.monotonic()
            rise, cpu, result = procmem.cost(process.pid, call)
            print(f"{name:38} rise {rise:7.1f} MB  cpu {cpu:5.2f} s  wall {time.monotonic() - start:5.1f} s  "
                  f"{_outcome(result)}", flush=True)
    finally:
        stop(process)


def _outcome(result) -> str:
    if isinstance(result, Exception):
        return "refused: " + str(result).splitlines()[0][:100]
    if isinstance(result, str):
        if "event: error" in result:
            return "refused: " + str(json.loads(result.split("data: ", 1)[1].splitlines()[0])["error"])[:100]
        return "accepted"
    return f"accepted {result['image']['width']} x {result['image']['height']}"


def _cpu_model() -> str:
    with open("/proc/cpuinfo") as fh:
        return next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "unknown")


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else HERE)
