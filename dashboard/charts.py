"""Pure chart functions: each takes the small DataFrame a query returned and gives a plotly figure."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dashboard import stats

PRIMARY = "#f97316"  # the demo's orange
PALETTE = (PRIMARY, "#2563eb", "#16a34a", "#9333ea", "#dc2626", "#0891b2", "#ca8a04", "#4b5563")
UP, DOWN, NONE = "#16a34a", "#dc2626", "#9ca3af"
STAGE_NAMES = {"intake": "Intake", "classify": "Classify (ViT)", "caption": "Caption (BLIP)", "total": "Total"}


ONE_MOMENT_PAD = pd.Timedelta(hours=12)
PARTIAL_PATTERN = "/"  # bars of a period the window or the log covers only in part: hatched, not a dip


def _times(fig: go.Figure) -> set[pd.Timestamp] | None:
    """Every x of the figure's traces when all are moments in time, else None."""
    found: set[pd.Timestamp] = set()
    for trace in fig.data:
        for value in getattr(trace, "x", None) if getattr(trace, "x", None) is not None else ():
            if not isinstance(value, (datetime, np.datetime64, pd.Timestamp)):
                return None
            found.add(pd.Timestamp(value))
    return found


def _one_moment(fig: go.Figure) -> None:
    """A time axis with a single moment gets a readable span around it (plotly would zoom to a millisecond)."""
    moments = _times(fig)
    if moments is not None and len(moments) == 1:
        moment = next(iter(moments))
        fig.update_xaxes(range=[moment - ONE_MOMENT_PAD, moment + ONE_MOMENT_PAD])


def _partial_bars(df: pd.DataFrame) -> dict:
    """Bar styling that hatches the periods marked partial (a `partial` column), so they do not read as dips."""
    if "partial" not in df or not df["partial"].any():
        return {}
    return {"marker_pattern_shape": [PARTIAL_PATTERN if p else "" for p in df["partial"]]}


def _layout(fig: go.Figure, title: str, height: int = 380) -> go.Figure:
    _one_moment(fig)
    fig.update_layout(title=dict(text=title, x=0, xanchor="left"), height=height, template="plotly_white",
                      margin=dict(l=10, r=10, t=60, b=10), hovermode="closest",
                      legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1))
    return fig


def empty(title: str, message: str = "No data for these filters") -> go.Figure:
    """A blank figure that says why it is blank."""
    fig = go.Figure()
    fig.add_annotation(text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                       font=dict(size=15, color="#6b7280"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, title, height=260)


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _colors(names) -> dict[str, str]:
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(dict.fromkeys(names))}


def _pct(values) -> list[str]:
    return ["–" if pd.isna(v) else f"{v:.1%}" for v in values]


def _band(fig: go.Figure, x, low, high, color: str, name: str, row: int | None = None, col: int | None = None) -> None:
    """A shaded 95% interval between low and high, drawn under the line."""
    where = dict(row=row, col=col) if row else {}
    fig.add_trace(go.Scatter(x=x, y=high, mode="lines", line=dict(width=0), hoverinfo="skip", showlegend=False,
                             legendgroup=name), **where)
    fig.add_trace(go.Scatter(x=x, y=low, mode="lines", line=dict(width=0), fill="tonexty",
                             fillcolor=_rgba(color, 0.18), hoverinfo="skip", showlegend=False, legendgroup=name),
                  **where)


def activity(trend: pd.DataFrame) -> go.Figure:
    """Predictions per interval (bars) over the thumbs-up rate with its 95% band."""
    title = "Predictions and thumbs-up rate"
    if trend.empty:
        return empty(title)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.55, 0.45], vertical_spacing=0.08)
    _band(fig, trend["bucket"], trend["up_rate_low"], trend["up_rate_high"], UP, "up", row=1, col=1)
    fig.add_trace(go.Scatter(
        x=trend["bucket"], y=trend["up_rate"], mode="lines+markers", name="thumbs-up rate", line=dict(color=UP),
        customdata=np.stack([_pct(trend["up_rate_low"]), _pct(trend["up_rate_high"]), trend["n_up"],
                             trend["n_verdict"]], axis=-1),
        hovertemplate="%{x}<br>%{y:.1%} up (95% CI %{customdata[0]}–%{customdata[1]})"
                      "<br>%{customdata[2]} of %{customdata[3]} verdicts<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Bar(x=trend["bucket"], y=trend["n"], name="predictions", marker_color=PRIMARY,
                         **_partial_bars(trend), hovertemplate="%{x}<br>%{y:,} predictions<extra></extra>"),
                  row=2, col=1)
    fig.update_yaxes(title_text="thumbs up", tickformat=".0%", range=[0, 1], row=1, col=1)
    fig.update_yaxes(title_text="predictions", row=2, col=1)
    return _layout(fig, title, height=420)


RATE_TITLES = {"up_rate": "Thumbs-up rate", "top1": "Top-1 accuracy", "top5": "Top-5 accuracy"}
# Each measure's successes and trials: accuracy counts only verdicts that tell the true label.
RATE_COUNTS = {"up_rate": ("n_up", "n_verdict"), "top1": ("n_top1", "n_known"), "top5": ("n_top5", "n_known")}
RATE_NOTES = {"up_rate": "", "top1": " (verdicts that tell the true label)",
              "top5": " (true label among the 5 shown)"}


def rate_over_time(df: pd.DataFrame, metric: str = "up_rate") -> go.Figure:
    """A rate per interval and model version with 95% bands, over the counts behind each point."""
    hits, trials = RATE_COUNTS[metric]
    title = f"{RATE_TITLES[metric]} per model version{RATE_NOTES[metric]}"
    if df.empty or not (df[trials] > 0).any():
        return empty(title, "No verdicts that tell the true label" if trials == "n_known"
                     else "No verdicts for these filters")
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.7, 0.3], vertical_spacing=0.06)
    colors = _colors(df["version"])
    unit = "verdicts" if trials == "n_verdict" else "verdicts with a true label"
    for version, part in df.groupby("version", sort=False):
        part = part[part[trials] > 0]
        color = colors[version]
        _band(fig, part["bucket"], part[f"{metric}_low"], part[f"{metric}_high"], color, version, row=1, col=1)
        fig.add_trace(go.Scatter(
            x=part["bucket"], y=part[metric], mode="lines+markers", name=version, legendgroup=version,
            line=dict(color=color),
            customdata=np.stack([_pct(part[f"{metric}_low"]), _pct(part[f"{metric}_high"]),
                                 part[hits], part[trials]], axis=-1),
            hovertemplate=f"<b>{version}</b><br>%{{x}}<br>%{{y:.1%}} (95% CI %{{customdata[0]}}–%{{customdata[1]}})"
                          f"<br>%{{customdata[2]}} of %{{customdata[3]}} {unit}<extra></extra>"), row=1, col=1)
        fig.add_trace(go.Bar(x=part["bucket"], y=part[trials], name=version, legendgroup=version,
                             marker_color=color, showlegend=False, **_partial_bars(part),
                             hovertemplate=f"<b>{version}</b><br>%{{x}}<br>%{{y:,}} {unit}<extra></extra>"),
                      row=2, col=1)
    fig.update_layout(barmode="group")
    fig.update_yaxes(title_text=RATE_TITLES[metric].lower(), tickformat=".0%", range=[0, 1.02], row=1, col=1)
    fig.update_yaxes(title_text="verdicts", row=2, col=1)
    return _layout(fig, title, height=440)


def top_labels(df: pd.DataFrame) -> go.Figure:
    """The most predicted top-1 labels."""
    title = "Most predicted labels"
    if df.empty:
        return empty(title)
    df = df.iloc[::-1]
    fig = go.Figure(go.Bar(x=df["n"], y=df["label"], orientation="h", marker_color=PRIMARY,
                           hovertemplate="%{y}: %{x:,} predictions<extra></extra>"))
    fig.update_xaxes(title_text="predictions")
    return _layout(fig, title, height=max(300, 24 * len(df) + 100))


def confusion_heatmap(pairs: pd.DataFrame, size: int = 15) -> go.Figure:
    """Predicted label against the label people corrected it to, on thumbs down."""
    title = "Predicted vs corrected label (thumbs down)"
    if pairs.empty:
        return empty(title, "No corrected labels for these filters")
    predicted = pairs.groupby("predicted")["n"].sum().nlargest(size).index
    corrected = pairs.groupby("corrected")["n"].sum().nlargest(size).index
    grid = (pairs[pairs["predicted"].isin(predicted) & pairs["corrected"].isin(corrected)]
            .pivot_table(index="predicted", columns="corrected", values="n", aggfunc="sum", fill_value=0)
            .reindex(index=predicted[::-1], columns=corrected, fill_value=0))
    fig = go.Figure(go.Heatmap(z=grid.to_numpy(), x=list(grid.columns), y=list(grid.index),
                               colorscale=[[0, "#fff7ed"], [1, PRIMARY]], colorbar=dict(title="corrections"),
                               hovertemplate="predicted %{y}<br>corrected to %{x}<br>%{z:,} times<extra></extra>"))
    fig.update_xaxes(title_text="corrected label", tickangle=-40)
    fig.update_yaxes(title_text="predicted label")
    return _layout(fig, title, height=520)


def confused_pairs(pairs: pd.DataFrame, top: int = 15) -> go.Figure:
    """The label pairs corrected most often, predicted → corrected."""
    title = "Most confused pairs"
    if pairs.empty:
        return empty(title, "No corrected labels for these filters")
    df = pairs.nlargest(top, "n").iloc[::-1]
    names = [f"{p} → {c}" for p, c in zip(df["predicted"], df["corrected"])]
    fig = go.Figure(go.Bar(x=df["n"], y=names, orientation="h", marker_color=DOWN,
                           hovertemplate="%{y}: %{x:,} corrections<extra></extra>"))
    fig.update_xaxes(title_text="corrections")
    return _layout(fig, title, height=max(300, 24 * len(df) + 100))


def latency_over_time(df: pd.DataFrame) -> go.Figure:
    """p50 (solid) and p95 (dashed) latency per stage, interval and model version."""
    title = "Latency per stage: p50 (solid) and p95 (dashed)"
    if df.empty:
        return empty(title)
    stages = [c.removesuffix("_p50") for c in df.columns if c.endswith("_p50")]  # intake, each task, total
    names = {s: STAGE_NAMES.get(s, s.replace("_", " ").capitalize()) for s in stages}
    rows = (len(stages) + 1) // 2
    fig = make_subplots(rows=rows, cols=2, shared_xaxes=True, subplot_titles=[names[s] for s in stages],
                        vertical_spacing=0.28 / rows, horizontal_spacing=0.08)
    colors = _colors(df["version"])
    for i, stage in enumerate(stages):
        row, col = divmod(i, 2)
        for version, part in df.groupby("version", sort=False):
            for q, dash in (("p50", "solid"), ("p95", "dash")):
                fig.add_trace(go.Scatter(
                    x=part["bucket"], y=part[f"{stage}_{q}"], mode="lines+markers", marker=dict(size=5),
                    name=version, legendgroup=version,
                    showlegend=(i == 0 and q == "p50"), line=dict(color=colors[version], dash=dash),
                    hovertemplate=f"<b>{version}</b> {names[stage]} {q}<br>%{{x}}<br>%{{y:,.0f}} ms"
                                  "<extra></extra>"), row=row + 1, col=col + 1)
        fig.update_yaxes(title_text="ms", rangemode="tozero", row=row + 1, col=col + 1)
    _layout(fig, title, height=280 * rows)
    # Below the plots: above them the legend would cover the subplot titles.
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.12, xanchor="left", x=0),
                      margin=dict(l=10, r=10, t=60, b=40))
    return fig


def requests_over_time(df: pd.DataFrame) -> go.Figure:
    """Requests per interval, stacked by model version."""
    title = "Requests per interval"
    if df.empty:
        return empty(title)
    fig = go.Figure()
    colors = _colors(df["version"])
    for version, part in df.groupby("version", sort=False):
        fig.add_trace(go.Bar(x=part["bucket"], y=part["n"], name=version, marker_color=colors[version],
                             customdata=part["n_cached"], **_partial_bars(part),
                             hovertemplate=f"<b>{version}</b><br>%{{x}}<br>%{{y:,}} requests "
                                           "(%{customdata:,} cached)<extra></extra>"))
    fig.update_layout(barmode="stack")
    fig.update_yaxes(title_text="requests")
    return _layout(fig, title, height=340)


def confidence_histogram(bins: pd.DataFrame) -> go.Figure:
    """Top-1 scores, stacked by the verdict each prediction got."""
    title = "Top-1 confidence"
    if bins.empty:
        return empty(title)
    centre = (bins["bin_low"] + bins["bin_high"]) / 2
    width = float((bins["bin_high"] - bins["bin_low"]).iloc[0])
    fig = go.Figure()
    for column, name, color in (("n_up", "thumbs up", UP), ("n_down", "thumbs down", DOWN), (None, "no verdict", NONE)):
        y = bins[column] if column else bins["n"] - bins["n_verdict"]
        fig.add_trace(go.Bar(x=centre, y=y, width=width * 0.95, name=name, marker_color=color,
                             hovertemplate=f"score %{{x:.2f}}<br>%{{y:,}} {name}<extra></extra>"))
    fig.update_layout(barmode="stack")
    fig.update_xaxes(title_text="top-1 score", range=[0, 1])
    fig.update_yaxes(title_text="predictions")
    return _layout(fig, title)


def reliability_diagram(table: pd.DataFrame) -> go.Figure:
    """Mean confidence per bin against the observed thumbs-up rate, with 95% intervals and counts."""
    title = "Reliability: confidence vs observed thumbs-up rate"
    if table.empty:
        return empty(title, "No verdicts for these filters")
    ece = stats.calibration_error(table)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.72, 0.28], vertical_spacing=0.06)
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfectly calibrated",
                             line=dict(color="#9ca3af", dash="dot"), hoverinfo="skip"), row=1, col=1)
    fig.add_trace(go.Scatter(
        x=table["confidence"], y=table["up_rate"], mode="lines+markers", name="observed", marker=dict(size=8),
        line=dict(color=PRIMARY),
        error_y=dict(type="data", symmetric=False, array=table["up_rate_high"] - table["up_rate"],
                     arrayminus=table["up_rate"] - table["up_rate_low"], color=PRIMARY),
        customdata=np.stack([table["bin_low"], table["bin_high"], table["n_up"], table["n_verdict"]], axis=-1),
        hovertemplate="scores %{customdata[0]:.1f}–%{customdata[1]:.1f}: mean confidence %{x:.1%}"
                      "<br>observed %{y:.1%} up (%{customdata[2]:,} of %{customdata[3]:,})<extra></extra>"),
        row=1, col=1)
    fig.add_trace(go.Bar(x=(table["bin_low"] + table["bin_high"]) / 2, y=table["n_verdict"], name="verdicts",
                         width=0.09, marker_color="#fdba74", showlegend=False,
                         hovertemplate="scores %{x:.2f}±0.05<br>%{y:,} verdicts<extra></extra>"), row=2, col=1)
    fig.update_xaxes(range=[0, 1], row=1, col=1)
    fig.update_xaxes(title_text="confidence (top-1 score)", range=[0, 1], tickformat=".0%", row=2, col=1)
    fig.update_yaxes(title_text="observed thumbs up", range=[0, 1], tickformat=".0%", row=1, col=1)
    fig.update_yaxes(title_text="verdicts", row=2, col=1)
    few = " – too few verdicts to trust" if stats.calibration_warning(table) else ""
    return _layout(fig, f"{title} (ECE {ece:.1%}{few})", height=460)


def edit_size_histogram(hist: pd.DataFrame) -> go.Figure:
    """How much of each edited caption people changed."""
    title = "How much people change a caption"
    if hist.empty:
        return empty(title, "No edited captions for these filters")
    fig = go.Figure(go.Bar(x=hist["bin_low"] + 0.05, y=hist["n"], width=0.095, marker_color=PRIMARY,
                           hovertemplate="%{x:.0%}±5% of characters changed<br>%{y:,} captions<extra></extra>"))
    fig.update_xaxes(title_text="share of characters changed (edit distance / length)", range=[0, 1],
                     tickformat=".0%")
    fig.update_yaxes(title_text="edited captions")
    return _layout(fig, title, height=340)


def most_edited_labels(labels: pd.DataFrame) -> go.Figure:
    """Labels whose captions get edited most, with the share of their predictions edited."""
    title = "Most edited labels"
    if labels.empty:
        return empty(title, "No edited captions for these filters")
    df = labels.iloc[::-1]
    fig = go.Figure(go.Bar(
        x=df["n_edited"], y=df["label"], orientation="h", marker_color=PRIMARY,
        text=[f"{r:.0%} of {n:,}" for r, n in zip(df["edit_rate"], df["n"])], textposition="outside",
        cliponaxis=False,
        hovertemplate="%{y}: %{x:,} edited captions (%{text})<extra></extra>"))
    fig.update_xaxes(title_text="edited captions", range=[0, df["n_edited"].max() * 1.3])
    return _layout(fig, title, height=max(300, 24 * len(df) + 100))


# -- detect and zero_shot --------------------------------------------------------------------------------

def objects_over_time(df: pd.DataFrame) -> go.Figure:
    """Objects found per class and interval, stacked (the top classes, the rest as "other")."""
    title = "Objects found per class"
    if df.empty:
        return empty(title, "No detected objects for these filters")
    totals = df.groupby("label", sort=False)["n"].sum().sort_values(ascending=False, kind="stable")
    colors = _colors(totals.index)
    fig = go.Figure()
    for label in totals.index:
        part = df[df["label"] == label]
        fig.add_trace(go.Bar(x=part["bucket"], y=part["n"], name=label,
                             marker_color=NONE if label == "other" else colors[label],
                             hovertemplate=f"<b>{label}</b><br>%{{x}}<br>%{{y:,}} objects<extra></extra>"))
    fig.update_layout(barmode="stack")
    fig.update_yaxes(title_text="objects")
    return _layout(fig, title, height=380)


def boxes_per_photo(df: pd.DataFrame) -> go.Figure:
    """How many boxes each detect output has (zero included)."""
    title = "Boxes per photo"
    if df.empty:
        return empty(title, "No detect outputs for these filters")
    fig = go.Figure(go.Bar(x=df["n_boxes"], y=df["n_photos"], marker_color=PRIMARY,
                           hovertemplate="%{x} boxes: %{y:,} photos<extra></extra>"))
    fig.update_xaxes(title_text="boxes in the photo", dtick=1)
    fig.update_yaxes(title_text="photos")
    return _layout(fig, title, height=340)


def score_histogram(bins: pd.DataFrame, title: str = "Box scores", unit: str = "boxes",
                    axis: str = "score") -> go.Figure:
    """Scores in bins (bin_low, bin_high, n): the detected boxes', or zero-shot's top scores."""
    if bins.empty:
        return empty(title)
    centre = (bins["bin_low"] + bins["bin_high"]) / 2
    width = float((bins["bin_high"] - bins["bin_low"]).iloc[0])
    fig = go.Figure(go.Bar(x=centre, y=bins["n"], width=width * 0.95, marker_color=PRIMARY,
                           hovertemplate=f"{axis} %{{x:.3f}}<br>%{{y:,}} {unit}<extra></extra>"))
    fig.update_xaxes(title_text=axis, range=[0, 1])
    fig.update_yaxes(title_text=unit)
    return _layout(fig, title, height=340)


def custom_labels(df: pd.DataFrame) -> go.Figure:
    """The custom labels asked most (requests that asked each), and how often each came out on top."""
    title = "Most used custom labels"
    if df.empty:
        return empty(title, "No zero-shot outputs for these filters")
    df = df.iloc[::-1]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=df["n_requests"], y=df["label"], orientation="h", name="asked", marker_color="#fdba74",
                         hovertemplate="%{y}: asked in %{x:,} requests<extra></extra>"))
    fig.add_trace(go.Bar(x=df["n_top"], y=df["label"], orientation="h", name="top label", marker_color=PRIMARY,
                         hovertemplate="%{y}: top label in %{x:,} requests<extra></extra>"))
    fig.update_layout(barmode="overlay")
    fig.update_xaxes(title_text="requests")
    return _layout(fig, title, height=max(300, 24 * len(df) + 100))
