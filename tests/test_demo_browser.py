"""End to end in a real Chromium: upload, labels and caption, edit, thumbs down with a correction, rows in DuckDB."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from playwright.sync_api import expect

from pipelines.log import eventlog, sql
from tests.browser import recognize_upload, screenshot_path
from devtools.demo_server import PHOTOS, ROOT, launched, test_settings

REAL_CLASSIFIER = ROOT.parent / "shared" / "models" / "mobilenet_v2_1.0_224"

pytestmark = pytest.mark.browser


def _photo():
    photos = sorted(PHOTOS.glob("*.JPEG"))
    if not photos:
        pytest.skip(f"the shared sample photos are not at {PHOTOS}")
    return next((p for p in photos if "tabby" in p.name or "cat" in p.name), photos[0])


def _rows(db, sql, params, want, timeout=5.0):
    deadline = time.monotonic() + timeout
    while True:
        rows = eventlog.query(db, sql, params)
        if len(rows) >= want or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def _real_story():
    """(classifier folder, photo, label it shows first, right label) with the real MobileNetV2, or None without it.

    MobileNetV2 takes this coyote for a timber wolf (coyote second), so the screenshot shows a real correction.
    """
    photo = PHOTOS / "n02114855_coyote.JPEG"
    if not (REAL_CLASSIFIER / "model.safetensors").is_file() or not photo.is_file():
        return None
    return REAL_CLASSIFIER, photo, "timber wolf", "coyote"


def test_upload_edit_and_correct_in_the_browser(browser, tiny_classifier_dir, tiny_captioner_dir, tmp_path):
    # the README screenshot comes from here: real labels from MobileNetV2 where the shared model is present
    story = _real_story()
    classifier, photo = (story[0], story[1]) if story else (tiny_classifier_dir, _photo())
    db = tmp_path / "log.duckdb"
    with launched(test_settings(classifier, tiny_captioner_dir, db)) as (demo, url):
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        try:
            page.goto(url)
            page.locator("#model-status").get_by_text("classifier").wait_for()
            page.locator("#photo input[type=file]").set_input_files(str(photo))

            labels = page.locator("#labels")
            first_label = demo.studio.recognizer.classifier.labels  # the model's names
            if story:  # the real model's answer, the wrong label first
                labels.get_by_text(story[2]).first.wait_for(timeout=60_000)
                expect(labels).to_contain_text(story[3])
            else:
                labels.get_by_text(first_label[0]).or_(labels.get_by_text(first_label[1])).first.wait_for(
                    timeout=60_000)
            caption = page.locator("#caption textarea")
            page.wait_for_function("el => el.value.length > 0", arg=caption.element_handle(), timeout=60_000)
            shown_caption = caption.input_value()

            edited = "a coyote lying on the ground" if story else "a tabby cat asleep on a sofa"
            caption.fill(edited)
            page.locator("#save-caption").click()
            page.locator("#message").get_by_text("caption edited").wait_for()

            page.locator("#thumbs-down").click()
            dropdown = page.locator("#corrected-label input")
            dropdown.wait_for()
            wanted = story[3] if story else first_label[-1]
            dropdown.click()
            dropdown.fill(wanted[:5])
            page.get_by_role("option", name=wanted, exact=True).click()
            page.locator("#save-correction").click()
            page.locator("#message").get_by_text("should be").wait_for()
            page.screenshot(path=str(screenshot_path("demo.png")), full_page=True)
            expect(page.locator("#history")).to_contain_text("should be")
        finally:
            page.close()

        predictions = _rows(db, f"SELECT id, caption, source, session_id FROM {sql.wide()}", [], 1)
        assert len(predictions) == 1
        prediction = predictions.iloc[0]
        assert prediction.caption == shown_caption and prediction.source == "demo" and prediction.session_id
        feedback = _rows(db, "SELECT verdict, corrected_label, edited_caption FROM feedback WHERE prediction_id = ? "
                             "ORDER BY created_at", [prediction.id], 3)
        assert feedback.edited_caption.tolist()[0] == edited
        assert feedback.verdict.tolist()[1:] == ["down", "down"]
        assert feedback.corrected_label.tolist()[2] == wanted


def test_delete_my_data_in_the_browser_leaves_no_row_or_copy(browser, tiny_classifier_dir, tiny_captioner_dir,
                                                             tmp_path):
    from gradio.utils import get_upload_folder

    photo = tmp_path / "my-own-photo.jpg"
    photo.write_bytes(_photo().read_bytes())
    db = tmp_path / "log.duckdb"
    config = test_settings(tiny_classifier_dir, tiny_captioner_dir, db, keep_images=True,
                           images_dir=str(tmp_path / "kept"))
    with launched(config) as (demo, url):
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        try:
            recognize_upload(page, url, photo)
            page.locator("#thumbs-up").click()
            page.locator("#message").get_by_text("Thanks").wait_for()
            assert any(Path(get_upload_folder()).rglob(photo.name)), "the upload should be cached while in use"
            assert len(_rows(db, "SELECT id FROM predictions", [], 1)) == 1
            page.locator("#delete-my-data").click()  # asks first: nothing goes until "Yes, delete"
            page.locator("#confirm-delete").wait_for()
            assert len(eventlog.query(db, "SELECT id FROM predictions")) == 1
            page.locator("#confirm-delete").click()
            message = page.locator("#message")
            message.get_by_text("Deleted 1 prediction(s), 1 feedback row(s), 1 kept image(s)").wait_for()
            expect(message).to_contain_text("1 uploaded copy(ies)")
        finally:
            page.close()
    assert not len(eventlog.query(db, "SELECT id FROM predictions"))
    assert not len(eventlog.query(db, "SELECT id FROM feedback"))
    assert not list((tmp_path / "kept").iterdir())
    assert not any(Path(get_upload_folder()).rglob(photo.name)), "a cached copy of the upload is left"


def test_explain_toggle_shows_a_heatmap_over_the_photo(browser, tiny_classifier_dir, tiny_captioner_dir, tmp_path):
    story = _real_story()  # with the real MobileNetV2 the heatmap points at the animal: the README shows it
    classifier, photo = (story[0], story[1]) if story else (tiny_classifier_dir, _photo())
    db = tmp_path / "log.duckdb"
    with launched(test_settings(classifier, tiny_captioner_dir, db)) as (demo, url):
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        try:
            recognize_upload(page, url, photo)  # off by default: labels and caption, no heatmap
            expect(page.locator("#explanation")).to_be_hidden()
            page.locator("#tasks").get_by_label("Why the top label").check()
            page.locator("#recognize").click()
            shown = page.locator("#explanation img")
            shown.wait_for(timeout=60_000)
            expect(page.locator("#explanation")).to_contain_text("Why")
            expect(page.locator("#verdict-row")).to_be_visible()
            page.screenshot(path=str(screenshot_path("explain.png")), full_page=True)
        finally:
            page.close()
        demo.studio.log.flush()
        explained = _rows(db, "SELECT task FROM outputs WHERE task = 'explain'", [], 1)
        assert len(explained) == 1  # the page's explanation is logged with its prediction


def test_objects_and_own_labels_in_the_browser(browser, tiny_classifier_dir, tiny_captioner_dir, tiny_detector_dir,
                                               tiny_clip_dir, tmp_path):
    db = tmp_path / "log.duckdb"
    config = test_settings(tiny_classifier_dir, tiny_captioner_dir, db, detector=str(tiny_detector_dir),
                           zero_shot_model=str(tiny_clip_dir))
    with launched(config) as (demo, url):
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        try:
            recognize_upload(page, url, _photo())  # the defaults: labels and a caption, no objects
            expect(page.locator("#objects")).to_be_hidden()
            expect(page.locator("#custom-scores")).to_be_hidden()
            tasks_box = page.locator("#tasks")
            tasks_box.get_by_label("Objects").check()
            tasks_box.get_by_label("Your own labels").check()
            page.locator("#custom-labels textarea").fill("a cat, a rocket, a cup of coffee")
            page.locator("#threshold input[type=number]").fill("0.05")  # random weights: low scores
            page.locator("#threshold input[type=number]").press("Enter")
            page.locator("#recognize").click()
            scores = page.locator("#custom-scores")
            expect(scores).to_contain_text("a rocket", timeout=60_000)
            expect(scores).to_contain_text("a cup of coffee")
            expect(page.locator("#objects")).to_contain_text("Objects:", timeout=60_000)
            expect(page.locator("#verdict-row")).to_be_visible()
            expect(page.locator("#rate-caption")).to_be_visible()
            expect(page.locator("#rate-explain")).to_be_hidden()  # no heatmap asked: nothing to rate
            shown = page.locator("#objects").inner_text()
            # feedback on each answer: a thumbs down on the own labels, the second box is not an object
            page.locator("#zero_shot-down").click()
            page.locator("#message").get_by_text("own labels 👎").wait_for()
            which = page.locator("#which-box input")
            which.click()
            page.get_by_role("option", name="2. ", exact=False).first.click()
            label = page.locator("#box-label input")
            label.click()
            page.get_by_role("option", name="(not an object)", exact=True).click()
            page.locator("#mark-box").click()
            page.locator("#message").get_by_text("box 2: not an object").wait_for()
            expect(page.locator("#history")).to_contain_text("box 2: not an object")
            page.screenshot(path=str(screenshot_path("objects.png")), full_page=True)
        finally:
            page.close()
        demo.studio.log.flush()
        rows = _rows(db, "SELECT task, payload FROM outputs WHERE task IN ('detect', 'zero_shot') ORDER BY task", [], 2)
        feedback = _rows(db, "SELECT task, verdict, corrected_label, target FROM feedback ORDER BY created_at", [], 2)
    import json

    payloads = dict(zip(rows.task, (json.loads(p) for p in rows.payload)))
    assert payloads["zero_shot"]["label_set"] == ["a cat", "a rocket", "a cup of coffee"]
    boxes = payloads["detect"]["boxes"]
    assert len(boxes) >= 2 and all(b["score"] >= 0.05 for b in boxes)  # the page's threshold reached the task
    assert f"{len(boxes)} found" in shown
    assert feedback.task.tolist() == ["zero_shot", "detect"] and feedback.verdict.tolist() == ["down", "down"]
    assert feedback.corrected_label.isna().all()  # a box that is not an object has no right label
    assert json.loads(feedback.target.iloc[1]) == {"index": 1, **boxes[1]}  # stored with the box as it was shown


def test_the_api_link_shows_an_example_runs_on_click_and_a_refused_file_marks_no_output(browser, tiny_classifier_dir,
                                                                                       tiny_captioner_dir, tmp_path):
    db = tmp_path / "log.duckdb"
    with launched(test_settings(tiny_classifier_dir, tiny_captioner_dir, db)) as (demo, url):
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        try:
            page.goto(url)
            expect(page.locator("footer").get_by_text("Use via API")).to_be_visible()
            page.locator("#examples").locator("img").first.click()  # no Recognize click: an example runs at once
            page.wait_for_function("el => el.value.length > 0", arg=page.locator("#caption textarea").element_handle(),
                                   timeout=60_000)
            expect(page.locator("#verdict-row")).to_be_visible()
            assert len(_rows(db, "SELECT id FROM predictions WHERE source = 'demo'", [], 1)) == 1
            expect(page.locator("#caption button[aria-label*='opy'], #caption button[title*='opy']").first).to_be_visible()

            not_a_photo = tmp_path / "notes.png"
            not_a_photo.write_text("this is not a photo")
            page.locator("#photo input[type=file]").set_input_files(str(not_a_photo))
            expect(page.locator("#message")).to_contain_text("not a photo", timeout=30_000)
            expect(page.locator("#labels").get_by_text("Error")).to_have_count(0)
            expect(page.locator("#caption").get_by_text("Error")).to_have_count(0)
        finally:
            page.close()
