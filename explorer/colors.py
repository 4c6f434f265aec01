"""The explorer's colours: the activation scale (white -> deep red), the categorical palette, and WCAG text contrast."""

from __future__ import annotations

import math

# White -> orange -> red; each stop darker than the one before, so darker always means stronger.
STOPS = [(0.0, (255, 255, 255)), (0.35, (254, 217, 142)), (0.65, (253, 141, 60)), (1.0, (189, 0, 38))]
PALETTE = ["#e8590c", "#1c7ed6", "#2f9e44", "#ae3ec9", "#f59f00", "#0ca678", "#c2255c", "#495057"]


def palette(n: int) -> list[str]:
    """``n`` distinct colours: the house palette up to its length, else hues evenly spaced around the wheel (two
    lightnesses alternating, so neighbours differ), readable on light and dark backgrounds alike."""
    if n <= len(PALETTE):
        return PALETTE[:n]
    return [f"hsl({round(360 * i / n)}, 70%, {48 if i % 2 else 58}%)" for i in range(n)]


def act_rgb(value: float, vmax: float) -> tuple[int, int, int]:
    """The colour of an activation: 0 (or below) is white, ``vmax`` (or above) is deep red."""
    t = 0.0 if vmax <= 0 or not math.isfinite(value) else min(max(value / vmax, 0.0), 1.0)
    for (t0, c0), (t1, c1) in zip(STOPS, STOPS[1:]):
        if t <= t1:
            f = (t - t0) / (t1 - t0)
            return tuple(round(a + (b - a) * f) for a, b in zip(c0, c1))  # type: ignore[return-value]
    return STOPS[-1][1]


def act_color(value: float, vmax: float) -> str:
    r, g, b = act_rgb(value, vmax)
    return f"#{r:02x}{g:02x}{b:02x}"


def luminance(rgb: tuple[int, int, int]) -> float:
    """WCAG relative luminance of an sRGB colour (0 black .. 1 white)."""

    def lin(c: int) -> float:
        c_ = c / 255
        return c_ / 12.92 if c_ <= 0.03928 else ((c_ + 0.055) / 1.055) ** 2.4

    r, g, b = rgb
    return 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b)


def text_on(rgb: tuple[int, int, int]) -> str:
    """The text colour for a cell of colour ``rgb``: black or white, whichever has the larger WCAG contrast
    (the lesser of the two is never below 4.58:1, the point where both are equal)."""
    y = luminance(rgb)
    return "#fff" if (1.05 / (y + 0.05)) > ((y + 0.05) / 0.05) else "#000"
