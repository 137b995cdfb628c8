"""Sensor health: the VAE's score, plus simple cues for the faults it cannot see, on one scale.

The VAE (`fusion.model.network.HealthVAE`) learns what the features of a healthy frame look
like, and scores how unlike them a frame is; it sees a black or washed-out camera and a radar
full of clutter. Some faults leave features that still look plausible, so a few cues measured
on the network's own inputs go beside it:

- ``sharpness``: mean absolute Laplacian of the grey input image over its contrast (a blurred
  or defocused lens lowers it);
- ``frozen``: 1 when the grey image is exactly the previous frame's (a frozen camera repeats its
  frame; a live sensor's noise never does, even standing still), else 0;
- ``brightness`` and ``contrast``: mean and spread of the grey image (black, over-exposed);
- ``radar_points``: log of the radar points on the grid (a blacked-out radar has none);
- ``radar_isolated``: the share of occupied raster cells with no occupied neighbour (clutter
  and noise scatter, objects cluster).

Each value becomes a z against its median and tails on clean validation frames
(``ModelConfig.health``, set by training: z = 1 where the clean frames' 1-in-100 tail is),
counted only in its bad direction; the health score is the largest z (the VAE's included), and
a frame is flagged above ``ModelConfig.health_threshold``, a high quantile of the clean
validation frames' own scores. Cues of a sensor the mode does not use are left
out: camera-only is not a radar fault.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from fusion.model.config import ModelConfig

#: Cue -> the direction that is bad: +1 high, -1 low, 0 either.
CUES: dict[str, int] = {
    "vae": +1,
    "sharpness": -1,
    "frozen": +1,
    "brightness": 0,
    "contrast": -1,
    "radar_points": -1,
    "radar_isolated": +1,
}
CAMERA_CUES = ("sharpness", "frozen", "brightness", "contrast")
#: Cues measured against fixed statistics instead of calibrated ones: a repeated frame is a
#: fault whatever the validation data looked like (z = 10).
FIXED_STATS: dict[str, list[float]] = {"frozen": [0.0, 0.1, 0.1]}
RADAR_CUES = ("radar_points", "radar_isolated")
#: Quantile of clean validation frames that sets each cue's spread and the flagging threshold,
#: and the threshold's floor (a z of 1 is a clean frame's 1-in-100 tail).
THRESHOLD_QUANTILE = 0.99
MIN_THRESHOLD = 1.5
#: Smallest spread a cue is measured against (guards a constant cue).
MIN_SPREAD = 1e-3


def grey(image: np.ndarray) -> np.ndarray:
    """(H, W) float32 grey of a normalised (3, H, W) input image."""
    return np.asarray(image, np.float32).mean(axis=0)


class HealthCues:
    """Computes the cues of consecutive frames of one camera + radar pair (it remembers the
    previous grey image for ``frozen``)."""

    def __init__(self) -> None:
        self._previous: np.ndarray | None = None

    def reset(self) -> None:
        self._previous = None

    def prime(self, image: np.ndarray) -> None:
        """Remember `image` (a normalised input image) as the previous frame's."""
        self._previous = grey(image)

    def __call__(self, inputs: dict[str, np.ndarray], mode: str = "fused") -> dict[str, float]:
        cues: dict[str, float] = {}
        if mode != "radar_only":
            g = grey(inputs["image"])
            contrast = float(g.std())
            laplacian = cv2.Laplacian(g, cv2.CV_32F, ksize=1)
            cues["brightness"] = float(g.mean())
            cues["contrast"] = contrast
            cues["sharpness"] = float(np.abs(laplacian).mean()) / (contrast + 0.05)
            if self._previous is not None and self._previous.shape == g.shape:
                cues["frozen"] = float(np.array_equal(g, self._previous))
            self._previous = g
        if mode != "camera_only":
            raster = inputs["raster"]
            occupied = raster[0] > 0
            points = float(np.expm1(raster[1][occupied]).sum())
            neighbours = cv2.boxFilter(
                occupied.astype(np.float32),
                -1,
                (3, 3),
                normalize=False,
                borderType=cv2.BORDER_CONSTANT,
            )
            isolated = occupied & (neighbours <= 1.0)
            cues["radar_points"] = math.log1p(points)
            cues["radar_isolated"] = float(isolated.sum() / max(1, occupied.sum()))
        return cues


def calibrate(
    clean: Sequence[dict[str, float]],
    quantile: float = THRESHOLD_QUANTILE,
) -> tuple[dict[str, list[float]], float]:
    """Per cue, (median, low spread, high spread) over clean frames' cue dicts (``vae``
    included): the spreads are the distances from the median to the 1st and 99th percentiles,
    so a z of 1 is as far out as the clean frames' tails reach, whatever their shape. Returns
    them and the flagging threshold: the `quantile` of the clean frames' own scores, at least
    `MIN_THRESHOLD`."""
    stats: dict[str, list[float]] = dict(FIXED_STATS)
    for name in CUES:
        if name in FIXED_STATS:
            continue
        values = np.array([c[name] for c in clean if name in c and math.isfinite(c[name])])
        if len(values) < 2:
            continue
        low, median, high = np.quantile(values, [1 - quantile, 0.5, quantile])
        floor = max(MIN_SPREAD, 0.05 * abs(float(median)))
        stats[name] = [
            float(median),
            max(float(median - low), floor),
            max(float(high - median), floor),
        ]
    scores = [score(c, stats)[0] for c in clean]
    threshold = max(MIN_THRESHOLD, float(np.quantile(scores, quantile))) if scores else math.inf
    return stats, threshold


def score(cues: dict[str, float], stats: dict[str, list[float]]) -> tuple[float, str]:
    """(health score, the cue that set it): the largest z in a cue's bad direction, z being
    the distance from the clean median in units of the clean spread on that side."""
    worst, which = 0.0, ""
    for name, value in cues.items():
        if name not in stats or not math.isfinite(value):
            continue
        median, low, high = stats[name] if len(stats[name]) == 3 else (*stats[name], stats[name][1])
        z = (value - median) / (high if value >= median else low)
        z = abs(z) if CUES[name] == 0 else z * CUES[name]
        if z > worst:
            worst, which = z, name
    return worst, which


def health_report(cues: dict[str, float], cfg: ModelConfig) -> dict[str, float]:
    """What goes into ``Detections.health``: the score, the threshold, ``ok`` (1.0 / 0.0) and
    every cue's raw value. Before calibration (no ``cfg.health``) the score is the VAE's."""
    if cfg.health:
        value, _ = score(cues, cfg.health)
    else:
        value = cues.get("vae", 0.0)
    ok = value <= cfg.health_threshold
    return {"score": value, "threshold": cfg.health_threshold, "ok": float(ok), **cues}
