"""Inline SVG plots for ``report.html``, drawn by matplotlib when it is installed.

Text is drawn as paths (no fonts) with a fixed hash salt, so the same inputs give the same
bytes; element ids get a per-figure prefix so that several figures share one page. matplotlib
is imported only when a figure is drawn: without it ``Plots.enabled`` is False and every
section keeps its tables.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Sequence
from typing import Any

from robopt_compile.report.format import esc, short

# matplotlib settings for every plot: text as paths (no fonts), deterministic ids.
_RC: dict[str, Any] = {
    "svg.fonttype": "path",
    "svg.hashsalt": "robopt-report",
    "font.size": 8.5,
    "axes.titlesize": 9.5,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.axisbelow": True,
}
_WIDTH = 7.6  # figure width, inches


def matplotlib_available() -> bool:
    """Whether plots can be drawn (matplotlib importable)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def mpl_text(s: Any, n: int | None = None) -> str:
    """Text for matplotlib: shortened, ``$`` escaped so a name never triggers mathtext."""
    return (short(s, n) if n else str(s)).replace("$", r"\$")


_SVG_ID = re.compile(r'(\bid="|href="#|url\(#)')


def _clean_svg(svg: str, prefix: str, alt: str) -> str:
    """matplotlib's SVG made fit for inline HTML: no XML prolog, DOCTYPE, metadata or
    namespace URLs, ids unique per figure, ``xlink:href`` as plain ``href`` (SVG 2)."""
    svg = svg[svg.index("<svg") :]
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg, flags=re.S)
    svg = re.sub(r'\s+xmlns(?::\w+)?="[^"]*"', "", svg)
    svg = svg.replace("xlink:href=", "href=")
    svg = _SVG_ID.sub(lambda m: m.group(1) + prefix, svg)
    return svg.replace("<svg", f'<svg role="img" aria-label="{esc(alt)}"', 1).strip()


class Plots:
    """Draws inline SVG figures; ``enabled`` is False without matplotlib."""

    def __init__(self) -> None:
        self.enabled = matplotlib_available()
        self.count = 0

    def svg(self, draw: Callable[[Any], None], height: float, alt: str, caption: str = "") -> str:
        """``draw(fig)`` on a new figure; its ``<figure>`` HTML, or "" without matplotlib."""
        if not self.enabled:
            return ""
        import matplotlib
        from matplotlib.figure import Figure

        self.count += 1
        with matplotlib.rc_context(_RC):
            fig = Figure(figsize=(_WIDTH, max(1.6, min(height, 9.0))), layout="constrained")
            draw(fig)
            buf = io.StringIO()
            fig.savefig(buf, format="svg", metadata={"Date": None})
        svg = _clean_svg(buf.getvalue(), f"f{self.count}-", alt)
        cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
        return f"<figure>{svg}{cap}</figure>"


def barh(ax: Any, labels: Sequence[str], values: Sequence[float], color: Any = None,
         fmt: str = ".3g") -> None:  # fmt: skip
    """Horizontal bars, the first at the top, each labelled with its value."""
    y = list(range(len(values)))[::-1]
    bars = ax.barh(y, values, color=color or "#4c72b0")
    ax.set_yticks(y, [mpl_text(s) for s in labels])
    ax.bar_label(bars, labels=[f"{v:{fmt}}" for v in values], padding=2, fontsize=7.5)
    ax.grid(axis="y", visible=False)
    ax.margins(x=0.12)
