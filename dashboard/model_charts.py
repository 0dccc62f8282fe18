"""The Models tab's pure charts: a version's confusion matrix, its loss curves, and live accuracy per version."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from dashboard.charts import DOWN, PRIMARY, _band, _colors, _layout, empty

LIVE_MEASURES = {"up_rate": ("thumbs-up rate", "n_up", "n_verdict"), "top1": ("top-1 accuracy", "n_top1", "n_known"),
                 "top5": ("top-5 accuracy", "n_top5", "n_known")}


def confusion_matrix(matrix: pd.DataFrame, title: str = "Confusion matrix (offline evaluation)") -> go.Figure:
    """Rows true, columns predicted, counts as colour; the diagonal is right."""
    if matrix.empty:
        return empty(title, "No confusion matrix in this evaluation")
    fig = go.Figure(go.Heatmap(z=matrix.to_numpy(), x=list(matrix.columns), y=list(matrix.index),
                               colorscale=[[0, "#fff7ed"], [1, PRIMARY]], colorbar=dict(title="images"),
                               texttemplate="%{z}" if matrix.size <= 400 else None,
                               hovertemplate="true %{y}<br>predicted %{x}<br>%{z:,} images<extra></extra>"))
    fig.update_xaxes(title_text="predicted label", tickangle=-40)
    fig.update_yaxes(title_text="true label", autorange="reversed")
    return _layout(fig, title, height=max(360, 26 * len(matrix) + 160))


def loss_curves(history: pd.DataFrame, title: str = "Training loss per epoch") -> go.Figure:
    """Train and validation loss per epoch, from the history training wrote."""
    if history.empty or "epoch" not in history:
        return empty(title, "No training history recorded for this version")
    fig = go.Figure()
    for column, name, color in (("train_loss", "train", PRIMARY), ("val_loss", "validation", "#2563eb")):
        if column in history and history[column].notna().any():
            fig.add_trace(go.Scatter(x=history["epoch"], y=history[column], mode="lines+markers", name=name,
                                     line=dict(color=color),
                                     hovertemplate=f"epoch %{{x}}<br>{name} loss %{{y:.4f}}<extra></extra>"))
    fig.update_xaxes(title_text="epoch", dtick=1 if len(history) <= 20 else None)
    fig.update_yaxes(title_text="loss", rangemode="tozero")
    return _layout(fig, title, height=340)


def live_accuracy(df: pd.DataFrame, measure: str = "top1") -> go.Figure:
    """One live measure per interval and version, with Wilson 95% bands; a lone point still shows a marker."""
    name, hits, trials = LIVE_MEASURES[measure]
    title = f"Live {name} per version"
    df = df[df[trials] > 0] if not df.empty else df
    if df.empty:
        return empty(title, "No verdicts that tell the true label" if trials == "n_known" else "No verdicts")
    fig = go.Figure()
    colors = _colors(df["version"])
    for version, part in df.groupby("version", sort=False):
        color = colors[version]
        _band(fig, part["bucket"], part[f"{measure}_low"], part[f"{measure}_high"], color, version)
        fig.add_trace(go.Scatter(x=part["bucket"], y=part[measure], mode="lines+markers", name=version,
                                 legendgroup=version, line=dict(color=color), marker=dict(size=8),
                                 customdata=part[[hits, trials]].to_numpy(),
                                 hovertemplate=f"<b>{version}</b><br>%{{x}}<br>%{{y:.1%}} "
                                               "(%{customdata[0]} of %{customdata[1]})<extra></extra>"))
    fig.update_yaxes(title_text=name, tickformat=".0%", range=[0, 1.02])
    return _layout(fig, title, height=360)


def compare(versions: pd.DataFrame, totals: pd.DataFrame) -> go.Figure:
    """Chosen versions side by side: offline accuracy and top-5 against live top-1, top-5 and thumbs-up rate."""
    title = "Versions side by side"
    if versions.empty:
        return empty(title, "Pick versions to compare")
    live = totals.set_index("version_id") if not totals.empty else pd.DataFrame()
    measures = [("offline accuracy", lambda v: v["accuracy"]), ("offline top-5", lambda v: v["top5_accuracy"]),
                ("live top-1", lambda v: _get(live, v["version"], "top1")),
                ("live top-5", lambda v: _get(live, v["version"], "top5")),
                ("live thumbs-up", lambda v: _get(live, v["version"], "up_rate"))]
    fig = go.Figure()
    colors = _colors(versions["name"])
    for _, v in versions.iterrows():
        values = [get(v) for _, get in measures]
        fig.add_trace(go.Bar(x=[m for m, _ in measures], y=[None if pd.isna(x) else x for x in values],
                             name=v["name"], marker_color=colors[v["name"]],
                             text=["–" if x is None or pd.isna(x) else f"{x:.1%}" for x in values],
                             textposition="outside", hovertemplate=f"<b>{v['name']}</b><br>%{{x}}: %{{y:.1%}}"
                                                                   "<extra></extra>"))
    fig.update_layout(barmode="group")
    fig.update_yaxes(tickformat=".0%", range=[0, 1.1])
    return _layout(fig, title, height=360)


def _get(frame: pd.DataFrame, key, column: str):
    if frame.empty or key not in frame.index:
        return None
    return frame.at[key, column]


def error_rate_by_class(df: pd.DataFrame) -> go.Figure:
    """Per true label, the share of verdicts where the top-1 label was wrong."""
    title = "Error rate per class (from verdicts that tell the true label)"
    if df.empty:
        return empty(title, "No verdicts that tell the true label")
    df = df.iloc[::-1]
    fig = go.Figure(go.Bar(x=df["error_rate"], y=df["label"], orientation="h", marker_color=DOWN,
                           customdata=df[["n_known"]].to_numpy(),
                           hovertemplate="%{y}: %{x:.0%} wrong of %{customdata[0]} verdicts<extra></extra>"))
    fig.update_xaxes(title_text="error rate", tickformat=".0%", range=[0, 1])
    return _layout(fig, title, height=max(300, 24 * len(df) + 100))


