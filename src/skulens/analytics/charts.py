"""Charts for people who sell things: plain titles, sorted bars, counts with percentages."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

BAR_COLOUR = "#4c72b0"
MAX_BARS = 25


def _finish(fig, out_png: Path) -> None:
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


def bar_chart(
    labels: list[str],
    counts: list[int],
    out_png: Path,
    title: str,
    unit: str = "products",
    colours: list[str] | None = None,
    max_bars: int = MAX_BARS,
) -> None:
    """Horizontal bars, largest on top, each labelled with its count and share of the total."""
    total = sum(counts) or 1
    order = sorted(range(len(labels)), key=lambda i: (-counts[i], labels[i]))
    shown = order[:max_bars]
    if len(order) > max_bars:
        title = f"{title} (top {max_bars} of {len(order)})"
    height = 1.2 + 0.32 * len(shown)
    fig, ax = plt.subplots(figsize=(8, height))
    y = np.arange(len(shown))[::-1]
    values = [counts[i] for i in shown]
    ax.barh(
        y,
        values,
        color=[colours[i] for i in shown] if colours else BAR_COLOUR,
        edgecolor="0.6" if colours else None,
        linewidth=0.5,
    )
    ax.set_yticks(y, [_short(labels[i]) for i in shown], fontsize=9)
    for yi, v in zip(y, values):
        share = 100 * v / total
        ax.text(v, yi, f" {v:,} ({'<0.1' if 0 < share < 0.05 else f'{share:.1f}'}%)", va="center", fontsize=8)
    ax.set_xlim(0, max(values, default=1) * 1.3)
    ax.set_xlabel(unit)
    ax.set_title(title, fontsize=11, loc="left")
    ax.spines[["top", "right"]].set_visible(False)
    _finish(fig, out_png)


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


def imbalance_chart(counts: list[int], out_png: Path, title: str, few: int) -> None:
    """Every class as one bar, largest first, with the median and the 'few images' line marked."""
    values = sorted(counts, reverse=True)
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.bar(np.arange(len(values)), values, width=1.0 if len(values) > 40 else 0.8, color=BAR_COLOUR)
    median = float(np.median(values)) if values else 0
    ax.axhline(median, color="0.3", linestyle="--", linewidth=1, label=f"median: {median:g} images")
    ax.axhline(few, color="#c44e52", linestyle=":", linewidth=1, label=f"few: under {few} images")
    # A long tail is invisible on a linear axis once the largest class is 50x the smallest.
    log_scale = bool(values) and values[-1] > 0 and values[0] / values[-1] >= 50
    if log_scale:
        ax.set_yscale("log")
    ax.set(
        xlabel=f"classes, largest first ({len(values)})",
        ylabel="images" + (" (log scale)" if log_scale else ""),
        title=title,
    )
    ax.set_xticks([])
    ax.legend(fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    _finish(fig, out_png)


def swatch_chart(hexes: list[str], shares: list[float], names: list[str], out_png: Path, title: str) -> None:
    """Colour blocks as wide as their share, with name and percentage under each."""
    fig, ax = plt.subplots(figsize=(9, 2.3))
    left = 0.0
    for hex_colour, share, name in zip(hexes, shares, names):
        ax.barh(0, share, left=left, color=hex_colour, edgecolor="0.7", height=0.8)
        if share >= 0.04:
            ax.text(left + share / 2, -0.62, f"{name}\n{100 * share:.0f}%", ha="center", va="top", fontsize=8)
        left += share
    ax.set_xlim(0, max(left, 1e-9))
    ax.set_ylim(-1.3, 0.45)
    ax.axis("off")
    ax.set_title(title, fontsize=11, loc="left")
    _finish(fig, out_png)


def timeline_chart(
    periods: list[str], series: dict[str, list[int]], out_png: Path, title: str, period_name: str
) -> None:
    """Stacked bars per period, one colour per category, biggest category at the bottom."""
    fig, ax = plt.subplots(figsize=(max(6.0, min(14.0, 0.35 * len(periods) + 3)), 4.2))
    x = np.arange(len(periods))
    bottom = np.zeros(len(periods))
    palette = plt.get_cmap("tab10")
    for i, (name, values) in enumerate(series.items()):
        colour = "0.75" if name == "other" else palette(i % 10)
        ax.bar(x, values, bottom=bottom, label=name, color=colour, width=0.8)
        bottom += np.array(values, dtype=float)
    step = max(1, len(periods) // 12)
    ax.set_xticks(x[::step], [periods[i] for i in range(0, len(periods), step)], rotation=45, ha="right", fontsize=8)
    ax.set(ylabel="photos", xlabel=period_name, title=title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.spines[["top", "right"]].set_visible(False)
    _finish(fig, out_png)
