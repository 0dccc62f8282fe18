"""Small statistics on aggregated rows: Wilson intervals, version names, calibration bins."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

Z95 = 1.959963984540054
_HASH = re.compile(r"[0-9a-f]{12,64}")


def wilson(successes, trials, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds of the Wilson score interval; NaN where there are no trials."""
    k = np.asarray(successes, dtype=float)
    n = np.asarray(trials, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = k / n
        z2n = z * z / n
        centre = (p + z2n / 2) / (1 + z2n)
        half = z * np.sqrt(p * (1 - p) / n + z2n / (4 * n)) / (1 + z2n)
    low = np.where(n > 0, np.clip(centre - half, 0.0, 1.0), np.nan)
    high = np.where(n > 0, np.clip(centre + half, 0.0, 1.0), np.nan)
    return low, high


def rate(successes, trials) -> np.ndarray:
    """successes / trials, NaN where there are no trials."""
    k = np.asarray(successes, dtype=float)
    n = np.asarray(trials, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n > 0, k / n, np.nan)


def add_rate(df: pd.DataFrame, name: str, successes: str, trials: str) -> pd.DataFrame:
    """Add `name`, `name_low` and `name_high` (Wilson 95%) columns to a copy of df."""
    out = df.copy()
    out[name] = rate(out[successes], out[trials])
    out[f"{name}_low"], out[f"{name}_high"] = wilson(out[successes], out[trials])
    return out


def short_revision(revision: str | None) -> str:
    """A git hash cut to 7 characters; other revision names unchanged."""
    if not revision:
        return "?"
    return revision[:7] if _HASH.fullmatch(revision) else revision


def version_label(classifier: str | None, revision: str | None) -> str:
    """How a model version reads on screen: the model's short name @ its revision."""
    name = (classifier or "?").rstrip("/").rsplit("/", 1)[-1]
    return f"{name}@{short_revision(revision)}"


def add_version(df: pd.DataFrame) -> pd.DataFrame:
    """Replace classifier and classifier_revision columns by a display `version` column."""
    out = df.copy()
    out.insert(0, "version", [version_label(c, r) for c, r in zip(out["classifier"], out["classifier_revision"])])
    return out.drop(columns=["classifier", "classifier_revision"])


def reliability(bins: pd.DataFrame, n_bins: int = 10) -> pd.DataFrame:
    """Merge fine confidence bins into n_bins equal bins with rated counts and the observed up rate.

    `bins` has bin_low (lower edge in [0, 1)), n_verdict, n_up and score_sum_verdict (the sum of
    top-1 scores over predictions with a verdict).
    """
    columns = ["bin_low", "bin_high", "confidence", "n_verdict", "n_up", "up_rate", "up_rate_low", "up_rate_high"]
    if bins.empty:
        return pd.DataFrame(columns=columns)
    edge = np.minimum(np.floor(bins["bin_low"].to_numpy() * n_bins + 1e-9), n_bins - 1) / n_bins
    grouped = (bins.assign(bin_low=edge)
               .groupby("bin_low", as_index=False)[["n_verdict", "n_up", "score_sum_verdict"]].sum())
    grouped = grouped[grouped["n_verdict"] > 0]
    grouped["bin_high"] = grouped["bin_low"] + 1.0 / n_bins
    grouped["confidence"] = grouped["score_sum_verdict"] / grouped["n_verdict"]
    grouped = add_rate(grouped, "up_rate", "n_up", "n_verdict")
    return grouped[columns].reset_index(drop=True)


MIN_CALIBRATION_VERDICTS = 100  # below this the ECE over 10 bins is mostly noise: a warning, not a number to trust


def calibration_warning(table: pd.DataFrame) -> str | None:
    """A sentence when the calibration error rests on too few verdicts to mean anything, else None."""
    n = int(table["n_verdict"].sum()) if not table.empty else 0
    if n >= MIN_CALIBRATION_VERDICTS:
        return None
    return (f"The calibration error comes from only {n:,} verdict{'s' if n != 1 else ''}; below "
            f"{MIN_CALIBRATION_VERDICTS} it is not meaningful (each of the 10 bins holds a handful or none).")


def calibration_error(table: pd.DataFrame) -> float:
    """Expected calibration error: the count-weighted mean gap between confidence and up rate."""
    n = table["n_verdict"].sum() if not table.empty else 0
    if not n:
        return float("nan")
    return float((table["n_verdict"] * (table["confidence"] - table["up_rate"]).abs()).sum() / n)


STEPS = {"hour": pd.Timedelta(hours=1), "day": pd.Timedelta(days=1), "week": pd.Timedelta(days=7)}


def mark_partial(buckets: pd.Series, interval: str, start, end) -> np.ndarray:
    """Whether each bucket (its start, of `interval` length) reaches outside [start, end]: a period the window or
    the log covers only in part, whose counts would read as a dip."""
    if buckets.empty or start is None or end is None:
        return np.zeros(len(buckets), dtype=bool)
    b = pd.to_datetime(buckets)
    return ((b < pd.Timestamp(start)) | (b + STEPS[interval] > pd.Timestamp(end))).to_numpy()
