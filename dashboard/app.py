"""Analytics over the live prediction log: `streamlit run dashboard/app.py` (reads IMAGEREC_DB like the demo)."""

from __future__ import annotations

import hashlib
import hmac
import math
import sys
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Mapping

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `streamlit run dashboard/app.py` puts dashboard/, not the repo root, on the path
    sys.path.insert(0, str(ROOT))

import duckdb  # noqa: E402
import pandas as pd  # noqa: E402
import streamlit as st  # noqa: E402

from dashboard import charts, export, logfile, metrics, model_charts, models, queries, stats  # noqa: E402
from pipelines import access, settings
from pipelines.log import eventlog  # noqa: E402

CONFIG = settings.from_env()  # the one place the dashboard reads the environment
REFRESH = CONFIG.refresh_seconds if CONFIG.refresh_seconds > 0 else None
CACHE = dict(ttl=REFRESH, max_entries=128, show_spinner=False)

PERIODS = {"Last 24 hours": timedelta(days=1), "Last 7 days": timedelta(days=7), "Last 30 days": timedelta(days=30),
           "All time": None, "Custom range": None}
VERDICT_NAMES = {"up": "👍 thumbs up", "down": "👎 thumbs down", queries.VERDICT_NONE: "no verdict"}
CHART_CONFIG = {"displaylogo": False}


# -- cached reads: keyed on the log's size and mtime, so a committed write is seen on the next run ----

@st.cache_data(**CACHE)
def cached_state(_session: logfile.Session, path: str, signature: tuple) -> logfile.LogState:
    return logfile.check(_session)


@st.cache_data(**CACHE)
def cached_context(_session: logfile.Session, path: str, signature: tuple) -> queries.Context:
    return queries.context(_session.con)


@st.cache_data(**CACHE)
def cached_page(_session: logfile.Session, path: str, signature: tuple, page: str, filters: queries.Filters,
                interval: str) -> dict:
    return queries.PAGES[page](_session.con, filters, interval)


# -- access --------------------------------------------------------------------------------------------

def expected_password() -> str:
    """The password from settings (IMAGEREC_DASHBOARD_PASSWORD), else from Streamlit secrets; empty = open."""
    if CONFIG.dashboard_password:
        return CONFIG.dashboard_password
    try:
        return str(st.secrets.get("dashboard_password") or "")
    except FileNotFoundError:  # no secrets.toml at all
        return ""


def login_client() -> str:
    """Who is guessing, for the login backoff: the connection's address, read as the demo reads it."""
    address, headers = st.context.ip_address, st.context.headers
    peer = address if isinstance(address, str) and address else "127.0.0.1"  # None means a loopback connection
    return access.client_identity(headers if isinstance(headers, Mapping) else {}, peer, CONFIG) or peer


def authorised() -> bool:
    """Ask for the password once per session when one is set; back off after wrong ones."""
    expected = expected_password()
    if not expected:
        return True
    # Remember a digest, not the password, so a changed password asks again.
    token = hashlib.sha256(expected.encode()).hexdigest()
    if st.session_state.get("authorised") == token:
        return True
    st.title("imagerec dashboard")
    with st.form("login"):
        given = st.text_input("Password", type="password")
        submitted = st.form_submit_button("Sign in", type="primary")
    if submitted:
        # process-wide, so a new browser session (or a script opening many) does not start with a clean slate
        throttle = access.login_throttle("dashboard")
        client = login_client()
        wait = throttle.wait(client)
        if wait > 0:  # locked out: the guess is not even compared
            st.error(f"Too many wrong passwords. Try again in {math.ceil(wait)} s.")
            return False
        if hmac.compare_digest(given.encode(), expected.encode()):
            throttle.succeeded(client)
            st.session_state["authorised"] = token
            st.rerun()
        throttle.failed(client)
        wait = throttle.wait(client)
        st.error(f"Wrong password. Try again in {math.ceil(wait)} s." if wait > 0 else "Wrong password.")
    return False


# -- sidebar -------------------------------------------------------------------------------------------

def _ceil_hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)


def window(period: str, ctx: queries.Context, days: tuple[date, ...]) -> tuple[datetime | None, datetime | None]:
    """The [start, end) of a period; presets end at the hour after the newest logged prediction."""
    if period == "All time":
        return None, None
    if period == "Custom range":
        first = days[0] if days else ctx.oldest.date()
        last = days[-1] if len(days) > 1 else first
        return datetime.combine(first, time()), datetime.combine(last + timedelta(days=1), time())
    end = _ceil_hour(ctx.newest)
    return end - PERIODS[period], end


def sidebar(ctx: queries.Context) -> tuple[queries.Filters, str, str]:
    """The filters, which apply to every chart; returns them, the interval and a name for the window."""
    with st.sidebar:
        st.header("Filters")
        period = st.selectbox("Date range (UTC)", list(PERIODS), index=1, key="period")
        days: tuple[date, ...] = ()
        if period == "Custom range":
            oldest, newest = ctx.oldest.date(), ctx.newest.date()
            picked = st.date_input("From – to", value=(max(oldest, newest - timedelta(days=6)), newest),
                                   min_value=oldest, max_value=newest, key="days")
            days = tuple(picked) if isinstance(picked, (tuple, list)) else (picked,)
        # One "model version" filter per task in the log: requests whose output for that task came from a chosen version.
        versions = []
        for task, options in ctx.versions:
            chosen = st.multiselect(f"Model version: {task}", options, key=f"versions_{task}",
                                    placeholder="All versions", format_func=ctx.version_label)
            if chosen:
                versions.append((task, tuple(chosen)))
        labels = st.multiselect("Label (top-1)", ctx.labels, key="labels", placeholder="All labels")
        verdicts = st.multiselect("Verdict", list(VERDICT_NAMES), key="verdicts", placeholder="Any verdict",
                                  format_func=VERDICT_NAMES.get)
        sources = st.multiselect("Source", ctx.sources, key="sources", placeholder="All sources",
                                 format_func=lambda s: s or "(none)")
        search = st.text_input("Caption contains", key="search")
        interval = st.selectbox("Interval", ["auto", *queries.INTERVALS], key="interval")
        start, end = window(period, ctx, days)
        filters = queries.Filters(start=start, end=end, versions=tuple(versions), labels=tuple(labels),
                                  verdicts=tuple(verdicts), sources=tuple(sources), search=search.strip())
        if interval == "auto":
            interval = queries.pick_interval(start or ctx.oldest, end or _ceil_hour(ctx.newest))
        if start is None:
            name = "all time"
            st.caption("All time has no previous period to compare with.")
        else:
            span = (end - start).days
            name = period.lower() if period != "Custom range" else f"{span} day{'s' if span != 1 else ''}"
            st.caption(f"{start:%Y-%m-%d %H:%M} – {end:%Y-%m-%d %H:%M} UTC, compared with the "
                       f"{name.removeprefix('last ')} before. Presets end at the newest logged prediction.")
    return filters, interval, name


def sidebar_footer() -> None:
    with st.sidebar:
        st.divider()
        every = f"every {REFRESH:g} s" if REFRESH else "off (IMAGEREC_REFRESH_SECONDS=0)"
        st.caption(f"Log: `{CONFIG.db}`  \nAuto refresh: {every}")


# -- pages ---------------------------------------------------------------------------------------------

def plot(fig) -> None:
    st.plotly_chart(fig, config=CHART_CONFIG)


def show_overview(data: dict, window_name: str) -> None:
    cards = metrics.overview_cards(data["summary"])
    compare = "" if window_name == "all time" else f"vs previous {window_name.removeprefix('last ')}"
    for row in (cards[:4], cards[4:]):
        for column, card in zip(st.columns(4), row):
            with column:
                color = "off" if not card.settled else "inverse" if card.inverse else "normal"
                st.metric(card.label, card.value, card.delta, delta_color=color,
                          help=card.help, border=True, delta_description=compare if card.delta is not None else None)
                if card.note:
                    st.caption(card.note)
    plot(charts.activity(data["trend"]))


def _ci(rate, low, high) -> str:
    return "–" if pd.isna(rate) else f"{rate:.1%} ({low:.1%}–{high:.1%})"


def show_accuracy(data: dict) -> None:
    st.caption("Latest verdict per prediction. Thumbs-up rate = up / (up + down), over every verdict. Top-1 and top-5 "
               "accuracy count only the verdicts that tell the true label: a thumbs up (the top-1 label) or a thumbs "
               "down with a corrected label; top-5 = the true label among the 5 labels shown. A thumbs down without a "
               "label counts in the thumbs-up rate alone. Bands are Wilson 95% intervals; the bars are the verdicts "
               "behind each point, hatched where the window or the log covers the period only in part.")
    table = data["by_version"]
    if not table.empty:
        st.dataframe(
            table.assign(**{m: [_ci(r, lo, hi) for r, lo, hi in zip(table[m], table[f"{m}_low"], table[f"{m}_high"])]
                            for m in ("up_rate", "top1", "top5")})
            [["version", "n_verdict", "up_rate", "n_known", "top1", "top5"]],
            hide_index=True,
            column_config={"version": "Model version",
                           "n_verdict": st.column_config.NumberColumn("Verdicts", format="localized"),
                           "up_rate": "Thumbs-up rate (95% CI)",
                           "n_known": st.column_config.NumberColumn("With a true label", format="localized"),
                           "top1": "Top-1 accuracy (95% CI)", "top5": "Top-5 accuracy (95% CI)"})
    plot(charts.rate_over_time(data["over_time"], "up_rate"))
    left, right = st.columns(2)
    with left:
        plot(charts.rate_over_time(data["over_time"], "top1"))
    with right:
        plot(charts.rate_over_time(data["over_time"], "top5"))
    plot(model_charts.error_rate_by_class(data["classes"]))


NO_EVALUATION = ("{name}: no offline evaluation recorded (train it with `python -m pipelines.train` and register it "
                 "with `python -m pipelines.promote`).")


def _pct(value) -> str:
    return "–" if value is None or pd.isna(value) else f"{value:.1%}"


def show_version(row) -> None:
    """One version's offline evaluation: headline numbers, per-class F1, confusion matrix, loss curves."""
    st.markdown(f"**{row['name']}**" + (f"  \nfrom `{row['base']}`" if isinstance(row["base"], str) else ""))
    if not isinstance(row["evaluation"], str):
        st.caption(NO_EVALUATION.format(name=row["name"]))
        return
    cols = st.columns(3)
    cols[0].metric("Accuracy", _pct(row["accuracy"]), border=True)
    cols[1].metric("Top-5 accuracy", _pct(row["top5_accuracy"]), border=True)
    cols[2].metric("ECE", _pct(row["ece"]), border=True,
                   help="Expected calibration error on the held-out images: the gap between confidence and accuracy.")
    if row["count"] is not None and not pd.isna(row["count"]):
        st.caption(f"On {int(row['count']):,} held-out images.")
    st.dataframe(models.per_class(row["evaluation"]), hide_index=True, column_config={
        "label": "Label", "precision": st.column_config.NumberColumn("Precision", format="%.3f"),
        "recall": st.column_config.NumberColumn("Recall", format="%.3f"),
        "f1": st.column_config.NumberColumn("F1", format="%.3f"), "support": "Images"})
    plot(model_charts.confusion_matrix(models.confusion(row["evaluation"])))
    if isinstance(row["history"], str):
        plot(model_charts.loss_curves(models.history(row["history"])))


def show_models(data: dict) -> None:
    table, totals = data["versions"], data["live_totals"]
    st.caption("Offline: the evaluation recorded when the version was registered (held-out images). Live: the "
               "latest verdict per prediction; top-1 and top-5 accuracy count only verdicts that tell the true label "
               "(a thumbs up, or a thumbs down with a corrected label; top-5 = the true label among the 5 shown).")
    if table.empty:
        st.info("No classify versions in the log yet.")
        return
    live = totals.set_index("version_id")
    summary = table[["name", "first_seen", "accuracy", "top5_accuracy", "ece"]].assign(
        live_top1=[_pct(live.at[v, "top1"]) if v in live.index else "–" for v in table["version"]],
        n_known=[int(live.at[v, "n_known"]) if v in live.index else 0 for v in table["version"]],
        live_up=[_pct(live.at[v, "up_rate"]) if v in live.index else "–" for v in table["version"]])
    st.dataframe(summary, hide_index=True, column_config={
        "name": "Version", "first_seen": st.column_config.DatetimeColumn("First seen (UTC)", format="YYYY-MM-DD HH:mm"),
        "accuracy": st.column_config.NumberColumn("Offline accuracy", format="percent"),
        "top5_accuracy": st.column_config.NumberColumn("Offline top-5", format="percent"),
        "ece": st.column_config.NumberColumn("Offline ECE", format="percent"),
        "live_top1": "Live top-1", "n_known": "Verdicts with a true label", "live_up": "Live thumbs-up rate"})
    # Options are the version ids: two versions may read the same on screen (a folder retrained in place).
    ids, names = list(table["version"]), dict(zip(table["version"], table["name"]))
    chosen = st.multiselect("Compare versions", ids, default=ids[-2:], max_selections=2, key="compare_versions",
                            format_func=names.get)
    picked = table[table["version"].isin(chosen)]
    plot(model_charts.compare(picked, totals))
    for column, (_, row) in zip(st.columns(max(len(picked), 1)), picked.iterrows()):
        with column:
            show_version(row)
    left, right = st.columns(2)
    with left:
        plot(model_charts.live_accuracy(data["live"], "top1"))
    with right:
        plot(model_charts.live_accuracy(data["live"], "up_rate"))
    show_review(data)


def show_review(data: dict) -> None:
    st.subheader("Review queue", divider="orange")
    st.caption("Predictions most worth a look: feedback that disagrees with the prediction first, then those without "
               "a verdict, least confident first. Right: the classes people most often correct.")
    left, right = st.columns([3, 2])
    with left:
        st.dataframe(data["review"], hide_index=True, column_config={
            "version": "Model version", "reason": "Why", "version_id": None,
            "created_at": st.column_config.DatetimeColumn("When (UTC)", format="YYYY-MM-DD HH:mm"),
            "top1_label": "Top-1 label", "top1_score": st.column_config.NumberColumn("Score", format="%.3f"),
            "verdict": "Verdict", "corrected_label": "Corrected label", "id": "Prediction id"})
    with right:
        plot(model_charts.error_rate_by_class(data["worst_classes"]))


def show_classes(data: dict) -> None:
    left, right = st.columns(2)
    with left:
        plot(charts.top_labels(data["top_labels"]))
    with right:
        plot(charts.confused_pairs(data["pairs"]))
    plot(charts.confusion_heatmap(data["pairs"]))


def show_performance(data: dict) -> None:
    st.caption("Each task's time comes from its output in the log (any task: classify, caption, explain, ...). "
               "Cache hits skip the models, so they are left out of the tasks' percentiles (they count in intake and "
               "total). Lines are per classify version.")
    plot(charts.latency_over_time(data["over_time"]))
    plot(charts.requests_over_time(data["over_time"]))


def show_confidence(data: dict) -> None:
    table = data["reliability"]
    ece = stats.calibration_error(table)
    if table.empty:
        st.caption("No verdicts yet, so there is nothing to check the confidences against.")
    else:
        st.caption(f"Points on the dotted diagonal mean a score of x is thumbs-up x of the time. The expected "
                   f"calibration error (ECE) is {ece:.1%}: the count-weighted gap between confidence and the observed "
                   "thumbs-up rate; whiskers are Wilson 95% intervals.")
        warning = stats.calibration_warning(table)
        if warning:
            st.warning(warning)
    left, right = st.columns(2)
    with left:
        plot(charts.confidence_histogram(data["bins"]))
    with right:
        plot(charts.reliability_diagram(table))


def show_captions(data: dict) -> None:
    summary = data["summary"].iloc[0]
    n, n_edited = int(summary["n"]), int(summary["n_edited"])
    cols = st.columns(3)
    cols[0].metric("Edited captions", f"{n_edited:,}", border=True)
    if n_edited:
        cols[0].caption(f"{int(summary['n_unchanged']):,} of them identical to the original")
    cols[1].metric("Caption-edit rate", f"{n_edited / n:.1%}" if n else "–", border=True)
    cols[2].metric("Median change", "–" if not n_edited else f"{summary['median_change']:.0%}", border=True,
                   help="Edit distance over the longer caption's length: 0% unchanged, 100% rewritten.")
    left, right = st.columns(2)
    with left:
        plot(charts.edit_size_histogram(data["change_hist"]))
    with right:
        plot(charts.most_edited_labels(data["labels"]))
    st.subheader("Original vs edited", divider="orange")
    st.dataframe(data["examples"], hide_index=True, column_config={
        "created_at": st.column_config.DatetimeColumn("When (UTC)", format="YYYY-MM-DD HH:mm"),
        "label": "Top-1 label", "caption": "Original caption", "edited_caption": "Edited caption",
        "change": st.column_config.ProgressColumn("Changed", min_value=0.0, max_value=1.0, format="percent")})


NO_DETECT = ("No detect outputs in the log yet: run the detect task (objects with boxes) on the demo page or through "
             "/predict to see objects per class, boxes per photo and box scores here.")
NO_ZERO_SHOT = ("No zero_shot outputs in the log yet: run the zero_shot task (custom labels) on the demo page or "
                "through /predict to see the most used custom labels and their scores here.")


NO_TASK_FEEDBACK = ("No feedback on single answers yet: the thumbs under each answer on the demo page (or /feedback "
                    "with task, and box for one detected object) show here.")


def show_objects(data: dict, tasks: tuple[str, ...]) -> None:
    summary = data["summary"].iloc[0]
    st.subheader("Objects (detect)", divider="orange")
    if "detect" not in tasks:
        st.info(NO_DETECT)
    else:
        n, boxes = int(summary["n_detect"]), int(summary["n_boxes"])
        st.caption(f"{n:,} photos through detect, {boxes:,} boxes found"
                   + (f" ({boxes / n:.2f} per photo)." if n else "."))
        plot(charts.objects_over_time(data["classes"]))
        left, right = st.columns(2)
        with left:
            plot(charts.boxes_per_photo(data["per_photo"]))
        with right:
            plot(charts.score_histogram(data["box_scores"], "Box scores", "boxes", "box score"))
    st.subheader("Custom labels (zero_shot)", divider="orange")
    if "zero_shot" not in tasks:
        st.info(NO_ZERO_SHOT)
        return
    st.caption(f"{int(summary['n_zero_shot']):,} photos scored against custom labels. A label counts once per "
               "request that asked it; \"top label\" is how often it scored highest.")
    left, right = st.columns(2)
    with left:
        plot(charts.custom_labels(data["custom_labels"]))
    with right:
        plot(charts.score_histogram(data["top_scores"], "Zero-shot top scores", "requests", "top score"))
    sets = data["label_sets"]
    st.dataframe(sets.assign(label_set=[" · ".join(s) for s in sets["label_set"]]), hide_index=True,
                 column_config={"label_set": "Label set (most common first)",
                                "n_requests": st.column_config.NumberColumn("Requests", format="localized")})


def show_task_feedback(data: dict) -> None:
    st.subheader("Feedback on each answer", divider="orange")
    verdicts, boxes = data["task_verdicts"], data["wrong_boxes"]
    if verdicts.empty and boxes.empty:
        st.info(NO_TASK_FEEDBACK)
        return
    left, right = st.columns(2)
    with left:
        st.caption("Outputs with a thumbs up or down, by task (the latest verdict on each); classify's are the "
                   "labels' verdicts.")
        st.dataframe(verdicts, hide_index=True, column_config={
            "task": "Task", "n_verdict": st.column_config.NumberColumn("Verdicts", format="localized"),
            "n_up": st.column_config.NumberColumn("👍", format="localized"),
            "up_rate": st.column_config.NumberColumn("Right", format="percent")})
    with right:
        st.caption("Boxes marked wrong: the label the detector gave and what visitors said it is.")
        st.dataframe(boxes, hide_index=True, column_config={
            "label": "Detector's label", "should_be": "Should be",
            "n_boxes": st.column_config.NumberColumn("Boxes", format="localized")})


def _builder(path: str, filters: queries.Filters, fmt: str):
    """A callable for st.download_button: runs the export query only when someone clicks."""
    def build() -> bytes:
        with eventlog.reader(path) as con:
            table = queries.export(con, filters, fmt)
        return export.to_csv(table) if fmt == "csv" else export.to_parquet(table)
    return build


def show_recent(data: dict, filters: queries.Filters) -> None:
    total = int(data["count"]["n"].iloc[0])
    shown = len(data["rows"])
    st.caption(f"The {shown:,} newest of {total:,} predictions matching the filters.")
    st.dataframe(data["rows"], hide_index=True, height=480, column_config={
        "created_at": st.column_config.DatetimeColumn("When (UTC)", format="YYYY-MM-DD HH:mm:ss"),
        "version": "Model version", "top1_label": "Top-1 label",
        "top1_score": st.column_config.NumberColumn("Score", format="%.3f"), "verdict": "Verdict",
        "corrected_label": "Corrected label", "caption": "Caption", "edited_caption": "Edited caption",
        "total_ms": st.column_config.NumberColumn("Total ms", format="%.0f"), "source": "Source",
        "id": "Prediction id"})
    exported = min(total, queries.EXPORT_LIMIT)
    left, right, _ = st.columns([1, 1, 3])
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    left.download_button("Download CSV", _builder(CONFIG.db, filters, "csv"),
                         file_name=f"imagerec-predictions-{stamp}.csv", mime="text/csv", on_click="ignore",
                         icon=":material/download:", disabled=not total, key="csv")
    right.download_button("Download Parquet", _builder(CONFIG.db, filters, "parquet"),
                          file_name=f"imagerec-predictions-{stamp}.parquet", mime="application/vnd.apache.parquet",
                          on_click="ignore", icon=":material/download:", disabled=not total, key="parquet")
    if total > queries.EXPORT_LIMIT:
        st.caption(f"Downloads hold the newest {queries.EXPORT_LIMIT:,} of the {total:,} matching rows, with every "
                   "column; narrow the filters (date range, version, label) to export older ones.")
    else:
        st.caption(f"Downloads hold all {exported:,} matching rows with every column.")


def show_batch_runs(runs) -> None:
    """The newest batch jobs, when there are any."""
    if runs.empty:
        return
    st.subheader("Batch runs", divider="orange")
    st.dataframe(runs, hide_index=True, column_config={
        "created_at": st.column_config.DatetimeColumn("Started (UTC)", format="YYYY-MM-DD HH:mm:ss"),
        "input": "Input", "tasks": "Tasks", "images": "Images", "done": "Done", "refused": "Refused",
        "skipped": "Skipped", "errors": "Errors",
        "images_per_s": st.column_config.NumberColumn("Images/s", format="%.2f")})


# -- layout --------------------------------------------------------------------------------------------

@st.fragment(run_every=REFRESH)
def live() -> None:
    """Everything that follows the log: re-run on its own every REFRESH seconds."""
    path = CONFIG.db
    signature = logfile.signature(path)
    try:
        with logfile.Session(path) as session:
            state = cached_state(session, path, signature)
            if not state.ok:
                (st.info if state.blank else st.error)(state.message)
                return
            ctx = cached_context(session, path, signature)
            if not ctx.predictions:  # emptied since the check, e.g. by a retention purge
                st.info(logfile.EMPTY)
                return
            filters, interval, window_name = sidebar(ctx)
            st.caption(f"{ctx.predictions:,} predictions and {ctx.feedback:,} feedback events in the log · newest "
                       f"{ctx.newest:%Y-%m-%d %H:%M:%S} UTC · read at {eventlog.utcnow():%H:%M:%S} UTC")
            names = list(queries.PAGES)
            tabs = st.tabs(names, key="tab", on_change="rerun")
            # Only the open tab's queries run; the others render when picked.
            page = next((name for name, tab in zip(names, tabs) if tab.open), names[0])
            data = cached_page(session, path, signature, page, filters, interval)
    except (duckdb.Error, eventlog.LogError) as exc:
        if not logfile.is_busy(exc):
            raise
        again = f"trying again in {REFRESH:g} s" if REFRESH else "reload the page to try again"
        st.warning(f"The log is busy (the demo is writing); {again}.")
        return
    with tabs[names.index(page)]:
        if page == "Overview":
            show_overview(data, window_name)
        elif page == "Accuracy":
            show_accuracy(data)
        elif page == "Models":
            show_models(data)
        elif page == "Classes":
            show_classes(data)
        elif page == "Performance":
            show_performance(data)
        elif page == "Confidence":
            show_confidence(data)
        elif page == "Captions":
            show_captions(data)
        elif page == queries.OBJECTS_TAB:
            show_objects(data, tuple(task for task, _ in ctx.versions))
            show_task_feedback(data)
        else:
            show_recent(data, filters)
            show_batch_runs(data["batch_runs"])


def main() -> None:
    st.set_page_config(page_title="imagerec dashboard", page_icon="📊", layout="wide")
    if not authorised():
        return
    st.sidebar.title("imagerec")  # the fragment writes into the sidebar, which needs a write from the full run
    st.title("Predictions dashboard")
    live()
    sidebar_footer()


main()
