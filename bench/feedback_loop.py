"""The loop end to end on real photos: serve the ImageNet MobileNetV2 on ants and bees, record visitors' verdicts and
corrections, export them, retrain, promote, and compare each version's accuracy from feedback on the same later
photos. `python -m bench.feedback_loop` (prints, saves bench/out/feedback_loop.json)."""

from __future__ import annotations

import json
import shutil
import time

from bench.common import OUT, ROOT
from dashboard import models as models_tab, queries
from pipelines.learn import data as datamod
from pipelines.learn.feedback import export
from pipelines.learn.fit import FitParams
from pipelines.log import eventlog, sql
from pipelines.settings import Settings
from pipelines.studio import Studio
from pipelines.train import train

DATA = ROOT.parent / "shared" / "data" / "hymenoptera" / "train"
BASE = ROOT.parent / "shared" / "models" / "mobilenet_v2_1.0_224"
TRUE = {"ants": "ant", "bees": "bee"}  # what a visitor types when the answer is wrong

# Accuracy from feedback per served version: the share of thumbs up among each prediction's latest verdict.
BY_VERSION = f"""SELECT c.model_version, count(*) AS verdicts, avg(CASE WHEN f.verdict = 'up' THEN 1 ELSE 0 END) AS accuracy
    FROM ({sql.latest_feedback(("verdict",))}) f JOIN outputs c ON c.prediction_id = f.prediction_id AND c.task = 'classify'
    WHERE f.prediction_id IN (SELECT unnest(?::VARCHAR[])) GROUP BY 1"""


def visit(studio: Studio, examples) -> list[str]:
    """Each photo classified, then a thumbs up if right, else a thumbs down with the right label."""
    ids = []
    for e in examples:
        result = studio.predict(e.path, tasks=["classify"])
        truth = TRUE[e.label]
        top1 = result["labels"][0]["label"]
        if top1 == truth:
            studio.feedback(result["id"], verdict="up")
        else:
            studio.feedback(result["id"], verdict="down", corrected_label=truth)
        ids.append(result["id"])
    return ids


def main() -> None:
    work = OUT / "feedback_loop"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    splits = datamod.split(datamod.read_folder(DATA), 0.0, 0.4, seed=1)
    first, later = splits["train"], splits["test"]  # visitors now, and photos that come after the retrain
    config = Settings.defaults(classifier=str(BASE), captioner=str(BASE), db=str(work / "log.duckdb"),
                               keep_images=True, images_dir=str(work / "kept"), flush_interval=0.2)
    studio = Studio.from_settings(config)
    results = {}
    try:
        t = time.perf_counter()
        visit(studio, first)
        v1_later = visit(studio, later)  # the ImageNet model on the later photos, for the same-images comparison
        v1 = studio.recognizer.classifier.version
        studio.log.flush()
        results["visits_s"] = round(time.perf_counter() - t, 1)
        counts = export(config.db, config.images_dir, work / "dataset")
        # retrain on feedback from the first visitors only: drop the later photos' rows from the dataset
        later_sha = {r["sha256"] for r in _rows(config.db, v1_later)}
        for path in (work / "dataset").rglob("*.png"):
            if path.stem in later_sha:
                path.unlink()
        results["export"] = counts
        t = time.perf_counter()
        record = train(str(work / "dataset"), str(BASE), str(work / "v2"), FitParams(), progress=False)
        results["train_s"] = round(time.perf_counter() - t, 1)
        results["v2_held_out_accuracy"] = record["evaluation"]["accuracy"]
        results["promoted"] = studio.promoter.promote(str(work / "v2"))
        v2_later = visit(studio, later)
        studio.log.flush()
        with eventlog.reader(config.db) as con:
            rows = con.execute(BY_VERSION, [v1_later + v2_later]).fetchall()
        results["later_photos"] = len(later)
        results["feedback_accuracy"] = {version: {"verdicts": n, "accuracy": round(acc, 4)} for version, n, acc in rows}
        results["versions"] = {"before": v1, "after": results["promoted"]["serving"]}
        # what the dashboard's Models tab shows for this log (IMAGEREC_DB=bench/out/feedback_loop/log.duckdb)
        with eventlog.reader(config.db) as con:
            totals = models_tab.page(con, queries.Filters())["live_totals"]
        results["models_tab"] = totals[["version", "n_verdict", "up_rate", "n_known", "top1", "top5"]].round(4) \
            .to_dict("records")
    finally:
        studio.close()
    print(json.dumps(results, indent=1))
    (OUT / "feedback_loop.json").write_text(json.dumps(results, indent=1))


def _rows(db, ids):
    with eventlog.reader(db) as con:
        return [{"sha256": s} for (s,) in con.execute(
            "SELECT image_sha256 FROM predictions WHERE id IN (SELECT unnest(?::VARCHAR[]))", [ids]).fetchall()]


if __name__ == "__main__":
    main()
