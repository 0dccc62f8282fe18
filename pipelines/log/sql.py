"""Every piece of SQL that knows the log's tables: the schema and its migrations, "latest feedback", and the
wide relation that puts a request back into one row for readers (the dashboard, the export).

The tables (schema version 6):

    predictions     one row per request: id, created_at, image_sha256, width, height, intake_ms, total_ms,
                    cached, source, session_id, image_file
    outputs         one row per task run on a request: prediction_id, task, model_version, precision,
                    payload (the task's output as the API returns it, JSON), ms, and the payload's headline
                    label and score (classify's top-1, explain's label), typed: parsing JSON for every row
                    made the dashboard three to five times slower
    model_versions  each model version once: version ("id@revision", or the id alone), model, revision, first_seen;
                    a registered (trained) version also has base, data_fingerprint, params and evaluation (JSON)
    feedback        verdicts, corrected labels and edited captions, many per prediction; each on the request's
                    answer (task NULL: the labels' verdict and the caption's edit, as before schema 4) or on one
                    task's output (task), and for a detected box on that box (target: the box as it was
                    answered, {"index", "label", "score", "box"}; a thumbs down on a box without a corrected
                    label says it is not an object)
    batch_runs      one row per batch job (python -m pipelines.batch): when, input, output, tasks, model versions,
                    counts and images per second

A new task adds rows to `outputs`, never a column.
"""

from __future__ import annotations

import re
from typing import Iterable


def _version_sql(model: str, revision: str) -> str:
    """pipelines.models.version_of in SQL: "id@revision", or the id alone when there is no revision."""
    return f"CASE WHEN coalesce({revision}, '') = '' THEN {model} ELSE {model} || '@' || {revision} END"


_CLASSIFY_VERSION = _version_sql("classifier", "classifier_revision")
_CAPTION_VERSION = _version_sql("captioner", "captioner_revision")

# The per-task columns of schema 2 that move into `outputs` rows.
V2_TASK_COLUMNS: tuple[str, ...] = (
    "classifier", "classifier_revision", "captioner", "captioner_revision", "labels", "scores", "top1_label",
    "top1_score", "caption", "prompt", "classify_ms", "caption_ms", "classifier_precision", "captioner_precision",
)

# Each migration: (version, description, statements). Never edit one that has shipped; add a new one.
MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (1, "predictions and feedback", (
        """CREATE TABLE predictions (
            id VARCHAR PRIMARY KEY,
            created_at TIMESTAMP NOT NULL,          -- UTC
            image_sha256 VARCHAR NOT NULL,
            width INTEGER,
            height INTEGER,
            classifier VARCHAR,
            classifier_revision VARCHAR,
            captioner VARCHAR,
            captioner_revision VARCHAR,
            labels VARCHAR[],
            scores DOUBLE[],
            top1_label VARCHAR,
            top1_score DOUBLE,
            caption VARCHAR,
            prompt VARCHAR,
            intake_ms DOUBLE,
            classify_ms DOUBLE,
            caption_ms DOUBLE,
            total_ms DOUBLE,
            cached BOOLEAN,
            source VARCHAR,
            session_id VARCHAR
        )""",
        """CREATE TABLE feedback (
            id VARCHAR PRIMARY KEY,
            prediction_id VARCHAR NOT NULL,
            created_at TIMESTAMP NOT NULL,          -- UTC
            verdict VARCHAR CHECK (verdict IN ('up', 'down')),
            corrected_label VARCHAR,
            edited_caption VARCHAR
        )""",
    )),
    (2, "stored image file and model precision", (
        "ALTER TABLE predictions ADD COLUMN image_file VARCHAR",  # opt-in stored copy, see pipelines.log.privacy
        "ALTER TABLE predictions ADD COLUMN classifier_precision VARCHAR",
        "ALTER TABLE predictions ADD COLUMN captioner_precision VARCHAR",
    )),
    (3, "the log, long: one row per request, one outputs row per task, model versions once", (
        """CREATE TABLE model_versions (
            version VARCHAR PRIMARY KEY,            -- pipelines.models.version_of(model, revision)
            model VARCHAR NOT NULL,
            revision VARCHAR,
            first_seen TIMESTAMP                    -- UTC
        )""",
        """CREATE TABLE outputs (
            prediction_id VARCHAR NOT NULL,
            task VARCHAR NOT NULL,
            model_version VARCHAR,
            precision VARCHAR,
            payload JSON,                           -- the task's output as the API returns it
            ms DOUBLE,
            label VARCHAR,                          -- the payload's headline label and its score, typed, so that
            score DOUBLE,                           -- readers filter and count without parsing JSON (rows.headline)
            PRIMARY KEY (prediction_id, task)
        )""",
        f"""INSERT INTO model_versions
            SELECT version, min(model), min(revision), min(created_at) FROM (
                SELECT {_CLASSIFY_VERSION} AS version, classifier AS model, nullif(classifier_revision, '') AS revision,
                       created_at FROM predictions WHERE classifier IS NOT NULL
                UNION ALL
                SELECT {_CAPTION_VERSION}, captioner, nullif(captioner_revision, ''), created_at
                FROM predictions WHERE captioner IS NOT NULL)
            GROUP BY version""",
        # A classify output from the labels and scores arrays (or, in a row that has only them, the top-1 columns).
        f"""INSERT INTO outputs
            SELECT id, 'classify', {_CLASSIFY_VERSION}, classifier_precision,
                   to_json({{'model': {_CLASSIFY_VERSION},
                             'labels': CASE WHEN labels IS NOT NULL
                                 THEN list_transform(generate_series(1, len(labels)),
                                                     lambda i: {{'label': labels[i], 'score': scores[i]}})
                                 ELSE [{{'label': top1_label, 'score': top1_score}}] END}}),
                   classify_ms,
                   CASE WHEN labels IS NOT NULL THEN labels[1] ELSE top1_label END,
                   CASE WHEN labels IS NOT NULL THEN scores[1] ELSE top1_score END
            FROM predictions WHERE labels IS NOT NULL OR top1_label IS NOT NULL""",
        f"""INSERT INTO outputs
            SELECT id, 'caption', {_CAPTION_VERSION}, captioner_precision,
                   to_json({{'model': {_CAPTION_VERSION}, 'caption': caption, 'prompt': prompt}}), caption_ms,
                   NULL, NULL
            FROM predictions WHERE caption IS NOT NULL""",
        *(f"ALTER TABLE predictions DROP COLUMN {column}" for column in V2_TASK_COLUMNS),
    )),
    (4, "feedback on one task's output, or on one detected box", (
        "ALTER TABLE feedback ADD COLUMN task VARCHAR",   # NULL: the request's answer, as every row before it
        "ALTER TABLE feedback ADD COLUMN target JSON",    # the box a verdict is about, as it was answered
    )),
    (5, "batch runs", (
        """CREATE TABLE batch_runs (
            id VARCHAR PRIMARY KEY,
            created_at TIMESTAMP NOT NULL,          -- UTC, when the job started
            finished_at TIMESTAMP,                  -- UTC
            input VARCHAR,                          -- the INPUT as given: folder, glob, list file or URI
            output VARCHAR,                         -- the Parquet dataset the results went to
            tasks VARCHAR[],
            models JSON,                            -- task -> model version
            images INTEGER,                         -- files found in the input
            done INTEGER,                           -- recognised in this run
            refused INTEGER,                        -- refused by intake in this run (one row each in the output)
            skipped INTEGER,                        -- already in the output for the same model versions
            errors INTEGER,                         -- a task failed on them
            seconds DOUBLE,
            images_per_s DOUBLE,
            batch_size INTEGER,
            ray_address VARCHAR                     -- the cluster it joined; NULL for a local Ray
        )""",
    )),
    (6, "registered model versions: what a trained version came from and how well it did", (
        "ALTER TABLE model_versions ADD COLUMN base VARCHAR",  # the model it was trained from
        "ALTER TABLE model_versions ADD COLUMN data_fingerprint VARCHAR",  # pipelines.learn.data.fingerprint
        "ALTER TABLE model_versions ADD COLUMN params JSON",  # the training parameters
        "ALTER TABLE model_versions ADD COLUMN evaluation JSON",  # pipelines.evaluate's report
    )),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]  # the newest migration: a log at this version needs none

PREDICTION_COLUMNS: tuple[str, ...] = (
    "id", "created_at", "image_sha256", "width", "height", "intake_ms", "total_ms", "cached", "source",
    "session_id", "image_file",
)
OUTPUT_COLUMNS: tuple[str, ...] = ("prediction_id", "task", "model_version", "precision", "payload", "ms", "label",
                                   "score")
VERSION_COLUMNS: tuple[str, ...] = ("version", "model", "revision", "first_seen", "base", "data_fingerprint",
                                    "params", "evaluation")
# A registration fills in what a version came from; the version's first_seen stays that of its first row.
REGISTER_VERSION = f"""INSERT INTO model_versions ({', '.join(VERSION_COLUMNS)}) VALUES ({', '.join('?' * len(VERSION_COLUMNS))})
    ON CONFLICT (version) DO UPDATE SET base = excluded.base, data_fingerprint = excluded.data_fingerprint,
        params = excluded.params, evaluation = excluded.evaluation"""
FEEDBACK_COLUMNS: tuple[str, ...] = (
    "id", "prediction_id", "created_at", "verdict", "corrected_label", "edited_caption", "task", "target",
)
BATCH_RUN_COLUMNS: tuple[str, ...] = (
    "id", "created_at", "finished_at", "input", "output", "tasks", "models", "images", "done", "refused", "skipped",
    "errors", "seconds", "images_per_s", "batch_size", "ray_address",
)
COLUMNS: dict[str, tuple[str, ...]] = {"predictions": PREDICTION_COLUMNS, "outputs": OUTPUT_COLUMNS,
                                       "model_versions": VERSION_COLUMNS, "feedback": FEEDBACK_COLUMNS,
                                       "batch_runs": BATCH_RUN_COLUMNS}
# What makes a row the same row again (a replay inserts nothing twice).
KEYS: dict[str, tuple[str, ...]] = {"predictions": ("id",), "outputs": ("prediction_id", "task"),
                                    "model_versions": ("version",), "feedback": ("id",), "batch_runs": ("id",)}


# -- latest feedback ---------------------------------------------------------------------------------

LATEST_PARTS = ("verdict", "corrected_label", "verdict_id", "edited_caption", "edit_id", "edited")


# Verdicts on the request's answer: the page's and the API's thumbs before schema 4 (task NULL) and those on the
# labels since; an edited caption is on the answer whether it came with task NULL or 'caption'.
ANSWER_VERDICT = "coalesce(task, 'classify') = 'classify' AND target IS NULL"
ANSWER_EDIT = "coalesce(task, 'caption') = 'caption'"
_TASK_NAME = re.compile(r"^[a-z_]+$")


def latest_feedback(need: Iterable[str] = ("verdict", "corrected_label", "edited_caption"),
                    where: str = "", task: str | None = None) -> str:
    """Per prediction: its latest verdict with that verdict's corrected label, and its latest edited caption.

    The one definition of "latest feedback", as a query grouped by prediction_id. `need` picks the columns
    (LATEST_PARTS; `edited` says whether there is an edit at all, without carrying its text); `where` narrows
    the feedback rows read (a condition, parameters are the caller's). Verdicts are those on the request's
    answer (the labels: ANSWER_VERDICT), or with `task` those on that task's outputs (a box's verdict has its
    box in `target`: narrow by it in `where`). A later verdict without a label clears an earlier correction
    (arg_max_null; arg_max would skip the NULL and keep it). Ties on created_at are left to chance: they need
    the same microsecond.
    """
    need = set(need)
    unknown = need - set(LATEST_PARTS)
    if unknown:
        raise ValueError(f"unknown latest-feedback columns: {sorted(unknown)}")
    if task is not None and not _TASK_NAME.match(task):
        raise ValueError(f"not a task name: {task!r}")
    on_verdict = f"verdict IS NOT NULL AND task = '{task}'" if task else f"verdict IS NOT NULL AND {ANSWER_VERDICT}"
    on_edit = f"edited_caption IS NOT NULL AND {ANSWER_EDIT}"
    verdicts = need & {"verdict", "corrected_label", "verdict_id"}
    edits = need & {"edited_caption", "edit_id", "edited"}
    columns = ["prediction_id"]
    if "verdict" in need:
        columns.append(f"arg_max(verdict, created_at) FILTER (WHERE {on_verdict}) AS verdict")
    if "corrected_label" in need:
        columns.append(f"arg_max_null(corrected_label, created_at) FILTER (WHERE {on_verdict}) AS corrected_label")
    if "verdict_id" in need:
        columns.append(f"arg_max(id, created_at) FILTER (WHERE {on_verdict}) AS verdict_id")
    if "edited_caption" in need:
        columns.append(f"arg_max(edited_caption, created_at) FILTER (WHERE {on_edit}) AS edited_caption")
    if "edit_id" in need:
        columns.append(f"arg_max(id, created_at) FILTER (WHERE {on_edit}) AS edit_id")
    if "edited" in need:
        columns.append(f"coalesce(bool_or({on_edit}), false) AS edited")
    clauses = [f"({where})"] if where else []
    if verdicts and not edits:
        clauses.append(on_verdict)
    elif edits and not verdicts:
        clauses.append(on_edit)
    else:
        clauses.append(f"(({on_verdict}) OR ({on_edit}))")
    condition = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    return f"SELECT {', '.join(columns)} FROM feedback{condition} GROUP BY prediction_id"


def task_verdicts(ids_from: str) -> str:
    """Per task, over the requests in `ids_from`: outputs with a verdict and those whose latest verdict is up (a
    verdict with no task is on the labels, classify's; one box's verdict is not the output's)."""
    return (f"SELECT task, count(*) AS n_verdict, count(*) FILTER (WHERE verdict = 'up') AS n_up FROM ("
            "SELECT prediction_id, coalesce(task, 'classify') AS task, arg_max(verdict, created_at) AS verdict "
            f"FROM feedback WHERE verdict IS NOT NULL AND target IS NULL AND prediction_id IN (SELECT id FROM {ids_from}) "
            "GROUP BY ALL) GROUP BY task")


def box_feedback(ids_from: str) -> str:
    """Each detected box's latest verdict, over the requests in `ids_from`: the box's label as answered, and its
    corrected label (NULL on a thumbs down: not an object; on a thumbs up: right as it was)."""
    return ("SELECT prediction_id, json_extract_string(any_value(target), '$.label') AS label, "
            "arg_max(verdict, created_at) AS verdict, arg_max_null(corrected_label, created_at) AS corrected_label "
            f"FROM feedback WHERE task = 'detect' AND target IS NOT NULL AND verdict IS NOT NULL "
            f"AND prediction_id IN (SELECT id FROM {ids_from}) GROUP BY prediction_id, CAST(target AS VARCHAR)")


# -- the wide relation -----------------------------------------------------------------------------

# A request in the wide shape readers know: the request's own columns, then its classify and caption outputs
# (typed extraction from the JSON payload) and each task's version and the model and revision behind it.
# name -> (expression, the joins it needs)
_REQUEST = {c: (f"p.{c}", ()) for c in PREDICTION_COLUMNS}
_TASK_COLUMNS: dict[str, tuple[str, tuple[str, ...]]] = {
    "classify_version": ("c.model_version", ("c",)),
    "classifier": ("cv.model", ("c", "cv")),
    "classifier_revision": ("cv.revision", ("c", "cv")),
    "classifier_precision": ("c.precision", ("c",)),
    "labels": ("json_extract_string(c.payload, '$.labels[*].label')", ("c",)),
    "scores": ("CAST(json_extract(c.payload, '$.labels[*].score') AS DOUBLE[])", ("c",)),
    "top1_label": ("c.label", ("c",)),
    "top1_score": ("c.score", ("c",)),
    "classify_ms": ("c.ms", ("c",)),
    "caption_version": ("k.model_version", ("k",)),
    "captioner": ("kv.model", ("k", "kv")),
    "captioner_revision": ("kv.revision", ("k", "kv")),
    "captioner_precision": ("k.precision", ("k",)),
    "caption": ("json_extract_string(k.payload, '$.caption')", ("k",)),
    "prompt": ("json_extract_string(k.payload, '$.prompt')", ("k",)),
    "caption_ms": ("k.ms", ("k",)),
}
WIDE_COLUMNS: dict[str, tuple[str, tuple[str, ...]]] = _REQUEST | _TASK_COLUMNS
_JOINS = {  # in this order: a version join needs its output join first
    "c": "LEFT JOIN outputs c ON c.prediction_id = p.id AND c.task = 'classify'",
    "cv": "LEFT JOIN model_versions cv ON cv.version = c.model_version",
    "k": "LEFT JOIN outputs k ON k.prediction_id = p.id AND k.task = 'caption'",
    "kv": "LEFT JOIN model_versions kv ON kv.version = k.model_version",
}
_NARROW_JOINS = {
    "c": "LEFT JOIN (SELECT * FROM outputs WHERE task = 'classify' AND prediction_id IN (SELECT id FROM req)) c "
         "ON c.prediction_id = p.id",
    "cv": _JOINS["cv"],
    "k": "LEFT JOIN (SELECT * FROM outputs WHERE task = 'caption' AND prediction_id IN (SELECT id FROM req)) k "
         "ON k.prediction_id = p.id",
    "kv": _JOINS["kv"],
}
# Today's export columns, in today's order, and the columns that came with schema 3.
EXPORT_COLUMNS: tuple[str, ...] = (
    "id", "created_at", "image_sha256", "width", "height", "classifier", "classifier_revision", "captioner",
    "captioner_revision", "labels", "scores", "top1_label", "top1_score", "caption", "prompt", "intake_ms",
    "classify_ms", "caption_ms", "total_ms", "cached", "source", "session_id", "image_file",
    "classifier_precision", "captioner_precision", "classify_version", "caption_version",
)
_NAME = re.compile(r"\b[a-z_][a-z0-9_]*\b")


def wide(columns: Iterable[str] | None = None, where: str = "") -> str:
    """The wide relation `requests_wide`, as a parenthesised subquery: one row per request.

    Its columns are WIDE_COLUMNS (the request's own, then classify's and caption's outputs: labels, scores,
    top1_label, top1_score, classify_ms, classifier, classifier_revision, classify_version, classifier_precision,
    caption, prompt, caption_ms, captioner, ...). Name the columns a query needs (or pass the text of the
    query's select list and conditions: every known name in it counts) and only the joins they need are made.
    `where` narrows the requests (a condition on `p`, the predictions table) before any output is read or its
    payload parsed: parsing JSON is the relation's dearest step.
    """
    if columns is None:
        names = list(WIDE_COLUMNS)
    elif isinstance(columns, str):
        found = set(_NAME.findall(columns))
        names = [c for c in WIDE_COLUMNS if c in found] or ["id"]
    else:
        names = list(dict.fromkeys(columns))
        unknown = [c for c in names if c not in WIDE_COLUMNS]
        if unknown:
            raise ValueError(f"not columns of the wide relation: {unknown}")
    joins = {j for c in names for j in WIDE_COLUMNS[c][1]}
    select = ", ".join(f"{WIDE_COLUMNS[c][0]} AS {c}" for c in names)
    if not where:
        join_sql = " ".join(sql for key, sql in _JOINS.items() if key in joins)
        return f"(SELECT {select} FROM predictions p {join_sql})"
    # Narrowed: the chosen requests first, and only their outputs are read (a join would otherwise hash every
    # output, payload and all, to keep a few).
    join_sql = " ".join(_NARROW_JOINS[key] for key in _JOINS if key in joins)
    return (f"(WITH req AS MATERIALIZED (SELECT * FROM predictions p WHERE {where}) "
            f"SELECT {select} FROM req p {join_sql})")


def task_ms(ids_from: str) -> str:
    """Every task's output time for the requests whose ids `ids_from` (a relation with an `id` column) holds."""
    return f"SELECT o.prediction_id, o.task, o.ms FROM outputs o WHERE o.prediction_id IN (SELECT id FROM {ids_from})"


def export_query(order: str = "created_at") -> str:
    """Each request in the wide shape with its latest verdict, corrected label and edited caption."""
    columns = ", ".join(f"w.{c}" for c in EXPORT_COLUMNS)
    return (f"SELECT {columns}, fb.verdict, fb.corrected_label, fb.edited_caption FROM {wide(EXPORT_COLUMNS)} w "
            f"LEFT JOIN ({latest_feedback()}) fb ON fb.prediction_id = w.id ORDER BY w.{order}")


# -- task payloads: detect and zero_shot ---------------------------------------------------------------

def detect_outputs(ids_from: str) -> str:
    """Each detect output of the requests in `ids_from` (a relation with an `id` column): prediction_id, and its
    boxes' labels and scores as two lists in the payload's order (`boxes` holds {"label", "score", "box"})."""
    return ("SELECT o.prediction_id, coalesce(json_extract_string(o.payload, '$.boxes[*].label'), []) AS labels, "
            "coalesce(CAST(json_extract(o.payload, '$.boxes[*].score') AS DOUBLE[]), []) AS scores "
            f"FROM outputs o WHERE o.task = 'detect' AND o.prediction_id IN (SELECT id FROM {ids_from})")


def zero_shot_outputs(ids_from: str) -> str:
    """Each zero_shot output of the requests in `ids_from`: prediction_id, its top label and score (the typed
    headline columns) and the label set asked (`label_set` in the payload, else the labels scored)."""
    return ("SELECT o.prediction_id, o.label AS top_label, o.score AS top_score, "
            "coalesce(nullif(json_extract_string(o.payload, '$.label_set[*]'), []), "
            "json_extract_string(o.payload, '$.labels[*].label'), []) AS label_set "
            f"FROM outputs o WHERE o.task = 'zero_shot' AND o.prediction_id IN (SELECT id FROM {ids_from})")


# -- the service's readers: one prediction by id, usage over a window ------------------------------------------

PREDICTION_BY_ID = ("SELECT id, created_at, image_sha256, width, height, total_ms, cached, source "
                    "FROM predictions WHERE id = ?")
OUTPUTS_BY_ID = "SELECT task, model_version, payload, ms FROM outputs WHERE prediction_id = ? ORDER BY task"
FEEDBACK_BY_ID = latest_feedback(where="prediction_id = ?")


def usage_counts() -> str:
    """Requests since ? with their latest verdicts: counts and total-latency percentiles (p50, p90, p99)."""
    return ("SELECT count(*) AS predictions, count(fb.verdict) AS rated, "
            "count(*) FILTER (WHERE fb.verdict = 'up') AS up, count(*) FILTER (WHERE fb.verdict = 'down') AS down, "
            "count(fb.corrected_label) AS corrected, "
            "quantile_cont(p.total_ms, [0.5, 0.9, 0.99]) AS total_ms "
            f"FROM predictions p LEFT JOIN ({latest_feedback(('verdict', 'corrected_label'))}) fb "
            "ON fb.prediction_id = p.id WHERE p.created_at >= ?")


TASK_LATENCY = ("SELECT o.task, count(*) AS runs, quantile_cont(o.ms, [0.5, 0.9, 0.99]) AS ms FROM outputs o "
                "JOIN predictions p ON p.id = o.prediction_id WHERE p.created_at >= ? GROUP BY o.task ORDER BY o.task")
