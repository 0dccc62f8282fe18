"""The batch job on a real local Ray (2 CPUs): the shared photos and hostile files in, one Parquet row each out."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from devtools.demo_server import PHOTOS
from pipelines.batch import cli, worker
from pipelines.log import eventlog
from tests import hostile_images

pytestmark = pytest.mark.skipif(not PHOTOS.is_dir(), reason=f"the shared photos are not at {PHOTOS}")

JPEGS = sorted(PHOTOS.glob("*.JPEG"))


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray for the module (its start-up is paid once), small and without dashboard or usage stats."""
    ray = pytest.importorskip("ray")
    with pytest.MonkeyPatch.context() as mp:
        # set before ray.init: the workers it starts inherit them (no hub, no usage report)
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(num_cpus=2, object_store_memory=200 * 1024 * 1024, include_dashboard=False, log_to_driver=False)
        try:
            yield ray
        finally:
            ray.shutdown()


def _broken(folder: Path) -> dict[str, str]:
    """Broken and hostile files by name, each with (the start of) the refusal it must get."""
    folder.mkdir()
    photo = JPEGS[0].read_bytes()
    files = {
        "truncated.jpg": (photo[: len(photo) // 3], "The image file is damaged"),
        "report.jpg": (b"%PDF-1.7\n" + b"0" * 4000, "This file is a PDF document"),
        "empty.png": (b"", "The file is empty."),
        "notes.png": (b"just some text, not a picture\n" * 20, "This file is plain text"),
        "text-bomb.png": (hostile_images.png_text_bomb(), "The image file is damaged"),
        "tiny.png": (hostile_images.grey_png((4, 4)), "The image is 4"),
        "big.bmp": (hostile_images.bmp_of_bytes(1_500_000), "The image is 1.5 MB; the limit is 1 MB."),
        "icon.ico": (hostile_images.foreign_images()["ICO"], "This file is an icon (ICO) file"),
    }
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    return {str(folder / name): message for name, (_, message) in files.items()}


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A list file naming the shared photo folder, a glob of broken files and a missing file."""
    root = tmp_path_factory.mktemp("collection")
    broken = _broken(root / "broken")
    missing = str(root / "gone.jpg")
    listing = root / "inputs.txt"
    listing.write_text(f"# a folder, a glob and a file\n{PHOTOS}\nbroken/*\n\n{missing}\n")
    return listing, broken | {missing: "The file could not be found."}


def _argv(listing, out, db, classifier, captioner, *more) -> list[str]:
    return [str(listing), "--out", str(out), "--classifier", str(classifier), "--captioner", str(captioner),
            "--db", str(db), "--batch-size", "8", "--no-progress", *more]


def _rows(out: Path) -> list[dict]:
    return pads.dataset(out, format="parquet").to_table().to_pylist()


@pytest.fixture(scope="module")
def first_run(ray_local, collection, tmp_path_factory, tiny_classifier_dir, tiny_captioner_dir):
    """The job once over the collection, logging each recognised image (1 MB upload limit for big.bmp)."""
    listing, _ = collection
    where = tmp_path_factory.mktemp("batch")
    out, db = where / "out", where / "log.duckdb"
    argv = _argv(listing, out, db, tiny_classifier_dir, tiny_captioner_dir, "--log", "rows")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IMAGEREC_MAX_UPLOAD_MB", "1")
        status = cli.main(argv)
    return {"status": status, "out": out, "db": db, "argv": argv, "rows": _rows(out)}


def test_every_photo_has_a_recognised_row(first_run):
    rows = {row["path"]: row for row in first_run["rows"]}
    assert first_run["status"] == 0
    for photo in JPEGS:
        row = rows[str(photo)]
        assert row["status"] == worker.DONE and row["error"] is None, row["error"]
        assert len(row["sha256"]) == 64 and row["width"] > 0 and row["ms"] > 0
        classify, caption = eventlog.json.loads(row["classify"]), eventlog.json.loads(row["caption"])
        assert len(classify["labels"]) == 5 and classify["model"].startswith(str(first_run["argv"][4]))
        assert isinstance(caption["caption"], str) and caption["caption"]


def test_every_broken_file_is_one_refusal(first_run, collection):
    _, broken = collection
    rows = [row for row in first_run["rows"] if row["path"] in broken]
    assert sorted(row["path"] for row in rows) == sorted(broken)  # one row each, none missing, none twice
    for row in rows:
        assert row["status"] == worker.REFUSED and row["classify"] is None and row["caption"] is None
        assert row["error"].startswith(broken[row["path"]]) and row["error"].endswith("."), row
    assert len(first_run["rows"]) == len(JPEGS) + len(broken)  # nothing else (labels.csv is no image)


def test_the_log_has_the_run_and_the_recognised_images(first_run, collection):
    _, broken = collection
    with eventlog.reader(first_run["db"]) as con:
        by_source = dict(con.execute("SELECT source, count(*) FROM predictions GROUP BY source").fetchall())
        tasks = dict(con.execute("SELECT task, count(*) FROM outputs GROUP BY task").fetchall())
        run = con.execute("SELECT images, done, refused, skipped, errors, tasks, batch_size FROM batch_runs").fetchall()
    assert by_source == {"batch": len(JPEGS)}
    assert tasks == {"classify": len(JPEGS), "caption": len(JPEGS)}
    assert run == [(len(JPEGS) + len(broken), len(JPEGS), len(broken), 0, 0, ["classify", "caption"], 8)]


def test_a_rerun_does_nothing_new(first_run, collection, capsys):
    _, broken = collection
    files = sorted(p.name for p in first_run["out"].rglob("*.parquet"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IMAGEREC_MAX_UPLOAD_MB", "1")
        assert cli.main(first_run["argv"]) == 0
    assert sorted(p.name for p in first_run["out"].rglob("*.parquet")) == files
    assert f"{len(JPEGS) + len(broken)} skipped" in capsys.readouterr().out
    with eventlog.reader(first_run["db"]) as con:
        assert con.execute("SELECT count(*) FROM predictions").fetchone()[0] == len(JPEGS)
        last = con.execute("SELECT done, refused, skipped FROM batch_runs ORDER BY created_at DESC").fetchone()
    assert last == (0, 0, len(JPEGS) + len(broken))


def test_a_file_uri_glob_runs_in_batches_of_two(ray_local, tmp_path, tiny_classifier_dir, tiny_captioner_dir):
    """A file:// glob, classify alone, batches of 2 into a fresh OUT: one row per matched photo, nothing else."""
    argv = _argv(f"file://{PHOTOS}/n01[45]*.JPEG", tmp_path / "out", tmp_path / "log.duckdb", tiny_classifier_dir,
                 tiny_captioner_dir, "--tasks", "classify", "--log", "none")
    argv[argv.index("--batch-size") + 1] = "2"
    assert cli.main(argv) == 0
    rows = _rows(tmp_path / "out")
    assert sorted(r["path"] for r in rows) == sorted(str(p) for p in PHOTOS.glob("n01[45]*.JPEG"))
    assert all(r["status"] == worker.DONE and r["classify"] and "caption" not in r for r in rows)
    assert not (tmp_path / "log.duckdb").exists()  # --log none: nothing written


def test_an_input_that_names_nothing_is_one_sentence(tmp_path, tiny_classifier_dir, tiny_captioner_dir):
    argv = _argv(tmp_path / "nothing-*.jpg", tmp_path / "out", tmp_path / "log.duckdb", tiny_classifier_dir,
                 tiny_captioner_dir)
    with pytest.raises(SystemExit, match=r"names no image files\.$"):
        cli.main(argv)
    assert not os.path.exists(tmp_path / "out")


def test_batches_give_the_single_image_answers(tiny_classifier_dir, tiny_captioner_dir, hf_offline):
    """classify and caption over a batch of 4 give what each photo gets on its own (the demo's path)."""
    from PIL import Image

    from pipelines.tasks import Request
    from pipelines.tasks.caption import Caption, Captioner
    from pipelines.tasks.classify import Classifier, Classify

    images = [Image.open(p).convert("RGB") for p in JPEGS[:4]]
    requests = [Request(size=im.size) for im in images]
    for task in (Classify(Classifier(tiny_classifier_dir, device="cpu", precision="fp32")),
                 Caption(Captioner(tiny_captioner_dir, device="cpu", precision="fp32"))):
        alone = [task(im, r, {}) for im, r in zip(images, requests)]
        together = task.batch(images, requests, [{} for _ in images])
        if task.name == "classify":
            assert [[x["label"] for x in a["labels"]] for a in alone] == \
                   [[x["label"] for x in t["labels"]] for t in together]
            assert all(abs(x["score"] - y["score"]) < 1e-5
                       for a, t in zip(alone, together) for x, y in zip(a["labels"], t["labels"]))
        else:
            assert together == alone


def test_the_dashboard_lists_the_runs(first_run, collection):
    from dashboard import queries

    _, broken = collection
    with eventlog.reader(first_run["db"]) as con:
        runs = queries.batch_runs(con)
    first = runs.iloc[-1]  # newest first: the first run is the oldest
    assert (first["images"], first["done"], first["refused"]) == (len(JPEGS) + len(broken), len(JPEGS), len(broken))
    assert first["tasks"] == "classify, caption" and first["input"].endswith("inputs.txt")


def test_a_model_folder_that_is_not_there_is_one_sentence(tmp_path, tiny_captioner_dir):
    argv = _argv(PHOTOS, tmp_path / "out", tmp_path / "log.duckdb", tmp_path / "no-such-model", tiny_captioner_dir)
    with pytest.raises(SystemExit, match="no-such-model"):
        cli.main(argv)
    assert not os.path.exists(tmp_path / "out")


def test_a_worker_killed_mid_job_loses_no_photo_and_doubles_none(ray_local, tmp_path, monkeypatch, capsys,
                                                                   tiny_classifier_dir, tiny_captioner_dir):
    """README's promise: a model actor SIGKILLed in the middle of a batch is restarted by Ray and its batch retried.

    The pool runs a subclass of the real worker that kills its own process once, on the job's second batch, after
    the batch reached it and before it answers (what the OOM killer or a lost node does): the run still ends with
    exactly one row per photo, the summary counts them all, and a rerun does nothing new.
    """
    import signal

    photos = JPEGS[:4]
    listing = tmp_path / "photos.txt"
    listing.write_text("".join(f"{p}\n" for p in photos))
    calls = tmp_path / "calls"
    calls.mkdir()

    class DiesOnce(worker.Recognize):
        """The real worker, but the process that takes the job's second batch dies with SIGKILL before answering."""

        def __call__(self, batch):
            n = 1  # claim the next call number across all actors (O_EXCL: exactly one process wins each number)
            while True:
                try:
                    os.close(os.open(calls / str(n), os.O_CREAT | os.O_EXCL))
                    break
                except FileExistsError:
                    n += 1
            if n == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            return super().__call__(batch)

    monkeypatch.setattr(worker, "Recognize", DiesOnce)  # job.run hands worker.Recognize to map_batches
    argv = _argv(listing, tmp_path / "out", tmp_path / "log.duckdb", tiny_classifier_dir, tiny_captioner_dir,
                 "--tasks", "classify", "--workers", "1", "--log", "runs")
    argv[argv.index("--batch-size") + 1] = "2"  # two batches on one actor: it dies after one answered batch
    assert cli.main(argv) == 0
    assert (calls / "2").exists() and len(list(calls.iterdir())) > len(photos) // 2  # it died; its batch re-ran
    rows = _rows(tmp_path / "out")
    assert sorted(r["path"] for r in rows) == sorted(map(str, photos))  # none lost, none twice
    assert all(r["status"] == worker.DONE and r["classify"] for r in rows)
    assert f"{len(photos)} images: {len(photos)} done, 0 refused, 0 skipped, 0 errors" in capsys.readouterr().out
    with eventlog.reader(tmp_path / "log.duckdb") as con:
        assert con.execute("SELECT images, done, errors FROM batch_runs").fetchall() == [(len(photos), len(photos), 0)]

    files = sorted(p.name for p in (tmp_path / "out").rglob("*.parquet"))
    assert cli.main(argv) == 0
    assert sorted(p.name for p in (tmp_path / "out").rglob("*.parquet")) == files
    assert f"{len(photos)} skipped" in capsys.readouterr().out
