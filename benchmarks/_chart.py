"""The chart of RESULTS.md and the README: two faults as the plain SDK and sdkguard live them.

Drawn from the timelines `resilience.py` measured (seconds since the call started, and what
the caller or sdkguard saw), headless (matplotlib's Agg backend).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: CI and servers

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.patches import Patch

SILENT, WAIT, CONTENT, OPEN, ERROR = "#b8b8b8", "#f0a030", "#2e9e50", "#6b8fd6", "#d03030"
BOLD: dict[str, Any] = {"fontsize": 9.5, "fontweight": "bold"}
ROWS = (("guarded", "with sdkguard"), ("plain", "plain SDK"))


def _first(timeline: list[tuple[float, str]], prefix: str) -> float | None:
    return next((t for t, what in timeline if what.startswith(prefix)), None)


def _bar(ax: Axes, y: float, start: float, end: float, color: str, **style: Any) -> None:
    ax.broken_barh([(start, max(end - start, 0.0))], (y - 0.28, 0.56), color=color, **style)


def _note(
    ax: Axes, text: str, at: tuple[float, float], offset: tuple[float, float], **style: Any
) -> None:
    """Text placed `offset` points away from the data point `at`."""
    ax.annotate(text, at, xytext=offset, textcoords="offset points", **{"fontsize": 9, **style})


def _row(ax: Axes, y: float, timeline: list[tuple[float, str]], xmax: float, limit: str) -> None:
    """One call's life: open, silent, waiting to retry, delivering; how it ended."""
    headers = _first(timeline, "headers") or 0.0
    decided, sent = _first(timeline, "retry decided"), _first(timeline, "retry sent")
    # What the caller saw before the fault (sdkguard holds back what precedes content).
    last_event = max(
        (
            t
            for t, what in timeline
            if what in ("message_start", "content_block_start") and t < (decided or float("inf"))
        ),
        default=headers,
    )
    content, complete = _first(timeline, "content_block_delta"), _first(timeline, "complete")
    raised = next(((t, w) for t, w in timeline if w.startswith("raised ")), None)
    waiting = _first(timeline, "still waiting")
    tiny = xmax / 150  # the shortest visible bar
    _bar(ax, y, 0.0, max(last_event, tiny), OPEN)
    if raised is not None:
        at, what = raised
        ax.plot([at], [y], marker="X", color=ERROR, markersize=13, zorder=3)
        name = what.removeprefix("raised ").rsplit(".", 1)[-1]
        _note(
            ax,
            f"raises {name} at {at * 1e3:.0f} ms: the call is lost",
            (at, y),
            (12, -4),
            color=ERROR,
            **BOLD,
        )
        return
    if waiting is not None:
        _bar(ax, y, last_event, xmax * 1.05, SILENT, hatch="//", edgecolor="#d8d8d8")
        _note(
            ax,
            "silent connection: still waiting (600 s per read, every ping restarts it)",
            (xmax * 0.03, y),
            (0, -3),
            fontsize=9.5,
        )
        return
    if decided is not None and sent is not None:
        if decided - last_event > tiny:  # a stall: silence until the idle limit
            _bar(ax, y, last_event, decided, SILENT, hatch="//", edgecolor="#d8d8d8")
            _note(
                ax,
                f"silent, then stalled ({limit})",
                (last_event + (decided - last_event) / 2, y),
                (0, -3),
                ha="center",
                fontsize=9,
            )
        else:
            _note(
                ax,
                f"reset after {decided * 1e3:.0f} ms",
                (decided, y),
                (0, 11),
                ha="left",
                fontsize=9,
            )
        ax.plot([decided], [y], marker="|", color=ERROR, markersize=18, markeredgewidth=2.5)
        _bar(ax, y, decided, sent, WAIT)
        _note(
            ax,
            f"backoff {sent - decided:.1f} s",
            (decided + (sent - decided) / 2, y),
            (0, -3),
            ha="center",
            fontsize=9,
        )
    if content is not None and complete is not None:
        _bar(ax, y, content, max(complete, content + tiny), CONTENT)
        ax.plot([complete], [y], marker="o", color=CONTENT, markersize=8, zorder=3)
        _note(
            ax,
            f"one clean message at {content:.2f} s",
            (complete, y),
            (9, -4),
            color=CONTENT,
            **BOLD,
        )


def render(timelines: dict[str, dict[str, Any]], sizes: dict[str, Any], path: Path) -> None:
    """Write the chart to `path` (PNG)."""
    horizon = float(sizes["horizon"])
    limit = f"idle_timeout={sizes['timeline_idle']:g} s"
    reset_end = max(
        (t for timeline in timelines["reset"].values() for t, _ in timeline), default=1.0
    )
    panels = (
        ("stall", f"The stream goes silent after message_start ({limit})", horizon),
        ("reset", "The connection is reset before any content (ECONNRESET)", reset_end * 1.7),
    )
    fig, axes = plt.subplots(2, 1, figsize=(10, 5.0), dpi=110)
    for ax, (scenario, title, xmax) in zip(axes, panels, strict=True):
        for y, (variant, _) in enumerate(ROWS):
            _row(ax, float(y), [tuple(p) for p in timelines[scenario][variant]], xmax, limit)
        ax.set_yticks(range(len(ROWS)), [label for _, label in ROWS], fontsize=10)
        ax.set_ylim(-0.6, len(ROWS) - 0.4)
        ax.set_xlim(0, xmax)
        ax.set_title(title, loc="left", fontsize=11, fontweight="bold")
        ax.spines[["top", "right", "left"]].set_visible(False)
        ax.tick_params(axis="y", length=0)
        ax.grid(axis="x", alpha=0.3)
    axes[-1].set_xlabel("seconds since the call started (measured on 127.0.0.1)")
    legend = [
        Patch(color=OPEN, label="request, first events"),
        Patch(facecolor=SILENT, hatch="//", edgecolor="#d8d8d8", label="silence"),
        Patch(color=WAIT, label="sdkguard waits, then retries"),
        Patch(color=CONTENT, label="content delivered"),
    ]
    fig.legend(handles=legend, loc="lower center", ncol=4, frameon=False, fontsize=9)
    fig.suptitle(
        "sdkguard: a stalled or reset stream comes back as one clean message",
        fontsize=12.5,
        x=0.01,
        ha="left",
    )
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
