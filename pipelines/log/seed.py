"""Fill a log with deterministic, clearly marked synthetic predictions and feedback.

    python -m pipelines.seed --db data/imagerec.duckdb --rows 100000

Every seeded row has source 'synthetic' and an id starting with 'seed'. The same --seed and --end give
the same rows, and seeding again with them adds nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timedelta

import duckdb
import numpy as np
import pyarrow as pa

from pipelines import settings
from pipelines.log import eventlog
from pipelines.models import defaults, version_of

SOURCE = "synthetic"
LABELS = (
    "tabby", "Egyptian cat", "golden retriever", "Labrador retriever", "German shepherd", "Siamese cat",
    "beagle", "pug", "tiger cat", "Persian cat", "espresso", "cup", "coffee mug", "teapot", "pizza",
    "cheeseburger", "banana", "orange", "lemon", "strawberry", "sports car", "convertible", "minivan",
    "pickup", "tow truck", "mountain bike", "airliner", "space shuttle", "container ship", "canoe",
    "laptop", "desktop computer", "cellular telephone", "monitor", "keyboard", "mouse", "toucan",
    "goldfinch", "jellyfish", "daisy",
)
# Pairs the synthetic "users" confuse, so the dashboard's confusion view has structure to show.
CONFUSED = {0: 8, 8: 0, 1: 5, 2: 3, 3: 2, 11: 12, 12: 11, 20: 21, 21: 20, 22: 23, 32: 33, 33: 31}
TEMPLATES = ("a photo of a {}", "a close up of a {}", "a {} on a table", "a picture of a {}")
MODEL_VERSIONS = (  # (classifier revision, captioner revision, classify ms, caption ms)
    ("synthetic-older", "synthetic-older", 120.0, 900.0),
    (defaults.PINNED_REVISIONS[defaults.DEFAULT_CLASSIFIER],
     defaults.PINNED_REVISIONS[defaults.DEFAULT_CAPTIONER], 70.0, 600.0),
)
TOP_K = 5
# detect and zero_shot on a fraction of the requests, from their own random stream (the other rows stay as they were)
DETECTOR = ("ustc-community/dfine-small-coco", "synthetic")
ZERO_SHOT = ("google/siglip2-base-patch32-256", "synthetic")
DETECT_SHARE, ZERO_SHOT_SHARE = 0.3, 0.2
TASK_FEEDBACK_SHARE, BOX_FEEDBACK_SHARE = 0.15, 0.05  # outputs given a thumbs, boxes marked wrong
OBJECTS = ("person", "car", "chair", "cup", "dog", "cat", "bottle", "laptop", "bicycle", "potted plant", "book",
           "dining table")
LABEL_SETS = (
    ("a forklift", "a pallet", "an empty shelf"),
    ("a cat", "a dog"),
    ("indoor", "outdoor"),
    ("a receipt", "a product photo", "a screenshot", "a selfie"),
    ("ripe fruit", "unripe fruit", "a cat"),
)


def _floor_hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def _lists(values: np.ndarray, width: int, kind: pa.DataType) -> pa.ListArray:
    offsets = pa.array(np.arange(0, values.size + 1, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1), type=kind))


def _hex_digests(rng: np.random.Generator, rows: int) -> list[str]:
    """Random stand-ins for image sha256 digests (64 hex characters each)."""
    raw = rng.bytes(32 * rows).hex()
    return [raw[i:i + 64] for i in range(0, 64 * rows, 64)]


def synthetic_tables(rows: int, seed: int = 0, end: datetime | None = None,
                     days: float = 30.0) -> dict[str, pa.Table]:
    """Build `rows` predictions, their classify and caption outputs, the model versions and the feedback,
    deterministic for a given seed and end; one Arrow table per log table."""
    rng = np.random.default_rng(seed)
    end = _floor_hour(end or eventlog.utcnow())
    n_labels = len(LABELS)
    label_names = np.array(LABELS, dtype=object)

    offsets_s = np.sort(rng.uniform(0, days * 86400, rows))
    created = np.datetime64(end - timedelta(days=days), "us") + (offsets_s * 1e6).astype("timedelta64[us]")
    version = (offsets_s > days * 86400 * 0.4).astype(np.int64)  # the newer model from 40% of the way in

    popularity = 1.0 / np.arange(1, n_labels + 1) ** 0.9
    top1 = rng.choice(n_labels, size=rows, p=popularity / popularity.sum())
    others = (top1[:, None] + rng.integers(1, n_labels, size=(rows, TOP_K - 1))) % n_labels
    label_idx = np.concatenate([top1[:, None], others], axis=1)
    top1_score = rng.beta(5, 2, size=rows)
    rest = rng.dirichlet(np.ones(TOP_K - 1), size=rows) * (1 - top1_score)[:, None] * 0.8
    scores = np.concatenate([top1_score[:, None], -np.sort(-rest, axis=1)], axis=1)

    base_classify = np.array([v[2] for v in MODEL_VERSIONS])[version]
    base_caption = np.array([v[3] for v in MODEL_VERSIONS])[version]
    cached = rng.random(rows) < 0.05
    intake_ms = rng.lognormal(np.log(8), 0.4, rows)
    classify_ms = np.where(cached, 0.0, rng.lognormal(np.log(base_classify), 0.25))
    caption_ms = np.where(cached, 0.0, rng.lognormal(np.log(base_caption), 0.3))
    total_ms = intake_ms + classify_ms + caption_ms + rng.uniform(0.2, 2.0, rows)

    template = rng.integers(0, len(TEMPLATES), rows)
    captions = np.array([TEMPLATES[t].format(LABELS[i]) for t, i in zip(template, top1)], dtype=object)
    ids = np.array([f"seed{seed}-{i:08d}" for i in range(rows)], dtype=object)
    sessions = np.array([f"seed{seed}-session-{s:06d}" for s in rng.integers(0, max(1, rows // 8), rows)],
                        dtype=object)
    width = rng.choice([640, 800, 1024, 1280, 1920, 3024, 4032], rows)
    height = (width * rng.choice([0.5625, 0.75, 1.0, 1.333], rows)).astype(np.int32)

    classifier_versions = np.array([version_of(defaults.DEFAULT_CLASSIFIER, v[0]) for v in MODEL_VERSIONS],
                                   dtype=object)
    captioner_versions = np.array([version_of(defaults.DEFAULT_CAPTIONER, v[1]) for v in MODEL_VERSIONS],
                                  dtype=object)
    predictions = pa.table({
        "id": pa.array(ids, pa.string()),
        "created_at": pa.array(created),
        "image_sha256": pa.array(_hex_digests(rng, rows), pa.string()),
        "width": pa.array(width.astype(np.int32)),
        "height": pa.array(height),
        "intake_ms": pa.array(intake_ms),
        "total_ms": pa.array(total_ms),
        "cached": pa.array(cached),
        "source": pa.array(np.full(rows, SOURCE, dtype=object), pa.string()),
        "session_id": pa.array(sessions, pa.string()),
        "image_file": pa.nulls(rows, pa.string()),
    })
    task_columns = pa.table({
        "id": pa.array(ids, pa.string()),
        "classify_version": pa.array(classifier_versions[version], pa.string()),
        "labels": _lists(label_names[label_idx], TOP_K, pa.string()),
        "scores": _lists(scores, TOP_K, pa.float64()),
        "classify_ms": pa.array(classify_ms),
        "caption_version": pa.array(captioner_versions[version], pa.string()),
        "caption": pa.array(captions, pa.string()),
        "caption_ms": pa.array(caption_ms),
    })
    # The payloads as the API gives them, made in DuckDB: JSON for a million rows in a second, not a minute.
    with duckdb.connect() as con:
        con.register("task_columns", task_columns)
        outputs = con.sql("""
            SELECT id AS prediction_id, 'classify' AS task, classify_version AS model_version, 'fp32' AS precision,
                   to_json({'model': classify_version,
                            'labels': list_transform(generate_series(1, len(labels)),
                                                     lambda i: {'label': labels[i], 'score': scores[i]})})::VARCHAR
                       AS payload, classify_ms AS ms, labels[1] AS label, scores[1] AS score
            FROM task_columns
            UNION ALL
            SELECT id, 'caption', caption_version, 'fp32',
                   to_json({'model': caption_version, 'caption': caption, 'prompt': NULL::VARCHAR})::VARCHAR,
                   caption_ms, NULL, NULL
            FROM task_columns""").to_arrow_table()
    used = [k for k in range(len(MODEL_VERSIONS)) if (version == k).any()]  # each version with its first row
    first_seen = [created[np.argmax(version == k)] for k in used]
    versions = pa.table({
        "version": pa.array([*classifier_versions[used], *captioner_versions[used]], pa.string()),
        "model": pa.array([defaults.DEFAULT_CLASSIFIER] * len(used) + [defaults.DEFAULT_CAPTIONER] * len(used),
                          pa.string()),
        "revision": pa.array([MODEL_VERSIONS[k][0] for k in used] + [MODEL_VERSIONS[k][1] for k in used],
                             pa.string()),
        "first_seen": pa.array([*first_seen, *first_seen], pa.timestamp("us")),
    })

    # About a third of predictions get a verdict; the newer model is right more often, and
    # confidence tracks correctness loosely (a little overconfident), as with real classifiers.
    has_verdict = rng.random(rows) < 0.32
    p_up = np.clip(top1_score * (0.85 + 0.1 * version), 0, 1)
    up = rng.random(rows) < p_up
    corrected = np.array([LABELS[CONFUSED.get(i, (i + 1) % n_labels)] for i in top1], dtype=object)
    gives_label = (~up) & (rng.random(rows) < 0.7)
    edits = rng.random(rows) < 0.1
    edited = np.array([f"{c} in the sun" if k % 2 else c.replace("a ", "my ", 1)
                       for k, c in enumerate(captions)], dtype=object)

    v = np.flatnonzero(has_verdict)
    e = np.flatnonzero(edits)
    fb_pred = np.concatenate([v, e])
    fb_delay = rng.uniform(2, 60, fb_pred.size)
    feedback = pa.table({
        "id": pa.array([f"seed{seed}-fb-{i:08d}" for i in range(fb_pred.size)], pa.string()),
        "prediction_id": pa.array(ids[fb_pred], pa.string()),
        "created_at": pa.array(created[fb_pred] + (fb_delay * 1e6).astype("timedelta64[us]")),
        "verdict": pa.array(np.concatenate([np.where(up[v], "up", "down"), np.full(e.size, None)]).astype(object),
                            pa.string()),
        "corrected_label": pa.array(
            np.concatenate([np.where(gives_label[v], corrected[v], None), np.full(e.size, None)]).astype(object),
            pa.string()),
        "edited_caption": pa.array(np.concatenate([np.full(v.size, None), edited[e]]).astype(object), pa.string()),
        "task": pa.nulls(fb_pred.size, pa.string()),  # on the request's answer
        "target": pa.nulls(fb_pred.size, pa.string()),
    })
    extra_outputs, extra_versions, task_feedback = _task_outputs(ids, created, seed)
    outputs = pa.concat_tables([outputs, extra_outputs.cast(outputs.schema)])
    versions = pa.concat_tables([versions, extra_versions.cast(versions.schema)])
    feedback = pa.concat_tables([feedback, task_feedback.select(feedback.column_names).cast(feedback.schema)])
    return {"predictions": predictions, "model_versions": versions, "outputs": outputs, "feedback": feedback}


def _task_outputs(ids: np.ndarray, created: np.ndarray, seed: int) -> tuple[pa.Table, pa.Table, pa.Table]:
    """detect outputs on about DETECT_SHARE of the requests and zero_shot outputs on about ZERO_SHOT_SHARE, with
    payloads as the tasks give them, their two model versions (first seen at their first output), and feedback
    on them: thumbs on some outputs, and some boxes marked wrong (relabelled, or not an object)."""
    rng = np.random.default_rng([seed, 11])
    rows = ids.size
    detect = rng.random(rows) < DETECT_SHARE
    zero_shot = rng.random(rows) < ZERO_SHOT_SHARE
    detector, zs_model = version_of(*DETECTOR), version_of(*ZERO_SHOT)

    # detect: a Poisson number of boxes per photo, classes by popularity, best score first
    photos = np.flatnonzero(detect)
    n_boxes = rng.poisson(2.0, photos.size)
    owner = np.repeat(photos, n_boxes)
    popularity = 1.0 / np.arange(1, len(OBJECTS) + 1)
    classes = rng.choice(len(OBJECTS), size=owner.size, p=popularity / popularity.sum())
    box_scores = np.round(rng.uniform(0.3, 1.0, owner.size), 4)
    corners = rng.uniform(0, 600, (owner.size, 2))
    corners = np.round(np.concatenate([corners, corners + rng.uniform(20, 400, (owner.size, 2))], axis=1), 1)
    boxes = pa.table({"owner": pa.array(owner, pa.int64()), "pos": pa.array(np.arange(owner.size)),
                      "label": pa.array(np.array(OBJECTS, dtype=object)[classes], pa.string()),
                      "score": pa.array(box_scores), "box": _lists(corners, 4, pa.float64())})
    photo_table = pa.table({"owner": pa.array(photos, pa.int64()), "id": pa.array(ids[photos], pa.string()),
                            "ms": pa.array(rng.lognormal(np.log(250), 0.3, photos.size))})

    # zero_shot: one of LABEL_SETS per request, scores from a Dirichlet, labels best first
    asked = np.flatnonzero(zero_shot)
    which = rng.choice(len(LABEL_SETS), size=asked.size, p=[0.4, 0.25, 0.15, 0.1, 0.1])
    zs_ms = rng.lognormal(np.log(120), 0.3, asked.size)
    set_of = []
    for k, label_set in enumerate(LABEL_SETS):  # each set size at once: a Dirichlet per size
        rows_k = np.flatnonzero(which == k)
        scores = np.round(rng.dirichlet(np.ones(len(label_set)) * 0.7, size=rows_k.size), 4)
        order = np.argsort(-scores, axis=1, kind="stable")
        names = np.array(label_set, dtype=object)
        set_of.append((rows_k, [list(label_set)] * rows_k.size, names[order].tolist(),
                       np.take_along_axis(scores, order, axis=1).tolist()))
    position = np.concatenate([r for r, *_ in set_of])
    back = np.argsort(position, kind="stable")
    zs_table = pa.table({
        "id": pa.array(ids[asked], pa.string()), "ms": pa.array(zs_ms),
        "label_set": pa.array([x for _, sets, _, _ in set_of for x in sets], pa.list_(pa.string())).take(back),
        "labels": pa.array([x for _, _, names, _ in set_of for x in names], pa.list_(pa.string())).take(back),
        "scores": pa.array([x for *_, sc in set_of for x in sc], pa.list_(pa.float64())).take(back),
    })
    # feedback, drawn after everything above so the outputs stay as they were
    rated = rng.random(rows) < TASK_FEEDBACK_SHARE
    rated_up = rng.random(rows) < 0.7
    marked = rng.random(owner.size) < BOX_FEEDBACK_SHARE
    relabel = np.where(rng.random(owner.size) < 0.6, (classes + 1 + rng.integers(0, len(OBJECTS) - 1, owner.size))
                       % len(OBJECTS), -1)
    delay = rng.uniform(5, 90, rows)
    boxes = boxes.append_column("marked", pa.array(marked)).append_column(
        "should_be", pa.array(np.where(relabel >= 0, np.array(OBJECTS, dtype=object)[relabel], None), pa.string()))
    thumbs = pa.table({"id": pa.array(ids, pa.string()), "owner": pa.array(np.arange(rows), pa.int64()),
                       "created_at": pa.array(created + (delay * 1e6).astype("timedelta64[us]")),
                       "detect": pa.array(detect & rated), "zero_shot": pa.array(zero_shot & rated),
                       "verdict": pa.array(np.where(rated_up, "up", "down").astype(object), pa.string())})
    with duckdb.connect() as con:
        con.register("boxes", boxes)
        con.register("thumbs", thumbs)
        con.register("photos", photo_table)
        con.register("zs", zs_table)
        outputs = con.sql(f"""
            SELECT p.id AS prediction_id, 'detect' AS task, '{detector}' AS model_version, 'fp32' AS precision,
                   to_json({{'model': '{detector}',
                             'boxes': coalesce(list({{'label': b.label, 'score': b.score, 'box': b.box}}
                                                    ORDER BY b.score DESC, b.pos) FILTER (WHERE b.pos IS NOT NULL),
                                               [])}})::VARCHAR AS payload,
                   p.ms, NULL::VARCHAR AS label, NULL::DOUBLE AS score
            FROM photos p LEFT JOIN boxes b ON b.owner = p.owner GROUP BY p.owner, p.id, p.ms
            UNION ALL
            SELECT id, 'zero_shot', '{zs_model}', 'fp32',
                   to_json({{'model': '{zs_model}',
                             'labels': list_transform(generate_series(1, len(labels)),
                                                      lambda i: {{'label': labels[i], 'score': scores[i]}}),
                             'label_set': label_set}})::VARCHAR,
                   ms, labels[1], scores[1]
            FROM zs ORDER BY 1, 2""").to_arrow_table()
        feedback = con.sql(f"""
            WITH ranked AS (SELECT *, row_number() OVER (PARTITION BY owner ORDER BY score DESC, pos) - 1 AS idx
                            FROM boxes)
            SELECT 'seed{seed}-tfb-' || lpad(CAST(row_number() OVER (ORDER BY created_at, task, prediction_id,
                       target) AS VARCHAR), 8, '0') AS id, prediction_id, created_at, verdict, corrected_label,
                   NULL::VARCHAR AS edited_caption, task, target
            FROM (SELECT id AS prediction_id, created_at, verdict, NULL::VARCHAR AS corrected_label, 'detect' AS task,
                         NULL::VARCHAR AS target
                  FROM thumbs WHERE detect
                  UNION ALL
                  SELECT id, created_at + INTERVAL 1 SECOND, verdict, NULL, 'zero_shot', NULL FROM thumbs WHERE zero_shot
                  UNION ALL  -- a marked box: relabelled (should_be), or not an object (NULL)
                  SELECT t.id, t.created_at + INTERVAL 2 SECOND, 'down', r.should_be, 'detect',
                         to_json({{'box': r.box, 'index': r.idx, 'label': r.label, 'score': r.score}})::VARCHAR
                  FROM ranked r JOIN thumbs t ON t.owner = r.owner WHERE r.marked)
            ORDER BY id""").to_arrow_table()
    used = [(v, m, r, created[np.argmax(mask)]) for v, (m, r), mask in
            ((detector, DETECTOR, detect), (zs_model, ZERO_SHOT, zero_shot)) if mask.any()]
    versions = pa.table({
        "version": pa.array([u[0] for u in used], pa.string()), "model": pa.array([u[1] for u in used], pa.string()),
        "revision": pa.array([u[2] for u in used], pa.string()),
        "first_seen": pa.array([u[3] for u in used], pa.timestamp("us")),
    })
    return outputs, versions, feedback


def seed(db: str, rows: int, seed: int = 0, end: datetime | None = None, days: float = 30.0) -> tuple[int, int]:
    """Write the synthetic rows into the log at `db`; returns (predictions, feedback) added."""
    tables = synthetic_tables(rows, seed=seed, end=end, days=days)
    counted = ("predictions", "feedback")
    with eventlog.writer(db) as con:
        before = [con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in counted]
        con.execute("BEGIN")
        try:
            for name, table in tables.items():  # requests first: outputs and feedback go in only for known ones
                eventlog.insert_rows(con, name, table)
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
        after = [con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in counted]
    return after[0] - before[0], after[1] - before[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.seed", description=__doc__.splitlines()[0])
    settings.add_arguments(parser, names=("db",))
    parser.add_argument("--rows", type=int, default=10_000, help="how many predictions to add (default 10000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--days", type=float, default=30.0, help="span of time the rows cover (default 30)")
    parser.add_argument("--end", type=datetime.fromisoformat, default=None,
                        help="UTC end of that span, ISO format (default: this hour)")
    args = parser.parse_args(argv)
    config = settings.resolve(args)
    if args.rows < 0:
        parser.error("--rows must be 0 or more")
    started = time.perf_counter()
    try:
        added = seed(config.db, args.rows, seed=args.seed, end=args.end, days=args.days)
    except eventlog.LogError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"added {added[0]} synthetic predictions and {added[1]} feedback rows to {config.db} "
          f"in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
