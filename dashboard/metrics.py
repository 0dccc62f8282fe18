"""The overview's headline cards, computed from the overview summary (no Streamlit here)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from dashboard import stats


@dataclass(frozen=True)
class Card:
    """One st.metric: its label, value, change against the previous period, and a note under it."""

    label: str
    value: str
    delta: str | int | None = None
    inverse: bool = False  # a rise is bad (latency)
    settled: bool = True  # False: the change lies inside the current 95% interval, so it is shown uncoloured
    help: str = ""
    note: str = ""


def _num(value) -> float:
    return float("nan") if value is None or pd.isna(value) else float(value)


def _relative(cur: float, prev: float) -> str | int | None:
    if math.isnan(prev) or prev == 0 or math.isnan(cur):
        return None
    change = cur / prev - 1
    return 0 if round(change, 3) == 0 else f"{change:+.1%}"


def _points(cur: float, prev: float) -> str | int | None:
    if math.isnan(cur) or math.isnan(prev):
        return None
    diff = (cur - prev) * 100
    return 0 if round(diff, 1) == 0 else f"{diff:+.1f} pp"


def _ms(cur: float, prev: float) -> str | int | None:
    if math.isnan(cur) or math.isnan(prev):
        return None
    return 0 if round(cur - prev) == 0 else f"{cur - prev:+,.0f} ms"


def _beyond_noise(k, n, previous: float) -> bool:
    """Whether the previous rate lies outside the current one's Wilson 95% interval (k of n)."""
    if math.isnan(previous) or not int(n):
        return False
    low, high = stats.wilson(k, n)
    return not float(low) <= previous <= float(high)


def _pct(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.1%}"


def overview_cards(summary: pd.DataFrame) -> list[Card]:
    """Predictions, images, feedback, thumbs-up and caption-edit rates and latency, each with its change."""
    rows = summary.set_index("period")
    cur, prev = rows.loc["current"], rows.loc["previous"]
    has_prev = int(prev["n"]) > 0

    def pair(column):
        return _num(cur[column]), (_num(prev[column]) if has_prev else float("nan"))

    def share(k, n):
        return (float(stats.rate(cur[k], cur[n])),
                float(stats.rate(prev[k], prev[n])) if has_prev else float("nan"))

    n, n_prev = pair("n")
    images, images_prev = pair("images")
    feedback, feedback_prev = share("n_verdict", "n")
    up, up_prev = share("n_up", "n_verdict")
    edits, edits_prev = share("n_edited", "n")
    p50, p50_prev = pair("p50_ms")
    p95, p95_prev = pair("p95_ms")
    low, high = stats.wilson(cur["n_up"], cur["n_verdict"])
    ci = f"95% CI {_pct(float(low))}–{_pct(float(high))}" if int(cur["n_verdict"]) else "no verdicts yet"
    ms = "–" if math.isnan(p50) else f"{p50:,.0f} ms"
    ms95 = "–" if math.isnan(p95) else f"{p95:,.0f} ms"
    return [
        Card("Predictions", f"{int(cur['n']):,}", _relative(n, n_prev), help="Predictions logged in the window."),
        Card("Distinct images", f"{int(cur['images']):,}", _relative(images, images_prev),
             help="Different images (by SHA-256) among those predictions."),
        Card("Feedback rate", _pct(feedback), _points(feedback, feedback_prev),
             settled=_beyond_noise(cur["n_verdict"], cur["n"], feedback_prev),
             help="Share of predictions that got a thumbs up or down.", note=f"{int(cur['n_verdict']):,} verdicts"),
        Card("Thumbs-up rate", _pct(up), _points(up, up_prev),
             settled=_beyond_noise(cur["n_up"], cur["n_verdict"], up_prev),
             help="Thumbs up / (up + down), latest verdict per prediction; Wilson 95% interval. The change is "
                  "coloured only when the previous rate lies outside that interval.",
             note=f"{ci} · n = {int(cur['n_verdict']):,}"),
        Card("Caption-edit rate", _pct(edits), _points(edits, edits_prev),
             settled=_beyond_noise(cur["n_edited"], cur["n"], edits_prev),
             help="Share of predictions whose caption someone edited.", note=f"{int(cur['n_edited']):,} edited"),
        Card("Latency p50", ms, _ms(p50, p50_prev), inverse=True, help="Median total request time."),
        Card("Latency p95", ms95, _ms(p95, p95_prev), inverse=True, help="95th percentile of total request time."),
    ]
