"""The REST face attacked as the page and gradio_client are: hostile files, spoofed forwarded headers, floods."""

from __future__ import annotations

import httpx
import pytest

from devtools.demo_server import EXAMPLES, launched, test_settings
from tests import hostile_images as h

PHOTO = EXAMPLES / "cat.jpg"
PER_MINUTE = 4
SPOOFS = ({"X-Forwarded-For": "203.0.113.9"}, {"X-Real-IP": "203.0.113.9"}, {"Forwarded": "for=203.0.113.9"})


@pytest.fixture(scope="module")
def server(tiny_classifier_dir, tiny_captioner_dir, tmp_path_factory):
    """No admin password (admin only from this machine, directly) and a rate limit of PER_MINUTE a minute."""
    db = tmp_path_factory.mktemp("rest-hostile") / "log.duckdb"
    config = test_settings(tiny_classifier_dir, tiny_captioner_dir, db, rate_limit=PER_MINUTE)
    with launched(config) as (demo, url):
        with httpx.Client(base_url=url, timeout=120) as http:
            yield demo, http


def _send(http: httpx.Client, data: bytes, name: str = "photo.png", headers: dict | None = None) -> httpx.Response:
    return http.post("/v1/predict", files={"image": (name, data, "application/octet-stream")},
                     data={"tasks": "classify"}, headers=headers or {})


REFUSED = {
    "TIFF tag bomb": h.tiff_tag_bomb, "TIFF of 5,000 pages": h.tiff_many_pages, "TIFF directory loop": h.tiff_ifd_loop,
    "TIFF tag outside the file": h.tiff_tag_outside, "PNG text bomb": h.png_text_bomb,
    "ICO": lambda: h.foreign_images()["ICO"], "JPEG 2000": lambda: h.foreign_images()["JPEG2000"],
    "a PDF": lambda: b"%PDF-1.7\n1 0 obj <<>> endobj\n", "nothing": lambda: b"",
}
# bombs intake takes apart instead: one small frame, one palette plane (tests/test_intake_hostile.py bounds them)
BOUNDED = {"palette bomb": h.palette_bomb, "APNG of 20,000 frames": h.apng_many_frames,
           "GIF of 20,000 frames": h.gif_many_frames}


def test_hostile_files_through_rest_are_refused_with_a_sentence_and_the_service_stays_up(server):
    demo, http = server
    demo.studio.access.limiter.per_minute = 0  # this test counts refusals by content, not by the limiter
    try:
        for name, build in REFUSED.items():
            answer = _send(http, build())
            assert answer.status_code in (400, 413), (name, answer.status_code, answer.text[:300])
            sentence = answer.json()["error"]
            assert sentence.endswith(".") and "Traceback" not in sentence and "/tmp" not in sentence, (name, sentence)
        for name, build in BOUNDED.items():
            answer = _send(http, build())
            assert answer.status_code == 200 and answer.json()["labels"], (name, answer.status_code, answer.text[:300])
        assert http.get("/healthz").json()["ok"] is True
        with open(PHOTO, "rb") as f:
            good = _send(http, f.read(), "cat.jpg")
        assert good.status_code == 200 and good.json()["labels"]  # still answering after all of them
    finally:
        demo.studio.access.limiter.per_minute = PER_MINUTE


@pytest.mark.parametrize("spoof", SPOOFS, ids=["x-forwarded-for", "x-real-ip", "forwarded"])
def test_admin_over_rest_without_a_password_refuses_a_forwarded_request(server, spoof):
    _, http = server
    assert http.post("/v1/admin/reload").status_code == 200  # a direct connection from this machine
    refused = http.post("/v1/admin/reload", headers=spoof)  # as a local proxy passing on a remote client
    assert refused.status_code == 403 and refused.json()["error"]
    assert http.post("/v1/admin/purge", headers=spoof, json={"older_than_days": 0}).status_code == 403
    assert http.get("/v1/admin/export", headers=spoof).status_code == 403


def test_a_new_forwarded_address_each_time_does_not_escape_the_rate_limit(server):
    demo, http = server
    with open(PHOTO, "rb") as f:
        photo = f.read()
    codes = [_send(http, photo, "cat.jpg", {"X-Forwarded-For": f"198.51.100.{i}"}).status_code
             for i in range(PER_MINUTE + 3)]
    assert codes.count(429) >= 3, codes  # no trusted proxy: the header is the client's own and is never read
    limited = _send(http, photo, "cat.jpg")
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
