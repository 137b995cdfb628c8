"""Simulator speed: one 1280x720 camera frame and one radar scan, against JPEG-encoding a frame.

The baseline is `cv2.imencode` of the same frame at quality 90 (a step every JPEG drive pays
anyway); the table gives rendering and a radar scan as ratios to it, per scenario, in one run.

    .venv/bin/pytest benchmarks/test_sim.py --benchmark-only
"""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest

from fusion.perception.geometry import CameraModel
from fusion.sim.camera import Renderer, camera_calibrations
from fusion.sim.radar import RadarModel
from fusion.sim.scenarios import SCENARIOS
from fusion.sim.world import World

DURATION_S = 20.0


def _setup(scenario: str):
    world = World(SCENARIOS[scenario], DURATION_S, np.random.default_rng(0))
    camera, _ = camera_calibrations(1280, 720)
    renderer = Renderer(world, CameraModel.from_calibration(camera), np.random.default_rng(1))
    radar = RadarModel(world, np.random.default_rng(2))
    return world, renderer, radar


def _inputs(world: World, t: float, range_m: float):
    ego, state = world.ego_at(t), world.actors_at(t)
    near = np.flatnonzero(np.hypot(state.x - ego.x, state.y - ego.y) < range_m)
    return ego, state, near


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
@pytest.mark.parametrize("step", ["jpeg q90", "render", "radar scan"])
def test_sim_step(benchmark, ratios, scenario: str, step: str) -> None:
    world, renderer, radar = _setup(scenario)
    times = itertools.cycle(np.arange(0.0, DURATION_S, 0.05))
    view_m = world.config.draw_distance_m + 10.0
    if step == "render":

        def run():
            t = next(times)
            return renderer.render(t, *_inputs(world, t, view_m))

    elif step == "radar scan":

        def run():
            t = next(times)
            return radar.scan(t, *_inputs(world, t, radar.max_range_m + 15.0))

    else:
        frames = [renderer.render(t, *_inputs(world, t, view_m))[0] for t in (1.0, 5.0, 9.0)]
        cycle = itertools.cycle(frames)

        def run():
            return cv2.imencode(".jpg", next(cycle), [cv2.IMWRITE_JPEG_QUALITY, 90])

    benchmark.pedantic(run, rounds=60, warmup_rounds=3)
    median_ms = benchmark.stats.stats.median * 1e3
    ratios.add("sim step, 1280x720", scenario, step, median_ms, baseline="jpeg q90")
