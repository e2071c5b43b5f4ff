"""``render_mode="rgb_array"``: the env's text drawn into a fixed-size RGB image (matplotlib's Agg canvas).

The size never changes, so frames stack into videos (Gymnasium's ``RecordVideo``, SB3's
``VecVideoRecorder``) and tile in ``DummyVecEnv.render()``. Long texts keep their end, where the
response grows; characters the bundled monospace font lacks are drawn as ``?`` instead of raising
matplotlib's missing-glyph warnings.
"""

from __future__ import annotations

import textwrap
from functools import lru_cache

import numpy as np

WIDTH, HEIGHT, DPI = 640, 240, 100
COLUMNS, ROWS, FONT_SIZE = 70, 13, 10


@lru_cache(maxsize=1)
def _font() -> tuple[object, frozenset[int]]:
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    path = font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans Mono"))
    return font_manager.FontProperties(fname=path, size=FONT_SIZE), frozenset(FT2Font(path).get_charmap())


def _lines(text: str, drawable: frozenset[int]) -> list[str]:
    text = "".join(c if ord(c) in drawable or c == "\n" else "?" for c in text)
    lines = [row for part in text.split("\n") for row in (textwrap.wrap(part, COLUMNS) or [""])]
    return lines if len(lines) <= ROWS else ["…"] + lines[-(ROWS - 1) :]


def text_image(text: str) -> np.ndarray:
    """``(HEIGHT, WIDTH, 3)`` uint8: dark text on white, wrapped at ``COLUMNS`` characters."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    font, drawable = _font()
    fig = Figure(figsize=(WIDTH / DPI, HEIGHT / DPI), dpi=DPI, facecolor="white")
    canvas = FigureCanvasAgg(fig)
    fig.text(0.01, 0.97, "\n".join(_lines(text, drawable)), fontproperties=font, va="top", ha="left", color="#111111")
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
