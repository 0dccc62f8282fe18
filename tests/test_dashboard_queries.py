"""The dashboard's queries and statistics against hand-made logs and an independent pandas reference."""

from __future__ import annotations

import io
import json
from datetime import datetime, timedelta

import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from dashboard import export, logfile, metrics, queries, stats
from pipelines.log import eventlog, rows, seed

END = datetime(2025, 6, 1)
T0 = datetime(2025, 5, 30, 12)
NEW = ("google/vit-base-patch16-224", "3f49326eb077187dfe1c2a2bb15fbd74e6ab91e3")
OLD = ("google/vit-base-patch16-224", "older")
BLIP = ("Salesforce/blip-image-captioning-base", "82a3b3c")
NEW_V, OLD_V, BLIP_V = (f"{m}@{r}" for m, r in (NEW, OLD, BLIP))
SEED_OLDER = "google/vit-base-patch16-224@synthetic-older"


# -- logs ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def seeded(tmp_path_factory) -> str:
    """5,000 deterministic synthetic predictions over 30 days ending 2025-06-01."""
    path = tmp_path_factory.mktemp("seeded") / "log.duckdb"
    seed.seed(str(path), 5000, seed=3, end=END)
    return str(path)


def _prediction(pid: str, minutes: float, label: str, version=NEW, score=0.8, cached=False, source="upload",
                image=None, total=100.0, caption=None, explain_ms=None) -> dict:
    """A request's rows (prediction, classify and caption outputs, versions), plus an explain output if timed."""
    made = rows.from_v2_row({
        "id": pid, "created_at": T0 + timedelta(minutes=minutes), "image_sha256": image or pid * 4,
        "classifier": version[0], "classifier_revision": version[1], "captioner": BLIP[0],
        "captioner_revision": BLIP[1], "labels": [label, "x"], "scores": [score, 0.1],
        "caption": caption or f"a photo of a {label}",
        "intake_ms": 5.0, "classify_ms": 0.0 if cached else 50.0, "caption_ms": 0.0 if cached else 400.0,
        "total_ms": total, "cached": cached, "source": source})
    if explain_ms is not None:
        v = f"{version[0]}@{version[1]}"
        made["outputs"].append({"prediction_id": pid, "task": "explain", "model_version": v, "precision": "fp32",
                                "payload": {"model": v, "label": label, "heatmap": [[0.0, 1.0], [0.5, 0.25]]},
                                "ms": explain_ms})
    return made


def _feedback(fid: str, pid: str, minutes: float, verdict=None, corrected=None, edited=None) -> dict:
    return {"id": fid, "prediction_id": pid, "created_at": T0 + timedelta(minutes=minutes), "verdict": verdict,
            "corrected_label": corrected, "edited_caption": edited}


@pytest.fixture(scope="module")
def handmade(tmp_path_factory) -> str:
    """Six predictions whose feedback histories exercise 'latest verdict' and 'latest edit'."""
    path = tmp_path_factory.mktemp("handmade") / "log.duckdb"
    predictions = [
        _prediction("p1", 0, "tabby", score=0.95, total=100, image="same"),
        _prediction("p2", 10, "beagle", score=0.55, total=200, image="same"),
        _prediction("p3", 20, "tabby", score=0.35, total=300, explain_ms=900.0),
        _prediction("p4", 30, "tabby", version=OLD, score=0.85, total=400, cached=True),
        _prediction("p5", 40, "beagle", version=OLD, score=0.15, total=500, source="example", explain_ms=700.0),
        _prediction("p6", 50, "beagle", score=0.65, total=600, explain_ms=1100.0),
        # the window before: three days earlier
        _prediction("q1", -3 * 24 * 60, "tabby", total=1000),
    ]
    feedback = [
        _feedback("f1", "p1", 1, verdict="down", corrected="tiger cat"),
        _feedback("f2", "p1", 2, verdict="up"),                           # p1: latest is up
        _feedback("f3", "p2", 11, verdict="up"),
        _feedback("f4", "p2", 12, verdict="down", corrected="pug"),       # p2: latest is down -> pug
        _feedback("f5", "p3", 21, edited="a photo of a tabby"),           # p3: edit that changes nothing
        _feedback("f6", "p4", 31, edited="a tabby on a sofa"),
        _feedback("f7", "p4", 32, edited="my tabby on a sofa"),           # p4: latest edit wins
        _feedback("f8", "p6", 51, verdict="down"),                        # p6: down with no label
        _feedback("f9", "q1", -3 * 24 * 60 + 1, verdict="up"),
    ]
    with eventlog.writer(path) as con:
        eventlog.insert_rows(con, "predictions", [p["prediction"] for p in predictions])
        eventlog.insert_rows(con, "model_versions", [v for p in predictions for v in p["versions"]])
        eventlog.insert_rows(con, "outputs", [o for p in predictions for o in p["outputs"]])
        eventlog.insert_rows(con, "feedback", feedback)
    return str(path)


def run(path: str, page, f: queries.Filters = queries.Filters(), interval: str = "day"):
    with eventlog.reader(path) as con:
        return page(con, f, interval)


WINDOW = queries.Filters(start=datetime(2025, 5, 30), end=datetime(2025, 5, 31))


# -- independent reference: the same numbers from the raw tables in pandas ------------------------------

def reference(path: str, f: queries.Filters) -> pd.DataFrame:
    """Predictions matching f with their latest verdict/correction and latest edit, computed in pandas."""
    with eventlog.reader(path) as con:  # the raw tables, read without the wide relation
        p = con.execute("SELECT * FROM predictions").df()
        outputs = con.execute("SELECT prediction_id, task, model_version, payload FROM outputs").df()
        fb = con.execute("SELECT * FROM feedback").df()
    classify = outputs[outputs["task"] == "classify"].set_index("prediction_id")
    top1 = [json.loads(payload)["labels"][0] for payload in classify["payload"]]
    p = p.join(pd.DataFrame({"top1_label": [t["label"] for t in top1], "top1_score": [t["score"] for t in top1]},
                            index=classify.index), on="id")
    # the answer's feedback: verdicts on the labels (no task, or classify, never a box), edits of the caption
    on_labels = fb["task"].isna() | (fb["task"] == "classify")
    on_caption = fb["task"].isna() | (fb["task"] == "caption")
    votes = fb[fb["verdict"].notna() & on_labels & fb["target"].isna()].sort_values("created_at")
    votes = votes.groupby("prediction_id").last()
    edits = fb[fb["edited_caption"].notna() & on_caption].sort_values("created_at").groupby("prediction_id").last()
    p = p.join(votes[["verdict", "corrected_label"]], on="id").join(edits[["edited_caption"]], on="id")
    keep = pd.Series(True, index=p.index)
    if f.start is not None:
        keep &= p["created_at"] >= f.start
    if f.end is not None:
        keep &= p["created_at"] < f.end
    if f.labels:
        keep &= p["top1_label"].isin(f.labels)
    if f.sources:
        keep &= p["source"].isin(f.sources)
    for task, versions in f.versions:
        chosen = outputs[(outputs["task"] == task) & outputs["model_version"].isin(versions)]
        keep &= p["id"].isin(chosen["prediction_id"])
    if f.verdicts:
        v = p["verdict"].where(p["verdict"].notna(), queries.VERDICT_NONE)
        keep &= v.isin(f.verdicts)
    return p[keep]


def test_context_lists_versions_sources_and_labels(handmade):
    with eventlog.reader(handmade) as con:
        ctx = queries.context(con)
    assert ctx.predictions == 7 and ctx.feedback == 9
    assert ctx.versions == (("classify", (NEW_V, OLD_V)), ("caption", (BLIP_V,)), ("explain", (NEW_V, OLD_V)))
    assert ctx.version_label(NEW_V) == "vit-base-patch16-224@3f49326" and ctx.version_label(BLIP_V) == \
        "blip-image-captioning-base@82a3b3c"
    assert ctx.sources == ("upload", "example")  # most common first
    assert ctx.labels[0] in ("tabby", "beagle") and set(ctx.labels) == {"tabby", "beagle"}
    assert ctx.newest == T0 + timedelta(minutes=50)


def test_overview_uses_latest_verdict_and_compares_with_previous_window(handmade):
    f = queries.Filters(start=datetime(2025, 5, 30), end=datetime(2025, 5, 31))
    out = run(handmade, queries.overview, f)
    cur = out["summary"].set_index("period").loc["current"]
    prev = out["summary"].set_index("period").loc["previous"]
    assert (cur["n"], cur["images"], cur["n_verdict"], cur["n_up"], cur["n_edited"]) == (6, 5, 3, 1, 2)
    assert cur["p50_ms"] == pytest.approx(350.0)  # quantile_cont of 100..600
    assert (prev["n"], prev["n_verdict"], prev["n_up"]) == (0, 0, 0)  # q1 is three days back, outside
    wide = queries.Filters(start=datetime(2025, 5, 29), end=datetime(2025, 5, 31))
    prev = run(handmade, queries.overview, wide)["summary"].set_index("period").loc["previous"]
    assert (prev["n"], prev["n_verdict"], prev["n_up"]) == (1, 1, 1)
    assert int(out["trend"]["n"].sum()) == 6 and int(out["trend"]["n_up"].sum()) == 1


def test_overview_cards_show_rates_intervals_and_changes(handmade):
    summary = run(handmade, queries.overview, queries.Filters(start=datetime(2025, 5, 28),
                                                              end=datetime(2025, 5, 31)))["summary"]
    cards = {c.label: c for c in metrics.overview_cards(summary)}
    assert cards["Predictions"].value == "6" and cards["Predictions"].delta == "+500.0%"
    assert cards["Thumbs-up rate"].value == "33.3%"
    low, high = stats.wilson(1, 3)
    assert f"{low:.1%}–{high:.1%}" in cards["Thumbs-up rate"].note
    assert cards["Thumbs-up rate"].delta == "-66.7 pp"  # previous window: 1 of 1
    assert cards["Latency p50"].inverse and cards["Latency p50"].delta == "-650 ms"
    assert cards["Caption-edit rate"].value == "33.3%"


def test_accuracy_counts_per_version(handmade):
    out = run(handmade, queries.accuracy, WINDOW)["by_version"].set_index("version")
    new = out.loc[stats.version_label(*NEW)]
    # p1 up, p2 down -> pug (not among its labels), p6 down without a label: only p1 and p2 tell the true label
    assert (new["n_verdict"], new["n_up"], new["n_known"], new["n_top1"], new["n_top5"], new["n_corrected"]) == \
        (3, 1, 2, 1, 1, 1)
    assert new["up_rate"] == pytest.approx(1 / 3) and new["top1"] == pytest.approx(1 / 2)  # distinct measures
    assert stats.version_label(*OLD) not in out.index  # the old version has edits but no verdicts


def test_classes_pairs_come_from_the_latest_thumbs_down(handmade):
    out = run(handmade, queries.classes, WINDOW)
    assert out["top_labels"].set_index("label")["n"].to_dict() == {"tabby": 3, "beagle": 3}
    # p1's early correction to 'tiger cat' was overridden by a thumbs up; p6 has no label.
    assert out["pairs"].to_dict("records") == [{"predicted": "beagle", "corrected": "pug", "n": 1}]


def test_performance_leaves_cache_hits_out_of_model_stages(handmade):
    out = run(handmade, queries.performance, WINDOW)["over_time"].set_index("version")
    old = out.loc[stats.version_label(*OLD)]
    assert old["n"] == 2 and old["n_cached"] == 1
    assert old["classify_p50"] == pytest.approx(50.0)  # the cached row's 0 ms is left out
    assert old["total_p50"] == pytest.approx(450.0)


def test_performance_shows_every_task_in_the_log(handmade):
    out = run(handmade, queries.performance, WINDOW)["over_time"]
    stages = [c.removesuffix("_p50") for c in out.columns if c.endswith("_p50")]
    assert stages == ["intake", "classify", "caption", "explain", "total"]  # explain from its outputs, no column
    by_version = out.set_index("version")
    assert by_version.loc[stats.version_label(*NEW), "explain_p50"] == pytest.approx(1000.0)  # p3 and p6
    assert by_version.loc[stats.version_label(*OLD), "explain_p95"] == pytest.approx(700.0)  # p5 (p4 had none)


def test_confidence_bins_and_reliability(handmade):
    out = run(handmade, queries.confidence, WINDOW)
    bins = out["bins"]
    assert int(bins["n"].sum()) == 6 and int(bins["n_verdict"].sum()) == 3
    assert bins.loc[bins["bin_low"].round(2) == 0.95, "n_up"].item() == 1
    rel = out["reliability"]
    assert rel["n_verdict"].sum() == 3
    top = rel[rel["bin_low"].round(1) == 0.9].iloc[0]
    assert top["confidence"] == pytest.approx(0.95) and top["up_rate"] == 1.0


def test_captions_use_the_latest_edit(handmade):
    out = run(handmade, queries.captions, WINDOW)
    s = out["summary"].iloc[0]
    assert (s["n"], s["n_edited"], s["n_unchanged"]) == (6, 2, 1)
    examples = out["examples"]
    unchanged, changed = examples[examples["change"] == 0], examples[examples["change"] > 0]
    assert list(unchanged["edited_caption"]) == list(unchanged["caption"]) == ["a photo of a tabby"]
    assert list(changed["edited_caption"]) == ["my tabby on a sofa"]  # p4's first edit was replaced
    assert out["labels"].set_index("label").loc["tabby", "n_edited"] == 2


def test_recent_rows_newest_first_with_feedback(handmade):
    out = run(handmade, queries.recent, WINDOW)
    table = out["rows"]
    assert list(table["id"]) == ["p6", "p5", "p4", "p3", "p2", "p1"]
    row = table.set_index("id")
    assert row.loc["p1", "verdict"] == "up" and pd.isna(row.loc["p1", "corrected_label"])
    assert row.loc["p2", "corrected_label"] == "pug"
    assert row.loc["p4", "edited_caption"] == "my tabby on a sofa"
    assert out["count"]["n"].item() == 6


@pytest.mark.parametrize("f, expected", [
    (queries.Filters(labels=("beagle",)), {"p2", "p5", "p6"}),
    (queries.Filters(versions=(("classify", (OLD_V,)),)), {"p4", "p5"}),
    (queries.Filters(versions=(("classify", (OLD_V, NEW_V)), ("explain", (NEW_V,)))), {"p3", "p6"}),
    (queries.Filters(versions=(("explain", (OLD_V,)), ("caption", (BLIP_V,)))), {"p5"}),
    (queries.Filters(versions=(("caption", ("no-such-version",)),)), set()),
    (queries.Filters(sources=("example",)), {"p5"}),
    (queries.Filters(verdicts=("down",)), {"p2", "p6"}),
    (queries.Filters(verdicts=("none",), labels=("tabby",)), {"p3", "p4"}),
    (queries.Filters(search="BEAGLE"), {"p2", "p5", "p6"}),
    (queries.Filters(start=T0 + timedelta(minutes=15), end=T0 + timedelta(minutes=45)), {"p3", "p4", "p5"}),
])
def test_filters_select_the_right_rows(handmade, f, expected):
    with eventlog.reader(handmade) as con:
        assert set(queries.rows(con, f, 100)["id"]) == expected
        assert queries.count(con, f) == len(expected)


@pytest.mark.parametrize("f", [
    queries.Filters(),
    queries.Filters(start=datetime(2025, 5, 20), end=datetime(2025, 5, 27)),
    queries.Filters(labels=("tabby", "pug"), verdicts=("up", "none")),
    queries.Filters(versions=(("classify", (SEED_OLDER,)),), sources=("synthetic",)),
])
def test_pages_agree_with_pandas_reference(seeded, f):
    ref = reference(seeded, f)
    summary = run(seeded, queries.overview, f)["summary"].set_index("period").loc["current"]
    assert summary["n"] == len(ref)
    assert summary["images"] == ref["image_sha256"].nunique()
    assert summary["n_verdict"] == ref["verdict"].notna().sum()
    assert summary["n_up"] == (ref["verdict"] == "up").sum()
    assert summary["n_edited"] == ref["edited_caption"].notna().sum()
    assert summary["p95_ms"] == pytest.approx(np.quantile(ref["total_ms"], 0.95))

    acc = run(seeded, queries.accuracy, f)["by_version"]
    assert acc["n_verdict"].sum() == ref["verdict"].notna().sum()
    correct = (ref["verdict"] == "up") | (ref["corrected_label"] == ref["top1_label"])
    assert acc["n_top1"].sum() == correct.sum()
    known = (ref["verdict"] == "up") | ref["corrected_label"].notna()
    assert acc["n_known"].sum() == known.sum()

    pairs = run(seeded, queries.classes, f)["pairs"]
    down = ref[(ref["verdict"] == "down") & ref["corrected_label"].notna()]
    assert pairs["n"].sum() == len(down)

    bins = run(seeded, queries.confidence, f)["bins"]
    assert bins["n"].sum() == len(ref) and bins["n_up"].sum() == (ref["verdict"] == "up").sum()

    with eventlog.reader(seeded) as con:
        assert queries.count(con, f) == len(ref)


def test_every_page_survives_filters_that_match_nothing(seeded):
    f = queries.Filters(labels=("no such label",))
    for name, page in queries.PAGES.items():
        out = run(seeded, page, f)
        assert all(isinstance(df, pd.DataFrame) for df in out.values()), name
    cards = metrics.overview_cards(run(seeded, queries.overview, f)["summary"])
    assert cards[0].value == "0" and cards[0].delta is None and cards[3].value == "–"


def test_interval_is_validated_not_interpolated(seeded):
    with pytest.raises(ValueError):
        run(seeded, queries.accuracy, queries.Filters(), "day'); DROP TABLE predictions; --")


def test_export_keeps_every_column_and_caps_rows(seeded):
    f = queries.Filters(labels=("tabby",))
    with eventlog.reader(seeded) as con:
        table = queries.export(con, f, "parquet")
        capped = queries.export(con, queries.Filters(), "csv", limit=100)
        n = queries.count(con, f)
    assert table.num_rows == n and {"labels", "scores", "verdict", "edited_caption"} <= set(table.column_names)
    back = pq.read_table(io.BytesIO(export.to_parquet(table)))
    assert back.num_rows == n and str(back.schema.field("labels").type) == "list<element: string>"
    csv = pd.read_csv(io.BytesIO(export.to_csv(capped)))
    assert len(csv) == 100 and csv["labels"].iloc[0].startswith("[")


# -- statistics ----------------------------------------------------------------------------------------

def test_wilson_matches_known_values():
    low, high = stats.wilson([0, 5, 81], [10, 10, 263])
    # Reference values from the Wilson formula (e.g. statsmodels proportion_confint(method="wilson")).
    assert low[0] == pytest.approx(0.0) and high[0] == pytest.approx(0.2775, abs=1e-4)
    assert (low[1], high[1]) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    assert (low[2], high[2]) == (pytest.approx(0.2553, abs=1e-4), pytest.approx(0.3662, abs=1e-4))
    nan_low, nan_high = stats.wilson(0, 0)
    assert np.isnan(nan_low) and np.isnan(nan_high)


def test_version_labels_shorten_hashes_only():
    assert stats.version_label(*NEW) == "vit-base-patch16-224@3f49326"
    older = stats.version_label("google/vit-base-patch16-224", "synthetic-older")
    assert older == "vit-base-patch16-224@synthetic-older"
    assert stats.version_label(None, None) == "?@?"


def test_previous_window_has_the_same_length():
    f = queries.Filters(start=datetime(2025, 5, 25), end=datetime(2025, 6, 1), labels=("x",))
    prev = f.previous()
    assert (prev.start, prev.end, prev.labels) == (datetime(2025, 5, 18), datetime(2025, 5, 25), ("x",))
    assert queries.Filters().previous() is None


# -- log states ----------------------------------------------------------------------------------------

def state(path) -> logfile.LogState:
    with logfile.Session(path) as session:
        return logfile.check(session)


def test_missing_and_empty_logs_are_blank_not_errors(tmp_path, seeded):
    assert state(tmp_path / "nope.duckdb").kind == "missing"
    (tmp_path / "zero.duckdb").touch()
    assert state(tmp_path / "zero.duckdb").kind == "empty"
    with eventlog.writer(tmp_path / "fresh.duckdb"):
        pass
    fresh = state(tmp_path / "fresh.duckdb")
    assert fresh.kind == "empty" and fresh.blank and "python -m pipelines.seed" in fresh.message
    assert state(seeded).ok


def test_foreign_newer_and_non_duckdb_files_are_named_errors(tmp_path):
    con = duckdb.connect(str(tmp_path / "other.duckdb"))
    con.execute("CREATE TABLE t (a INTEGER)")
    con.close()
    other = state(tmp_path / "other.duckdb")
    assert other.kind == "foreign" and str(tmp_path / "other.duckdb") in other.message and not other.blank
    with eventlog.writer(tmp_path / "newer.duckdb") as con:
        con.execute("INSERT INTO schema_migrations VALUES (?, now(), 'future')", [eventlog.SCHEMA_VERSION + 1])
    newer = state(tmp_path / "newer.duckdb")
    assert newer.kind == "newer" and "Upgrade" in newer.message
    (tmp_path / "notes.duckdb").write_text("not a database at all\n")
    text = state(tmp_path / "notes.duckdb")
    assert text.kind == "unreadable" and "notes.duckdb" in text.message


def test_a_log_older_than_schema_3_asks_for_the_demo_to_migrate_it(tmp_path):
    path = tmp_path / "v1.duckdb"
    con = duckdb.connect(str(path))  # as an imagerec from before any later migration left it
    version, description, statements = eventlog.MIGRATIONS[0]
    con.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMP NOT NULL, "
                "description VARCHAR)")
    for statement in statements:
        con.execute(statement)
    con.execute("INSERT INTO schema_migrations VALUES (?, now(), ?)", [version, description])
    con.execute("INSERT INTO predictions (id, created_at, image_sha256, top1_label, top1_score, total_ms, source) "
                "VALUES ('a', TIMESTAMP '2025-05-30 12:00', 'x', 'tabby', 0.9, 100, 'upload')")
    con.close()
    old = state(path)
    assert old.kind == "older" and "python -m demo" in old.message  # the dashboard reads, never migrates
    with eventlog.writer(path):  # what the demo does when it opens the log
        pass
    assert state(path).ok
    with eventlog.reader(path) as con:
        for name, page in queries.PAGES.items():
            page(con, queries.Filters())
        table = queries.export(con, queries.Filters(), "csv")
    assert table.num_rows == 1 and table.column("top1_label").to_pylist() == ["tabby"]


def test_signature_changes_when_the_log_is_written(tmp_path):
    path = tmp_path / "log.duckdb"
    before = logfile.signature(path)
    seed.seed(str(path), 10, end=END)
    middle = logfile.signature(path)
    seed.seed(str(path), 10, seed=1, end=END)
    assert before != middle != logfile.signature(path)


def test_session_opens_one_connection_lazily(seeded):
    with logfile.Session(seeded) as session:
        assert session.opened == 0
        queries.context(session.con)
        queries.overview(session.con, queries.Filters())
        assert session.opened == 1
    assert session._con is None
