"""Each chart function alone: a small hand-made DataFrame in, a plotly figure with the right data out."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from dashboard import charts, queries, stats

BUCKETS = pd.to_datetime(["2025-05-29", "2025-05-30", "2025-05-31"])


def traces(fig: go.Figure, kind: str | None = None) -> list:
    return [t for t in fig.data if kind is None or t.type == kind]


def named(fig: go.Figure, name: str):
    found = [t for t in fig.data if t.name == name]
    assert found, f"no trace named {name!r} in {[t.name for t in fig.data]}"
    return found[0]


def is_empty_state(fig: go.Figure) -> bool:
    return not fig.data and any("No " in a.text for a in fig.layout.annotations)


def rates() -> pd.DataFrame:
    df = pd.DataFrame({
        "version": ["vit@old", "vit@old", "vit@3f49326", "vit@3f49326"],
        "bucket": [BUCKETS[0], BUCKETS[1], BUCKETS[1], BUCKETS[2]],
        "n_verdict": [10, 20, 40, 0], "n_up": [5, 15, 30, 0], "n_known": [8, 17, 36, 0], "n_top1": [5, 16, 30, 0],
        "n_top5": [7, 17, 33, 0], "n_corrected": [3, 2, 6, 0],
    })
    return queries.add_accuracy(df)


def test_activity_shows_counts_and_rate_with_band():
    trend = stats.add_rate(pd.DataFrame({"bucket": BUCKETS, "n": [100, 50, 0], "n_verdict": [30, 10, 0],
                                         "n_up": [20, 5, 0]}), "up_rate", "n_up", "n_verdict")
    fig = charts.activity(trend)
    assert list(named(fig, "predictions").y) == [100, 50, 0]
    rate = named(fig, "thumbs-up rate")
    assert rate.y[0] == pytest.approx(20 / 30) and np.isnan(rate.y[2])
    band = [t for t in fig.data if t.type == "scatter" and t.fill == "tonexty"]
    assert len(band) == 1 and band[0].y[0] == pytest.approx(trend["up_rate_low"][0])
    assert [str(v) for v in rate.customdata[0][2:]] == ["20", "30"]  # the counts the hover shows
    assert is_empty_state(charts.activity(trend.iloc[:0]))


@pytest.mark.parametrize("metric", ["up_rate", "top1", "top5"])
def test_rate_over_time_has_a_line_band_and_counts_per_version(metric):
    df = rates()
    fig = charts.rate_over_time(df, metric)
    lines = [t for t in traces(fig, "scatter") if t.mode == "lines+markers"]
    assert [t.name for t in lines] == ["vit@old", "vit@3f49326"]
    assert list(lines[0].y) == pytest.approx(list(df[metric][:2]))
    assert len(lines[1].x) == 1  # a bucket with no verdicts is not drawn as a 0% point
    bars = traces(fig, "bar")
    trials = charts.RATE_COUNTS[metric][1]
    assert sorted(int(v) for b in bars for v in b.y) == sorted(int(v) for v in df[trials] if v)
    assert sum(t.type == "scatter" and t.fill == "tonexty" for t in fig.data) == 2
    assert charts.RATE_TITLES[metric] in fig.layout.title.text
    assert is_empty_state(charts.rate_over_time(df.assign(**{trials: 0}), metric))


def test_top_labels_most_common_on_top():
    fig = charts.top_labels(pd.DataFrame({"label": ["tabby", "pug", "cup"], "n": [30, 20, 10]}))
    bar = traces(fig, "bar")[0]
    assert list(bar.y) == ["cup", "pug", "tabby"] and list(bar.x) == [10, 20, 30]  # plotly draws bottom-up
    assert is_empty_state(charts.top_labels(pd.DataFrame({"label": [], "n": []})))


PAIRS = pd.DataFrame({"predicted": ["tabby", "tabby", "pug", "cup"], "corrected": ["tiger cat", "Egyptian cat",
                                                                                   "beagle", "mug"],
                      "n": [9, 3, 5, 1]})


def test_confusion_heatmap_puts_counts_in_the_right_cells():
    fig = charts.confusion_heatmap(PAIRS)
    heat = traces(fig, "heatmap")[0]
    z = pd.DataFrame(heat.z, index=list(heat.y), columns=list(heat.x))
    assert z.loc["tabby", "tiger cat"] == 9 and z.loc["pug", "beagle"] == 5 and z.loc["pug", "tiger cat"] == 0
    assert int(z.to_numpy().sum()) == 18
    small = charts.confusion_heatmap(PAIRS, size=1)
    assert list(traces(small, "heatmap")[0].y) == ["tabby"]
    assert is_empty_state(charts.confusion_heatmap(PAIRS.iloc[:0]))


def test_confused_pairs_names_both_labels():
    bar = traces(charts.confused_pairs(PAIRS, top=2), "bar")[0]
    assert list(bar.y) == ["pug → beagle", "tabby → tiger cat"] and list(bar.x) == [5, 9]


def performance() -> pd.DataFrame:
    df = pd.DataFrame({"version": ["a", "a", "b"], "bucket": [BUCKETS[0], BUCKETS[1], BUCKETS[1]],
                       "n": [10, 20, 5], "n_cached": [1, 0, 0]})
    for i, stage in enumerate(charts.STAGE_NAMES):
        df[f"{stage}_p50"] = [10.0 * (i + 1), 11.0 * (i + 1), 5.0]
        df[f"{stage}_p95"] = [20.0 * (i + 1), 22.0 * (i + 1), 9.0]
    return df


def test_latency_has_p50_and_p95_per_stage_and_version():
    fig = charts.latency_over_time(performance())
    assert len(fig.data) == 4 * 2 * 2  # stages x versions x (p50, p95)
    dashed = [t for t in fig.data if t.line.dash == "dash"]
    assert len(dashed) == 8 and max(max(t.y) for t in dashed) == 88.0  # total p95 of version a
    titles = [a.text for a in fig.layout.annotations]
    assert titles == list(charts.STAGE_NAMES.values())
    assert is_empty_state(charts.latency_over_time(performance().iloc[:0]))


def test_latency_shows_a_plot_for_any_task_the_log_holds():
    df = performance()
    df.insert(len(df.columns) - 2, "explain_p50", [300.0, 310.0, 200.0])
    df.insert(len(df.columns) - 2, "explain_p95", [400.0, 410.0, 250.0])
    fig = charts.latency_over_time(df)
    titles = [a.text for a in fig.layout.annotations]
    assert titles == ["Intake", "Classify (ViT)", "Caption (BLIP)", "Explain", "Total"]
    assert len(fig.data) == 5 * 2 * 2
    explain = [t for t in fig.data if "Explain" in t.hovertemplate and t.line.dash == "dash"]
    assert sorted(max(t.y) for t in explain) == [250.0, 410.0]


def test_requests_are_stacked_by_version():
    fig = charts.requests_over_time(performance())
    assert [t.name for t in fig.data] == ["a", "b"] and list(fig.data[0].y) == [10, 20]
    assert fig.layout.barmode == "stack"


def confidence_bins() -> pd.DataFrame:
    low = np.arange(0, 1, 0.05)
    n = np.arange(20) + 10
    n_verdict = n // 2
    n_up = (n_verdict * low).astype(int)
    return pd.DataFrame({"bin_low": low, "bin_high": low + 0.05, "n": n, "n_verdict": n_verdict, "n_up": n_up,
                         "n_down": n_verdict - n_up, "score_sum_verdict": n_verdict * (low + 0.025)})


def test_confidence_histogram_stacks_verdicts_to_the_total():
    bins = confidence_bins()
    fig = charts.confidence_histogram(bins)
    total = sum(np.asarray(t.y) for t in fig.data)
    assert list(total) == list(bins["n"])
    assert [t.name for t in fig.data] == ["thumbs up", "thumbs down", "no verdict"]


def test_reliability_diagram_plots_observed_rate_against_confidence():
    table = stats.reliability(confidence_bins())
    assert len(table) == 10 and table["n_verdict"].sum() == confidence_bins()["n_verdict"].sum()
    fig = charts.reliability_diagram(table)
    observed = named(fig, "observed")
    assert list(observed.x) == pytest.approx(list(table["confidence"]))
    assert list(observed.y) == pytest.approx(list(table["up_rate"]))
    assert np.all(np.asarray(observed.error_y.array) >= 0)
    diagonal = named(fig, "perfectly calibrated")
    assert list(diagonal.x) == [0, 1] == list(diagonal.y)
    assert list(traces(fig, "bar")[0].y) == list(table["n_verdict"])
    assert "ECE" in fig.layout.title.text
    assert is_empty_state(charts.reliability_diagram(table.iloc[:0]))


def test_reliability_merges_fine_bins():
    bins = pd.DataFrame({"bin_low": [0.90, 0.95], "n_verdict": [4, 6], "n_up": [3, 6],
                         "score_sum_verdict": [3.7, 5.8]})
    row = stats.reliability(bins).iloc[0]
    assert (row["bin_low"], row["n_verdict"], row["n_up"]) == (pytest.approx(0.9), 10, 9)
    assert row["confidence"] == pytest.approx(0.95)
    assert stats.calibration_error(stats.reliability(bins)) == pytest.approx(abs(0.95 - 0.9))


def test_caption_charts():
    hist = pd.DataFrame({"bin_low": [0.0, 0.3], "n": [7, 2]})
    assert list(traces(charts.edit_size_histogram(hist), "bar")[0].y) == [7, 2]
    labels = stats.add_rate(pd.DataFrame({"label": ["tabby", "pug"], "n_edited": [5, 2], "n": [50, 4],
                                          "mean_change": [0.2, 0.4]}), "edit_rate", "n_edited", "n")
    bar = traces(charts.most_edited_labels(labels), "bar")[0]
    assert list(bar.y) == ["pug", "tabby"] and list(bar.text) == ["50% of 4", "10% of 50"]
    assert is_empty_state(charts.edit_size_histogram(hist.iloc[:0]))


def test_every_chart_serialises_to_json():
    figures = [charts.rate_over_time(rates()), charts.confusion_heatmap(PAIRS), charts.latency_over_time(performance()),
               charts.reliability_diagram(stats.reliability(confidence_bins()))]
    for fig in figures:
        assert json.loads(fig.to_json())["data"]
