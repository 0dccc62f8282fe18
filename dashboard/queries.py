"""Every query the dashboard runs: parameterised, aggregated in DuckDB, returning small DataFrames.

The queries read requests through pipelines.log.sql's wide relation (a request with its classify and caption
outputs in columns) and its one definition of "latest feedback"; they do not know how the log stores them.

Each page function takes an open read-only connection and a Filters value and returns a dict of
DataFrames; the app opens one connection per page render and runs one page function on it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Callable

import duckdb
import numpy as np
import pandas as pd

from dashboard import stats
from pipelines.log import sql

INTERVALS = ("hour", "day", "week")
VERDICT_NONE = "none"
VERDICT_CHOICES = ("up", "down", VERDICT_NONE)
TOP_LABELS = 20
TOP_PAIRS = 300
TOP_EDITED = 15
EDIT_EXAMPLES = 200
RECENT_LIMIT = 500
EXPORT_LIMIT = 100_000
CONFIDENCE_BINS = 20
# Feedback is always logged after its prediction, so a window's feedback starts at the window's
# start; the slack covers a clock step between the two events.
FEEDBACK_SLACK = timedelta(hours=1)

TASK_ORDER = ("classify", "caption")  # these first, then any other task found in the log, by name
TaskVersions = tuple[str, tuple["str | None", ...]]  # (task, model versions "id@revision")


@dataclass(frozen=True)
class Filters:
    """The sidebar's choices; empty tuples mean 'all'. Times are naive UTC, end exclusive."""

    start: datetime | None = None
    end: datetime | None = None
    versions: tuple[TaskVersions, ...] = ()  # per task: requests whose output for it came from one of these
    labels: tuple[str, ...] = ()
    verdicts: tuple[str, ...] = ()  # 'up', 'down' and/or 'none' (no verdict yet)
    sources: tuple[str | None, ...] = ()
    search: str = ""  # caption contains, case-insensitive

    def previous(self) -> Filters | None:
        """The same filters over the same-length window just before this one."""
        if self.start is None or self.end is None:
            return None
        return replace(self, start=self.start - (self.end - self.start), end=self.start)


@dataclass(frozen=True)
class Context:
    """What the sidebar needs: the log's extent and the values each filter can take."""

    oldest: datetime | None
    newest: datetime | None
    predictions: int
    feedback: int
    versions: tuple[TaskVersions, ...] = ()  # each task in the log with its versions, oldest first
    sources: tuple[str | None, ...] = ()
    labels: tuple[str, ...] = ()
    version_names: tuple[tuple[str, str], ...] = ()  # version -> how it reads on screen

    def version_label(self, version: str | None) -> str:
        return dict(self.version_names).get(version) or stats.version_label(version, None)


def pick_interval(start: datetime | None, end: datetime | None) -> str:
    """A bucket size that gives a readable number of points for a window."""
    if start is None or end is None:
        return "day"
    span = end - start
    if span <= timedelta(days=3):
        return "hour"
    return "day" if span <= timedelta(days=120) else "week"


# -- building blocks -------------------------------------------------------------------------------

def _in(column: str, values: tuple, clauses: list[str], params: list) -> None:
    present = [v for v in values if v is not None]
    parts = []
    if present:
        parts.append(f"{column} IN ({', '.join('?' for _ in present)})")
        params.extend(present)
    if len(present) < len(values):
        parts.append(f"{column} IS NULL")
    clauses.append("(" + " OR ".join(parts) + ")")


def _where(f: Filters) -> tuple[str, list]:
    """The WHERE clause over predictions `p` (and `fb` when filtering by verdict)."""
    clauses: list[str] = []
    params: list = []
    if f.start is not None:
        clauses.append("p.created_at >= ?")
        params.append(f.start)
    if f.end is not None:
        clauses.append("p.created_at < ?")
        params.append(f.end)
    for task, versions in f.versions:
        if versions:
            chosen: list[str] = []
            chosen_params: list = [task]
            _in("o.model_version", tuple(versions), chosen, chosen_params)
            clauses.append(f"p.id IN (SELECT o.prediction_id FROM outputs o WHERE o.task = ? AND {chosen[0]})")
            params.extend(chosen_params)
    if f.labels:
        _in("p.top1_label", f.labels, clauses, params)
    if f.sources:
        _in("p.source", f.sources, clauses, params)
    if f.search.strip():
        clauses.append("contains(lower(p.caption), ?)")
        params.append(f.search.strip().lower())
    if f.verdicts:
        _in("fb.verdict", tuple(None if v == VERDICT_NONE else v for v in f.verdicts), clauses, params)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def _latest_feedback(f: Filters, need: set[str], ids_from: str | None = None) -> tuple[str, list]:
    """Latest verdict (with its corrected label) and latest edited caption per prediction (sql.latest_feedback),
    read only for the predictions in `ids_from`, else only from the window's start on."""
    if need & {"verdict", "corrected_label"}:
        need = need | {"verdict", "corrected_label"}  # a verdict comes with its corrected label
    where, params = "", []
    if ids_from:
        where = f"prediction_id IN (SELECT id FROM {ids_from})"
    elif f.start is not None:
        where = "created_at >= ?"
        params.append(f.start - FEEDBACK_SLACK)
    return sql.latest_feedback(need, where), params


def _relation(f: Filters, columns: str, feedback: tuple[str, ...] = (), inner: bool = False) -> tuple[str, list]:
    """A subquery of the filtered requests `p` (the wide relation, with only the joins the columns and filters
    need), with their latest feedback `fb` joined if needed."""
    need = set(feedback) | ({"verdict"} if f.verdicts else set())
    where, params = _where(f)
    names = f"id created_at {columns} {where}"  # id for the feedback join, created_at for the window
    if not need:
        return f"(SELECT {columns} FROM {sql.wide(names)} p{where})", params
    fb_sql, fb_params = _latest_feedback(f, need)
    narrow, narrow_params = "", []
    if inner:  # only requests with such feedback: their outputs alone are read (a semi-join, before any parse)
        kinds = []
        if need & {"verdict", "corrected_label"}:
            kinds.append("verdict IS NOT NULL")
        if need & {"edited_caption", "edited"}:
            kinds.append("edited_caption IS NOT NULL")
        since = ""
        if f.start is not None:
            since = " AND created_at >= ?"
            narrow_params.append(f.start - FEEDBACK_SLACK)
        narrow = f"p.id IN (SELECT prediction_id FROM feedback WHERE ({' OR '.join(kinds)}){since})"
        for clause, value in (("p.created_at >= ?", f.start), ("p.created_at < ?", f.end)):
            if value is not None:  # the window too, so that only its requests are read
                narrow += f" AND {clause}"
                narrow_params.append(value)
    source = sql.wide(names, where=narrow)
    join = "JOIN" if inner else "LEFT JOIN"
    return (f"(SELECT {columns} FROM {source} p {join} ({fb_sql}) fb ON fb.prediction_id = p.id{where})",
            narrow_params + fb_params + params)


# fetchall() rather than fetchone(): DuckDB 2 keeps a result that was not read to the end open, and then
# refuses the relational API (con.sql) on that connection.
def _df(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> pd.DataFrame:
    return con.execute(sql, params or []).df()


EXTENT = "min(created_at) AS first_at, max(created_at) AS last_at"  # to tell which periods are covered in part


def _mark_partial(df: pd.DataFrame, interval: str, f: Filters) -> pd.DataFrame:
    """Replace the first_at/last_at columns by `partial`: the bucket reaches outside both the window and the
    logged requests in it (the first day of a deployment, the period still running)."""
    first, last = df.pop("first_at").min(), df.pop("last_at").max()
    start = first if f.start is None or pd.isna(first) else max(pd.Timestamp(f.start), first)
    end = last if f.end is None or pd.isna(last) else min(pd.Timestamp(f.end), last)
    df["partial"] = stats.mark_partial(df["bucket"], interval, None if pd.isna(start) else start,
                                       None if pd.isna(end) else end)
    return df


def _bucket(interval: str) -> str:
    if interval not in INTERVALS:
        raise ValueError(f"interval must be one of {INTERVALS}, not {interval!r}")
    return f"date_trunc('{interval}', created_at)"


# -- sidebar ---------------------------------------------------------------------------------------

def context(con: duckdb.DuckDBPyConnection) -> Context:
    """The log's extent, each task's versions (oldest first), and the sources and labels, most common first."""
    oldest, newest, n = con.execute("SELECT min(created_at), max(created_at), count(*) FROM predictions").fetchall()[0]
    n_feedback = con.execute("SELECT count(*) FROM feedback").fetchall()[0][0]
    found = con.execute("""
        SELECT o.task, o.model_version, any_value(v.model), any_value(v.revision), any_value(v.first_seen) AS first_seen
        FROM (SELECT DISTINCT task, model_version FROM outputs) o
        LEFT JOIN model_versions v ON v.version = o.model_version
        GROUP BY ALL ORDER BY first_seen NULLS LAST, o.model_version""").fetchall()
    tasks = sorted({task for task, *_ in found}, key=lambda t: (t not in TASK_ORDER, TASK_ORDER.index(t)
                                                                if t in TASK_ORDER else 0, t))
    versions = tuple((task, tuple(v for t, v, *_ in found if t == task)) for task in tasks)
    names = tuple(dict.fromkeys((v, stats.version_label(model, revision) if model else stats.version_label(v, None))
                                for _, v, model, revision, _ in found))
    sources = con.execute("SELECT source, count(*) AS n FROM predictions GROUP BY ALL ORDER BY n DESC").fetchall()
    # Every output belongs to a logged request, so the labels need not go through the requests at all.
    labels = con.execute("""
        SELECT label, count(*) AS n FROM outputs WHERE task = 'classify' AND label IS NOT NULL
        GROUP BY ALL ORDER BY n DESC, label LIMIT 2000""").fetchall()
    return Context(oldest, newest, n, n_feedback, versions, tuple(s for s, _ in sources),
                   tuple(label for label, _ in labels), names)


# -- pages -----------------------------------------------------------------------------------------

def overview(con: duckdb.DuckDBPyConnection, f: Filters, interval: str = "day") -> dict[str, pd.DataFrame]:
    """Headline numbers for the window and the window before it, and a per-interval trend."""
    prev = f.previous()
    wide = replace(f, start=prev.start) if prev else f
    period = "CASE WHEN created_at >= ? THEN 'current' ELSE 'previous' END" if f.start is not None else "'current'"
    period_params = [f.start] if f.start is not None else []
    # Counts that need no feedback come from predictions alone; the join with feedback is the
    # expensive part, so only predictions that have feedback go through it (an inner join).
    # A 64-bit hash of the sha256 counts distinct images exactly in practice, for less than the string.
    rel, params = _relation(wide, "p.created_at, p.image_sha256, p.total_ms")
    summary = _df(con, f"""
        SELECT {period} AS period, count(*) AS n, count(DISTINCT hash(image_sha256)) AS images,
               quantile_cont(total_ms, 0.5) AS p50_ms, quantile_cont(total_ms, 0.95) AS p95_ms
        FROM {rel} GROUP BY ALL""", period_params + params)
    rel, params = _relation(wide, "p.created_at, fb.verdict, fb.edited",
                            feedback=("verdict", "edited"), inner=True)
    feedback = _df(con, f"""
        SELECT {period} AS period, {_bucket(interval)} AS bucket, count(verdict) AS n_verdict,
               count(*) FILTER (WHERE verdict = 'up') AS n_up, count(*) FILTER (WHERE edited) AS n_edited
        FROM {rel} GROUP BY ALL""", period_params + params)
    rel, params = _relation(f, "p.created_at")
    trend = _df(con, f"SELECT {_bucket(interval)} AS bucket, count(*) AS n, {EXTENT} FROM {rel} GROUP BY ALL", params)
    trend = _mark_partial(trend, interval, f)

    counts = ["n", "images", "n_verdict", "n_up", "n_edited"]
    by_period = feedback.groupby("period")[["n_verdict", "n_up", "n_edited"]].sum()
    summary = (summary.set_index("period").join(by_period).reindex(["current", "previous"])
               .rename_axis("period").reset_index())
    summary[counts] = summary[counts].fillna(0).astype("int64")
    current = feedback[feedback["period"] == "current"].groupby("bucket")[["n_verdict", "n_up"]].sum()
    partial = trend.set_index("bucket")["partial"]
    trend = (trend.drop(columns="partial").set_index("bucket").join(current).fillna(0).astype("int64")
             .assign(partial=partial).sort_index().reset_index())
    return {"summary": summary, "trend": stats.add_rate(trend, "up_rate", "n_up", "n_verdict")}


# A verdict's true label where it tells one: the top-1 label on a thumbs up, the correction on a thumbs down (a
# thumbs down without a label says only "not the top-1").
TRUE_LABEL = "CASE WHEN verdict = 'up' THEN top1_label ELSE corrected_label END"
TOP_K = 5  # the labels the demo shows under a photo: top-5 accuracy is the true label among them
WORST_CLASSES = 15


def add_accuracy(df: pd.DataFrame) -> pd.DataFrame:
    """The three live measures with Wilson bands: thumbs-up rate over all verdicts, top-1 and top-5 accuracy over
    the verdicts that tell the true label (n_known)."""
    df = stats.add_rate(df, "up_rate", "n_up", "n_verdict")
    df = stats.add_rate(df, "top1", "n_top1", "n_known")
    return stats.add_rate(df, "top5", "n_top5", "n_known")


ACCURACY_COUNTS = f"""count(verdict) AS n_verdict, count(*) FILTER (WHERE verdict = 'up') AS n_up,
               count({TRUE_LABEL}) AS n_known, count(*) FILTER (WHERE {TRUE_LABEL} = top1_label) AS n_top1,
               count(*) FILTER (WHERE list_contains(labels[1:{TOP_K}], {TRUE_LABEL})) AS n_top5,
               count(corrected_label) AS n_corrected"""


def accuracy(con: duckdb.DuckDBPyConnection, f: Filters, interval: str = "day") -> dict[str, pd.DataFrame]:
    """Thumbs-up rate, top-1 and top-5 accuracy per interval and model version with their counts, and the error
    rate per true label."""
    rel, params = _relation(f, "p.created_at, p.classifier, p.classifier_revision, p.top1_label, p.labels, "
                               "fb.verdict, fb.corrected_label", feedback=("verdict",), inner=True)
    df = _df(con, f"""
        SELECT {_bucket(interval)} AS bucket, classifier, classifier_revision, {ACCURACY_COUNTS}, {EXTENT}
        FROM {rel} GROUP BY ALL ORDER BY bucket, classifier, classifier_revision""", params)
    df = add_accuracy(stats.add_version(_mark_partial(df, interval, f)))
    counts = ["n_verdict", "n_up", "n_known", "n_top1", "n_top5", "n_corrected"]
    totals = add_accuracy(df.groupby("version", as_index=False, sort=False)[counts].sum())
    return {"over_time": df, "by_version": totals, "classes": class_errors(con, f)}


def class_errors(con: duckdb.DuckDBPyConnection, f: Filters, top: int = WORST_CLASSES) -> pd.DataFrame:
    """Per true label (from the verdicts that tell it): how often the top-1 label was wrong, worst first."""
    rel, params = _relation(f, "p.created_at, p.top1_label, fb.verdict, fb.corrected_label", feedback=("verdict",),
                            inner=True)
    df = _df(con, f"""
        SELECT {TRUE_LABEL} AS label, count(*) AS n_known, count(*) FILTER (WHERE {TRUE_LABEL} <> top1_label) AS n_wrong
        FROM {rel} WHERE {TRUE_LABEL} IS NOT NULL GROUP BY ALL""", params)
    df = stats.add_rate(df, "error_rate", "n_wrong", "n_known")
    return (df.sort_values(["error_rate", "n_known", "label"], ascending=[False, False, True]).head(top)
            .reset_index(drop=True))


def classes(con: duckdb.DuckDBPyConnection, f: Filters, interval: str = "day") -> dict[str, pd.DataFrame]:
    """The most predicted labels, and predicted vs corrected labels on thumbs down."""
    rel, params = _relation(f, "p.top1_label")
    top = _df(con, f"""
        SELECT top1_label AS label, count(*) AS n FROM {rel}
        GROUP BY ALL ORDER BY n DESC, label LIMIT {TOP_LABELS}""", params)
    rel, params = _relation(f, "p.top1_label, fb.verdict, fb.corrected_label", feedback=("verdict",), inner=True)
    pairs = _df(con, f"""
        SELECT top1_label AS predicted, corrected_label AS corrected, count(*) AS n FROM {rel}
        WHERE verdict = 'down' AND corrected_label IS NOT NULL
        GROUP BY ALL ORDER BY n DESC, predicted, corrected LIMIT {TOP_PAIRS}""", params)
    return {"top_labels": top, "pairs": pairs}


STAGES = ("intake", "classify", "caption", "total")  # and after caption, any other task found in the log


def performance(con: duckdb.DuckDBPyConnection, f: Filters, interval: str = "day") -> dict[str, pd.DataFrame]:
    """Latency p50/p95 per stage (intake, each task's output, total), interval and classify version, and
    requests per interval."""
    rel, params = _relation(f, f"p.id, p.created_at, {_bucket(interval)} AS bucket, p.classify_version AS k, "
                               "p.intake_ms, "
                               "p.total_ms, coalesce(p.cached, false) AS cached")
    df = _df(con, f"""
        SELECT bucket, k, count(*) AS n, count(*) FILTER (WHERE cached) AS n_cached, {EXTENT},
               quantile_cont(intake_ms, [0.5, 0.95]) AS intake, quantile_cont(total_ms, [0.5, 0.95]) AS total
        FROM {rel} GROUP BY ALL""", params)
    df = _mark_partial(df, interval, f)
    # Every task's time from its output, whatever the task. Cache hits skip the models, so they would drag the
    # tasks' percentiles towards zero.
    tasks = _df(con, f"""
        SELECT r.bucket, r.k, o.task, quantile_cont(o.ms, [0.5, 0.95]) AS q
        FROM {rel} r JOIN outputs o ON o.prediction_id = r.id
        WHERE NOT r.cached GROUP BY ALL""", params)
    versions = con.execute("SELECT version, model, revision FROM model_versions").fetchall()
    keys = ["bucket", "k"]
    names = sorted(set(tasks["task"]) | set(STAGES[1:3]),
                   key=lambda t: (t not in STAGES, STAGES.index(t) if t in STAGES else 0, t))
    for task in names:
        part = tasks[tasks["task"] == task][keys + ["q"]].rename(columns={"q": task})
        df = df.merge(part, on=keys, how="left")
    by_k = {version: (model, revision) for version, model, revision in versions}
    df.insert(1, "classifier", [by_k.get(k, (k, None))[0] if isinstance(k, str) else None for k in df["k"]])
    df.insert(2, "classifier_revision", [by_k.get(k, (k, None))[1] if isinstance(k, str) else None for k in df["k"]])
    df = df.drop(columns="k").sort_values(["bucket", "classifier", "classifier_revision"], na_position="last",
                                          ignore_index=True)
    df = stats.add_version(df)
    for stage in ["intake", *names, "total"]:
        values = [v if isinstance(v, (list, tuple, np.ndarray)) and len(v) == 2 else (np.nan, np.nan)
                  for v in df.pop(stage)]  # NULL where a stage has no rows (all cache hits, or no timings)
        df[f"{stage}_p50"] = [float(v[0]) if v[0] is not None else np.nan for v in values]
        df[f"{stage}_p95"] = [float(v[1]) if v[1] is not None else np.nan for v in values]
    return {"over_time": df}


def confidence(con: duckdb.DuckDBPyConnection, f: Filters, interval: str = "day") -> dict[str, pd.DataFrame]:
    """Top-1 scores in fine bins with their verdict counts, and the reliability table built from them."""
    rel, params = _relation(f, "p.top1_score, fb.verdict", feedback=("verdict",))
    bins = _df(con, f"""
        SELECT least(floor(top1_score * {CONFIDENCE_BINS}), {CONFIDENCE_BINS - 1}) / {CONFIDENCE_BINS} AS bin_low,
               count(*) AS n, count(verdict) AS n_verdict, count(*) FILTER (WHERE verdict = 'up') AS n_up,
               count(*) FILTER (WHERE verdict = 'down') AS n_down,
               coalesce(sum(top1_score) FILTER (WHERE verdict IS NOT NULL), 0) AS score_sum_verdict
        FROM {rel} WHERE top1_score IS NOT NULL GROUP BY ALL ORDER BY bin_low""", params)
    bins["bin_high"] = bins["bin_low"] + 1.0 / CONFIDENCE_BINS
    return {"bins": bins, "reliability": stats.reliability(bins)}


def captions(con: duckdb.DuckDBPyConnection, f: Filters, interval: str = "day") -> dict[str, pd.DataFrame]:
    """Edited captions against the originals: how much they change, and for which labels."""
    rel, params = _relation(f, "p.top1_label")
    totals = _df(con, f"SELECT top1_label AS label, count(*) AS n FROM {rel} GROUP BY ALL", params)
    rel, params = _relation(f, "p.created_at, p.id, p.top1_label, p.caption, fb.edited_caption",
                            feedback=("edited_caption",), inner=True)
    # Share of characters changed: the edit distance over the longer of the two captions.
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE page_edits AS
        SELECT created_at, id, top1_label AS label, caption, edited_caption,
               CASE WHEN caption = edited_caption THEN 0.0  -- levenshtein is the page's dearest step
                    ELSE levenshtein(coalesce(caption, ''), edited_caption)
                         / greatest(length(coalesce(caption, '')), length(edited_caption), 1) END AS change
        FROM {rel} WHERE edited_caption IS NOT NULL""", params)
    summary = _df(con, """
        SELECT count(*) AS n_edited, avg(change) AS mean_change, median(change) AS median_change,
               count(*) FILTER (WHERE change = 0) AS n_unchanged FROM page_edits""")
    summary.insert(0, "n", int(totals["n"].sum()))
    change_hist = _df(con, """
        SELECT least(floor(change * 10), 9) / 10 AS bin_low, count(*) AS n
        FROM page_edits GROUP BY ALL ORDER BY bin_low""")
    edited = _df(con, """
        SELECT label, count(*) AS n_edited, avg(change) AS mean_change FROM page_edits GROUP BY ALL""")
    labels = edited.merge(totals, on="label", how="left")
    labels = stats.add_rate(labels, "edit_rate", "n_edited", "n")
    labels = labels.sort_values(["n_edited", "label"], ascending=[False, True]).head(TOP_EDITED).reset_index(drop=True)
    examples = _df(con, f"""
        SELECT created_at, label, caption, edited_caption, change FROM page_edits
        ORDER BY created_at DESC, id LIMIT {EDIT_EXAMPLES}""")
    con.execute("DROP TABLE page_edits")
    return {"summary": summary, "change_hist": change_hist, "labels": labels, "examples": examples}


TABLE_COLUMNS = ("p.created_at, p.id, p.top1_label, p.top1_score, p.caption, p.classifier, p.classifier_revision, "
                 "p.source, p.total_ms")
TABLE_ORDER = ["created_at", "top1_label", "top1_score", "verdict", "corrected_label", "caption", "edited_caption",
               "version", "total_ms", "source", "id"]
EXPORT_COLUMNS = ("p.id, p.created_at, p.image_sha256, p.width, p.height, p.classifier, p.classifier_revision, "
                  "p.captioner, p.captioner_revision, p.labels, p.scores, p.top1_label, p.top1_score, p.caption, "
                  "p.prompt, p.intake_ms, p.classify_ms, p.caption_ms, p.total_ms, p.cached, p.source, p.session_id")
# CSV has no lists; JSON arrays keep labels that contain commas ("tabby, tabby cat") readable.
EXPORT_COLUMNS_CSV = EXPORT_COLUMNS.replace("p.labels, p.scores",
                                            "to_json(p.labels) AS labels, to_json(p.scores) AS scores")


def _rows_sql(f: Filters, limit: int, columns: str) -> tuple[str, list]:
    # The newest ids first (reading only what the filters need), then their columns: a payload is parsed for
    # `limit` requests, not for every request in the window.
    rel, params = _relation(f, "p.id, p.created_at")
    fb_sql, _ = _latest_feedback(f, {"verdict", "corrected_label", "edited_caption"}, ids_from="newest")
    source = sql.wide(columns, where="p.id IN (SELECT id FROM newest)")
    return f"""
        WITH newest AS MATERIALIZED (SELECT * FROM {rel} r ORDER BY created_at DESC, id LIMIT {int(limit)})
        SELECT p.*, fb.verdict, fb.corrected_label, fb.edited_caption
        FROM (SELECT {columns} FROM {source} p) p LEFT JOIN ({fb_sql}) fb ON fb.prediction_id = p.id
        ORDER BY p.created_at DESC, p.id""", params


def rows(con: duckdb.DuckDBPyConnection, f: Filters, limit: int, columns: str = TABLE_COLUMNS) -> pd.DataFrame:
    """The newest `limit` filtered predictions with their latest verdict, correction and edited caption."""
    return _df(con, *_rows_sql(f, limit, columns))


def count(con: duckdb.DuckDBPyConnection, f: Filters) -> int:
    """How many predictions match the filters."""
    rel, params = _relation(f, "1 AS one")
    return con.execute(f"SELECT count(*) FROM {rel}", params).fetchall()[0][0]


def recent(con: duckdb.DuckDBPyConnection, f: Filters, interval: str = "day") -> dict[str, pd.DataFrame]:
    """The newest filtered predictions for the table, how many match in all, and the newest batch runs."""
    table = stats.add_version(rows(con, f, RECENT_LIMIT))[TABLE_ORDER]
    return {"rows": table, "count": pd.DataFrame({"n": [count(con, f)]}), "batch_runs": batch_runs(con)}


BATCH_RUN_LIMIT = 20


def batch_runs(con: duckdb.DuckDBPyConnection, limit: int = BATCH_RUN_LIMIT) -> pd.DataFrame:
    """The newest batch jobs (python -m pipelines.batch), not filtered: a run is no prediction; empty in a log
    from before they were recorded."""
    known = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'batch_runs'").fetchone()[0]
    if not known:
        return pd.DataFrame(columns=["created_at", "input", "tasks", "images", "done", "refused", "skipped",
                                     "errors", "images_per_s"])
    return _df(con, "SELECT created_at, input, array_to_string(tasks, ', ') AS tasks, images, done, refused, "
                    "skipped, errors, images_per_s FROM batch_runs ORDER BY created_at DESC LIMIT ?", [limit])


def export(con: duckdb.DuckDBPyConnection, f: Filters, fmt: str = "parquet", limit: int = EXPORT_LIMIT):
    """Every filtered prediction (newest first, at most `limit`) with all its columns, as an Arrow table."""
    columns = EXPORT_COLUMNS_CSV if fmt == "csv" else EXPORT_COLUMNS
    # Arrow all the way to the file: pandas would turn each list into a Python object.
    sql, params = _rows_sql(f, limit, columns)
    return con.sql(sql, params=params).to_arrow_table()


# -- detect and zero_shot ------------------------------------------------------------------------------

TOP_CLASSES = 10  # object classes drawn over time; the rest are summed as "other"
TOP_CUSTOM_LABELS = 20
TOP_LABEL_SETS = 10
SCORE_BINS = 20
OTHER = "other"
NOT_AN_OBJECT = "(not an object)"  # a box marked wrong without a corrected label


def _score_bins(column: str) -> str:
    return f"least(floor({column} * {SCORE_BINS}), {SCORE_BINS - 1}) / {SCORE_BINS}"


def objects(con: duckdb.DuckDBPyConnection, f: Filters, interval: str = "day") -> dict[str, pd.DataFrame]:
    """What the detect and zero_shot tasks logged for the filtered requests.

    detect: objects found per class and interval (the top TOP_CLASSES classes, the rest as "other"), boxes per
    photo (a histogram, zero included) and the boxes' scores in bins. zero_shot: the custom labels asked most
    (counted once per request that asked them, with how often each came out on top), the top scores in bins and
    the most common label sets. Feedback: each task's outputs with a verdict and the share right (task_verdicts),
    and the boxes marked wrong by their label and what they should be (wrong_boxes). Each frame is empty when the
    window holds none.
    """
    rel, params = _relation(f, f"p.id, {_bucket(interval)} AS bucket")
    con.execute(f"CREATE OR REPLACE TEMP TABLE page_req AS SELECT * FROM {rel}", params)
    con.execute(f"""CREATE OR REPLACE TEMP TABLE page_det AS
        SELECT r.bucket, d.labels, d.scores FROM page_req r JOIN ({sql.detect_outputs('page_req')}) d
        ON d.prediction_id = r.id""")
    con.execute(f"""CREATE OR REPLACE TEMP TABLE page_zs AS
        SELECT r.bucket, z.top_label, z.top_score, z.label_set FROM page_req r
        JOIN ({sql.zero_shot_outputs('page_req')}) z ON z.prediction_id = r.id""")
    summary = _df(con, """
        SELECT (SELECT count(*) FROM page_det) AS n_detect, (SELECT coalesce(sum(len(labels)), 0)::BIGINT FROM page_det)
               AS n_boxes, (SELECT count(*) FROM page_zs) AS n_zero_shot""")
    classes = _df(con, f"""
        WITH boxes AS (SELECT bucket, unnest(labels) AS label FROM page_det),
        top AS (SELECT label FROM boxes GROUP BY ALL ORDER BY count(*) DESC, label LIMIT {TOP_CLASSES})
        SELECT bucket, CASE WHEN label IN (SELECT label FROM top) THEN label ELSE '{OTHER}' END AS label,
               count(*) AS n
        FROM boxes GROUP BY ALL ORDER BY bucket, n DESC, label""")
    per_photo = _df(con, """
        SELECT len(labels) AS n_boxes, count(*) AS n_photos FROM page_det GROUP BY ALL ORDER BY n_boxes""")
    box_scores = _df(con, f"""
        SELECT {_score_bins('score')} AS bin_low, count(*) AS n
        FROM (SELECT unnest(scores) AS score FROM page_det) WHERE score IS NOT NULL GROUP BY ALL ORDER BY bin_low""")
    custom = _df(con, f"""
        SELECT label, count(*) AS n_requests, count(*) FILTER (WHERE label = top_label) AS n_top
        FROM (SELECT DISTINCT rowid AS k, unnest(label_set) AS label, top_label FROM page_zs)
        GROUP BY ALL ORDER BY n_requests DESC, label LIMIT {TOP_CUSTOM_LABELS}""")
    top_scores = _df(con, f"""
        SELECT {_score_bins('top_score')} AS bin_low, count(*) AS n FROM page_zs WHERE top_score IS NOT NULL
        GROUP BY ALL ORDER BY bin_low""")
    label_sets = _df(con, f"""
        SELECT label_set, count(*) AS n_requests FROM page_zs WHERE len(label_set) > 0
        GROUP BY ALL ORDER BY n_requests DESC, label_set LIMIT {TOP_LABEL_SETS}""")
    verdicts = _df(con, f"""
        SELECT task, n_verdict, n_up, n_up / n_verdict AS up_rate FROM ({sql.task_verdicts('page_req')})
        ORDER BY n_verdict DESC, task""")
    wrong_boxes = _df(con, f"""
        SELECT label, coalesce(corrected_label, '{NOT_AN_OBJECT}') AS should_be, count(*) AS n_boxes
        FROM ({sql.box_feedback('page_req')}) WHERE verdict = 'down'
        GROUP BY ALL ORDER BY n_boxes DESC, label, should_be LIMIT {TOP_CLASSES}""")
    for name in ("page_zs", "page_det", "page_req"):
        con.execute(f"DROP TABLE {name}")
    for bins in (box_scores, top_scores):
        bins["bin_high"] = bins["bin_low"] + 1.0 / SCORE_BINS
    label_sets["label_set"] = [list(s) for s in label_sets["label_set"]]
    return {"summary": summary, "classes": classes, "per_photo": per_photo, "box_scores": box_scores,
            "custom_labels": custom, "top_scores": top_scores, "label_sets": label_sets, "task_verdicts": verdicts,
            "wrong_boxes": wrong_boxes}


def models(con: duckdb.DuckDBPyConnection, f: Filters, interval: str = "day") -> dict[str, pd.DataFrame]:
    """The Models tab (dashboard.models): each classify version's evaluation, live accuracy and the review queue."""
    from dashboard import models as models_page  # it builds on this module's relation

    return models_page.page(con, f, interval)


OBJECTS_TAB = "Objects & custom labels"

Page = Callable[[duckdb.DuckDBPyConnection, Filters, str], dict[str, pd.DataFrame]]
PAGES: dict[str, Page] = {
    "Overview": overview,
    "Accuracy": accuracy,
    "Models": models,
    "Classes": classes,
    "Performance": performance,
    "Confidence": confidence,
    "Captions": captions,
    OBJECTS_TAB: objects,
    "Recent": recent,
}
