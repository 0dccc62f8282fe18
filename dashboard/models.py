"""The Models tab's queries: each classify version's offline evaluation, its live accuracy, and the review queue.

Live accuracy counts only verdicts that tell the true label: a thumbs up says the top-1 label was right, a
thumbs down with a corrected label names the right one. A thumbs down without a label says only "not the top-1"
and counts in the thumbs-up rate alone.
"""

from __future__ import annotations

import json

import duckdb
import pandas as pd

from dashboard import queries, stats

REVIEW_LIMIT = 50


def _json(value) -> dict | list | None:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    return json.loads(value) if isinstance(value, str) else value


def versions(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Every version that served classify (oldest first), with its name, base, evaluation and training history.

    `evaluation` and `history` are JSON text (None when the version has none) so the frame stays cacheable.
    """
    df = queries._df(con, """
        SELECT v.version, v.model, v.revision, v.first_seen, v.base, v.evaluation, v.params
        FROM model_versions v
        WHERE v.version IN (SELECT DISTINCT model_version FROM outputs WHERE task = 'classify')
           OR v.evaluation IS NOT NULL
        ORDER BY v.first_seen NULLS LAST, v.version""")
    evaluations = [_json(e) for e in df.pop("evaluation")]
    params = [_json(p) for p in df.pop("params")]
    df["name"] = [stats.version_label(m, r) for m, r in zip(df["model"], df["revision"])]
    for key in ("accuracy", "top5_accuracy", "ece", "count"):  # floats, NaN where absent: the table shows a blank
        df[key] = pd.to_numeric(pd.Series([(e or {}).get(key) for e in evaluations], dtype=object), errors="coerce")
    df["evaluation"] = [json.dumps(e) if e else None for e in evaluations]
    history = [(p or {}).get("history") if isinstance(p, dict) else None for p in params]
    df["history"] = [json.dumps(h) if h else None for h in history]
    return df


def per_class(evaluation: str | None) -> pd.DataFrame:
    """The evaluation's per-class precision, recall, F1 and support, worst F1 first."""
    columns = ["label", "precision", "recall", "f1", "support"]
    report = _json(evaluation) or {}
    rows = [{"label": label, **{k: v.get(k) for k in columns[1:]}}
            for label, v in (report.get("per_class") or {}).items()]
    df = pd.DataFrame(rows, columns=columns)
    return df.sort_values(["f1", "label"], ignore_index=True)


def confusion(evaluation: str | None) -> pd.DataFrame:
    """The evaluation's confusion matrix as a frame: rows true, columns predicted, in its labels' order."""
    report = _json(evaluation) or {}
    labels, matrix = report.get("labels") or [], report.get("confusion_matrix") or []
    return pd.DataFrame(matrix, index=pd.Index(labels, name="true"), columns=pd.Index(labels, name="predicted"))


def history(text: str | None) -> pd.DataFrame:
    """The per-epoch training history (epoch, train_loss, val_loss, ...), empty when it was not recorded."""
    return pd.DataFrame(_json(text) or [])


def _verdicts(f: queries.Filters) -> tuple[str, list]:
    """The filtered requests with a verdict on their answer: version, bucket-able time, top labels and verdict."""
    return queries._relation(f, "p.created_at, p.classify_version, p.top1_label, p.labels, fb.verdict, "
                                "fb.corrected_label", feedback=("verdict",), inner=True)


def live(con: duckdb.DuckDBPyConnection, f: queries.Filters, interval: str = "day") -> pd.DataFrame:
    """Per interval and classify version: the thumbs-up rate over all verdicts, and top-1 / top-5 accuracy over
    the verdicts that tell the true label (n_known)."""
    rel, params = _verdicts(f)
    df = queries._df(con, f"""
        SELECT {queries._bucket(interval)} AS bucket, classify_version AS version_id, {queries.ACCURACY_COUNTS}
        FROM {rel} WHERE verdict IS NOT NULL GROUP BY ALL ORDER BY bucket, version_id""", params)
    return queries.add_accuracy(df)


def review(con: duckdb.DuckDBPyConnection, f: queries.Filters, limit: int = REVIEW_LIMIT) -> pd.DataFrame:
    """Predictions most worth a look: feedback that disagrees with the prediction first, then the least confident.

    `reason` says why each is listed; within a reason the lowest top-1 score comes first.
    """
    rel, params = queries._relation(f, "p.id, p.created_at, p.classify_version, p.top1_label, p.top1_score, "
                                       "fb.verdict, fb.corrected_label", feedback=("verdict",))
    return queries._df(con, f"""
        SELECT CASE WHEN verdict = 'down' THEN 'feedback disagrees' ELSE 'low confidence' END AS reason,
               created_at, classify_version AS version_id, top1_label, top1_score, verdict, corrected_label, id
        FROM {rel} WHERE top1_label IS NOT NULL AND (verdict IS NULL OR verdict = 'down')
        ORDER BY verdict = 'down' DESC NULLS LAST, top1_score NULLS LAST, created_at DESC, id
        LIMIT {int(limit)}""", params)


def page(con: duckdb.DuckDBPyConnection, f: queries.Filters, interval: str = "day") -> dict[str, pd.DataFrame]:
    """The Models tab: versions with their evaluations, live accuracy over time and in total, the review queue."""
    table = versions(con)
    names = dict(zip(table["version"], table["name"]))
    over_time = live(con, f, interval)
    totals = over_time.groupby("version_id", as_index=False, sort=False)[
        ["n_verdict", "n_up", "n_known", "n_top1", "n_top5", "n_corrected"]].sum()
    totals = queries.add_accuracy(totals)
    queue = review(con, f)
    for df in (over_time, totals, queue):
        df.insert(0, "version", [names.get(v) or stats.version_label(v, None) for v in df["version_id"]])
    return {"versions": table, "live": over_time, "live_totals": totals, "review": queue,
            "worst_classes": queries.class_errors(con, f)}
