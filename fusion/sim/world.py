"""The simulated world: a curving road, the ego vehicle, traffic and scenery, at any time.

Everything moves along the road in Frenet coordinates (``s`` along the centre line, ``d`` to
the left of it) with closed-form motion, so the state at any instant is exact and cheap, and the
camera and radar can sample it on their own clocks. Velocities are central differences of the
positions, so what the radar measures is consistent with where the boxes are.

World frame: x, y on the ground plane (the road starts at the origin heading along +x), z up.
Lanes per direction are numbered from the right (0 = outermost). Traffic in one lane shares the
lane's speed (plus a small surge), so vehicles keep their gaps without a driver model.

Positions and velocities are computed with `fusion.sim._exact` rather than numpy's vectorised
transcendental functions, so a seeded drive is the same bits on every CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from fusion.sim import _exact as ex
from fusion.sim.scenarios import ScenarioConfig
from fusion.wire.messages import CLASS_NAMES

#: Radar mounting height above the ground (the reference frame's origin), metres.
RADAR_HEIGHT_M = 0.5
ROAD_STEP_M = 0.5
#: Central-difference half step for velocities, seconds.
DIFF_STEP_S = 0.005

CAR, TRUCK, PEDESTRIAN, CYCLIST = (
    CLASS_NAMES.index(name) for name in ("car", "truck", "pedestrian", "cyclist")
)

# Part kinds: shaded surfaces, and lights that glow at night.
SHADED, TAIL_LIGHT, HEAD_LIGHT, LAMP = 0, 1, 2, 3

CAR_COLOURS = np.array(
    [
        [235, 235, 235],
        [190, 190, 195],
        [40, 40, 45],
        [40, 40, 190],
        [160, 90, 40],
        [120, 120, 120],
        [60, 110, 60],
        [30, 160, 230],
        [140, 40, 40],
        [200, 200, 170],
    ],
    dtype=np.float64,
)
CLOTHES = np.array(
    [
        [40, 40, 160],
        [160, 60, 30],
        [30, 150, 200],
        [50, 50, 50],
        [200, 200, 200],
        [60, 140, 60],
        [140, 60, 140],
        [20, 90, 200],
    ],
    dtype=np.float64,
)
SKIN = np.array([[150, 180, 220], [110, 140, 190], [70, 95, 140]], dtype=np.float64)
BUILDING_COLOURS = np.array(
    [[170, 190, 205], [90, 100, 150], [150, 150, 150], [120, 160, 190], [190, 190, 180]],
    dtype=np.float64,
)


@dataclass(frozen=True)
class Part:
    """One shaded box of an object: centre offset (object frame, z from the ground), size."""

    offset: tuple[float, float, float]
    size: tuple[float, float, float]
    colour: tuple[float, float, float]
    kind: int = SHADED


class Road:
    """The centre line, integrated from a smooth curvature profile, and Frenet -> world."""

    def __init__(self, config: ScenarioConfig, s_min: float, s_max: float, rng) -> None:
        s = np.arange(s_min, s_max + ROAD_STEP_M, ROAD_STEP_M)
        kappa = np.zeros_like(s)
        pos = s_min
        while pos < s_max:
            length = rng.uniform(60.0, 220.0)
            if rng.random() < config.curve_fraction:
                k = rng.uniform(0.3, 1.0) * config.max_curvature_per_m * rng.choice([-1.0, 1.0])
                ramp = min(25.0, length / 3)
                t = s - pos
                profile = np.clip(np.minimum(t, length - t) / ramp, 0.0, 1.0)
                kappa += np.where((t >= 0) & (t <= length), k * profile, 0.0)
            pos += length
        heading = np.cumsum(kappa) * ROAD_STEP_M
        x = np.cumsum(ex.cos(heading)) * ROAD_STEP_M
        y = np.cumsum(ex.sin(heading)) * ROAD_STEP_M
        i0 = int(np.searchsorted(s, 0.0))
        # Shift and rotate so that s = 0 is at the origin heading along +x.
        h0 = float(heading[i0])
        c, sn = math.cos(-h0), math.sin(-h0)
        dx, dy = x - x[i0], y - y[i0]
        self.s, self.heading = s, heading - h0
        self.x, self.y = c * dx - sn * dy, sn * dx + c * dy
        self.curvature = kappa

    def to_world(self, s: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Frenet (s, d) -> world (x, y) and the road heading there."""
        h = np.interp(s, self.s, self.heading)
        x = np.interp(s, self.s, self.x) - d * ex.sin(h)
        y = np.interp(s, self.s, self.y) + d * ex.cos(h)
        return x, y, h


@dataclass
class Layout:
    """Lateral offsets (|d|, metres from the centre line) of one side of the road."""

    median: float
    lane_width: float
    lanes: int
    road_edge: float
    bike: tuple[float, float]
    parking: tuple[float, float]
    sidewalk: tuple[float, float]
    asphalt_edge: float

    @classmethod
    def from_config(cls, c: ScenarioConfig) -> Layout:
        edge = c.median_m / 2 + c.lanes_per_direction * c.lane_width_m
        bike = (edge, edge + c.bike_lane_m)
        parking = (bike[1], bike[1] + c.parking_m)
        sidewalk = (parking[1] + c.shoulder_m, parking[1] + c.shoulder_m + c.sidewalk_m)
        return cls(
            c.median_m / 2,
            c.lane_width_m,
            c.lanes_per_direction,
            edge,
            bike,
            parking,
            sidewalk,
            parking[1] + c.shoulder_m,
        )

    def lane_centre(self, lane: int) -> float:
        """|d| of lane `lane` (0 = outermost)."""
        return self.median + (self.lanes - lane - 0.5) * self.lane_width


@dataclass
class Actors:
    """Traffic as a structure of arrays, one entry per object over the whole drive."""

    class_id: list[int] = field(default_factory=list)
    size: list[tuple[float, float, float]] = field(default_factory=list)
    s0: list[float] = field(default_factory=list)
    speed: list[float] = field(default_factory=list)
    surge_m: list[float] = field(default_factory=list)
    surge_rad_s: list[float] = field(default_factory=list)
    surge_phase: list[float] = field(default_factory=list)
    d0: list[float] = field(default_factory=list)
    d1: list[float] = field(default_factory=list)
    cross_start_s: list[float] = field(default_factory=list)
    cross_duration_s: list[float] = field(default_factory=list)
    rest_yaw: list[float] = field(default_factory=list)
    parts: list[list[Part]] = field(default_factory=list)

    def add(
        self,
        class_id,
        size,
        s0,
        speed,
        d0,
        parts,
        rng,
        *,
        surge=0.0,
        rest_yaw=0.0,
        d1=None,
        cross_start_s=1e9,
        cross_duration_s=1.0,
    ) -> None:
        self.class_id.append(class_id)
        self.size.append(size)
        self.s0.append(s0)
        self.speed.append(speed)
        self.surge_m.append(surge)
        self.surge_rad_s.append(2 * np.pi / rng.uniform(7.0, 20.0))
        self.surge_phase.append(rng.uniform(0, 2 * np.pi))
        self.d0.append(d0)
        self.d1.append(d0 if d1 is None else d1)
        self.cross_start_s.append(cross_start_s)
        self.cross_duration_s.append(cross_duration_s)
        self.rest_yaw.append(rest_yaw)
        self.parts.append(parts)

    def freeze(self) -> None:
        for name in (
            "s0",
            "speed",
            "surge_m",
            "surge_rad_s",
            "surge_phase",
            "d0",
            "d1",
            "cross_start_s",
            "cross_duration_s",
            "rest_yaw",
        ):
            setattr(self, name, np.asarray(getattr(self, name), dtype=np.float64))
        self.class_id = np.asarray(self.class_id, dtype=np.int32)
        self.size = np.asarray(self.size, dtype=np.float64).reshape(-1, 3)


@dataclass
class State:
    """Objects at one instant, world frame: centre x, y (ground), yaw, velocity."""

    x: np.ndarray
    y: np.ndarray
    yaw: np.ndarray
    vx: np.ndarray
    vy: np.ndarray


@dataclass
class EgoState:
    """The ego (radar origin on the ground) at one instant, world frame."""

    x: float
    y: float
    yaw: float
    vx: float
    vy: float
    speed: float
    yaw_rate: float
    accel: float


@dataclass
class Scenery:
    """Static boxes (buildings, trees, poles, rails) with world centres and yaws."""

    x: np.ndarray
    y: np.ndarray
    yaw: np.ndarray
    parts: list[list[Part]]
    radar_rcs_dbsm: np.ndarray


def _vary(colour: np.ndarray, rng, spread: float = 25.0) -> tuple[float, float, float]:
    c = np.clip(colour + rng.normal(0.0, spread, 3), 5, 250)
    return (float(c[0]), float(c[1]), float(c[2]))


def vehicle_parts(class_id: int, size, rng) -> list[Part]:
    """Body, cabin or cargo box, wheels and lights of a car or truck."""
    length, width, height = size
    body = _vary(CAR_COLOURS[rng.integers(len(CAR_COLOURS))], rng, 15.0)
    wheels = Part((0.0, 0.0, 0.2), (length * 0.92, width * 0.96, 0.4), (25.0, 25.0, 28.0))
    lights = [
        Part(
            (-length / 2 - 0.02, side * (width / 2 - 0.25), 0.8),
            (0.05, 0.3, 0.16),
            (40.0, 40.0, 160.0),
            TAIL_LIGHT,
        )
        for side in (-1.0, 1.0)
    ] + [
        Part(
            (length / 2 + 0.02, side * (width / 2 - 0.25), 0.7),
            (0.05, 0.3, 0.14),
            (200.0, 220.0, 225.0),
            HEAD_LIGHT,
        )
        for side in (-1.0, 1.0)
    ]
    if class_id == CAR:
        low = 0.4 + 0.35 * (height - 0.4)
        glass = _vary(np.array([70.0, 60.0, 55.0]), rng, 10.0)
        return [
            wheels,
            Part((0.0, 0.0, (0.4 + low) / 2), (length, width, low - 0.4), body),
            Part(
                (-0.08 * length, 0.0, (low + height) / 2),
                (0.55 * length, 0.88 * width, height - low),
                glass,
            ),
            *lights,
        ]
    cab_len = 2.3
    cargo = _vary(
        np.array(([235.0, 235.0, 235.0], [60, 120, 200], [150, 80, 40])[rng.integers(3)]), rng, 12.0
    )
    cab_h = 0.8 * height
    return [
        wheels,
        Part(
            (length / 2 - cab_len / 2, 0.0, (0.4 + cab_h) / 2), (cab_len, width, cab_h - 0.4), body
        ),
        Part(
            (-cab_len / 2 - 0.1, 0.0, (0.7 + height) / 2),
            (length - cab_len - 0.2, width, height - 0.7),
            cargo,
        ),
        *lights,
    ]


def pedestrian_parts(size, rng) -> list[Part]:
    _, width, height = size
    legs = _vary(np.array([60.0, 50.0, 45.0]), rng, 20.0)
    torso = _vary(CLOTHES[rng.integers(len(CLOTHES))], rng, 20.0)
    head = _vary(SKIN[rng.integers(len(SKIN))], rng, 8.0)
    hip, shoulder = 0.48 * height, 0.85 * height
    return [
        Part((0.0, 0.0, hip / 2), (0.25, 0.6 * width, hip), legs),
        Part((0.0, 0.0, (hip + shoulder) / 2), (0.3, width, shoulder - hip), torso),
        Part((0.0, 0.0, (shoulder + height) / 2), (0.22, 0.2, height - shoulder), head),
    ]


def cyclist_parts(size, rng) -> list[Part]:
    length, _, height = size
    bike = _vary(np.array([40.0, 40.0, 40.0]), rng, 25.0)
    jacket = _vary(CLOTHES[rng.integers(len(CLOTHES))], rng, 20.0)
    helmet = _vary(CLOTHES[rng.integers(len(CLOTHES))], rng, 30.0)
    return [
        Part((0.0, 0.0, 0.45), (length, 0.12, 0.8), bike),
        Part((0.0, 0.0, 0.7), (0.25, 0.45, 0.3), (50.0, 50.0, 60.0)),
        Part((-0.1, 0.0, 1.1), (0.45, 0.42, height - 1.5 + 0.55), jacket),
        Part((-0.05, 0.0, height - 0.13), (0.28, 0.24, 0.26), helmet),
    ]


def _size(class_id: int, rng) -> tuple[float, float, float]:
    if class_id == CAR:
        return (rng.uniform(3.8, 4.9), rng.uniform(1.7, 1.95), rng.uniform(1.4, 1.75))
    if class_id == TRUCK:
        return (rng.uniform(6.5, 12.0), rng.uniform(2.35, 2.55), rng.uniform(2.9, 3.8))
    if class_id == PEDESTRIAN:
        return (rng.uniform(0.45, 0.65), rng.uniform(0.5, 0.65), rng.uniform(1.55, 1.95))
    return (rng.uniform(1.65, 1.85), rng.uniform(0.6, 0.7), rng.uniform(1.6, 1.85))


class World:
    """The whole drive: road, ego trajectory, traffic and scenery, built from one rng."""

    def __init__(self, config: ScenarioConfig, duration_s: float, rng) -> None:
        self.config = config
        self.duration_s = duration_s
        c = config
        self.layout = lay = Layout.from_config(c)
        self.ego_d = -lay.lane_centre(c.ego_lane)
        self.ego_surge_m = rng.uniform(1.5, 3.0)
        self.ego_surge_rad_s = 2 * np.pi / rng.uniform(10.0, 16.0)
        self.ego_surge_phase = rng.uniform(0, 2 * np.pi)
        ego_end = c.ego_speed_mps * duration_s
        view_back, view_ahead = 80.0, c.draw_distance_m + 60.0
        fastest = c.ego_speed_mps + c.lane_speed_spread_mps * (lay.lanes + 1) + 5.0
        margin = fastest * duration_s + view_ahead + 100.0
        self.road = Road(c, -margin - view_back - 200.0, ego_end + margin + 200.0, rng)
        self.actors = Actors()

        def span(speed: float) -> tuple[float, float]:
            # s0 from which an object at `speed` is ever within view of the ego.
            rel = (c.ego_speed_mps - speed) * duration_s
            return min(0.0, rel) - view_back - 10.0, max(0.0, rel) + view_ahead

        def fill(lo: float, hi: float, per_100m: float, min_gap: float):
            pos = lo + rng.exponential(100.0 / per_100m)
            while pos < hi:
                yield pos
                pos += min_gap + rng.exponential(100.0 / per_100m)

        # Vehicles, lane by lane, both directions.
        for direction in (1.0, -1.0):
            if direction < 0 and not c.oncoming:
                continue
            for lane in range(lay.lanes):
                if direction > 0 and lane == c.ego_lane:
                    speed = c.ego_speed_mps
                else:
                    steps = lane - c.ego_lane if direction > 0 else lane + 1
                    speed = c.ego_speed_mps + c.lane_speed_spread_mps * steps + rng.normal(0, 0.7)
                    speed = max(speed, 3.0)
                speed *= direction
                lo, hi = span(speed)
                for s0 in fill(lo, hi, c.vehicles_per_100m_per_lane, 10.0 + 0.8 * abs(speed)):
                    if direction > 0 and lane == c.ego_lane and -25.0 < s0 < 25.0:
                        continue
                    cls = TRUCK if rng.random() < c.truck_fraction else CAR
                    size = _size(cls, rng)
                    d = direction * -lay.lane_centre(lane) + rng.normal(0, 0.15)
                    self.actors.add(
                        cls,
                        size,
                        s0,
                        speed,
                        d,
                        vehicle_parts(cls, size, rng),
                        rng,
                        surge=rng.uniform(0.0, 1.5),
                    )
            # Parked cars, cyclists and pedestrians on this side.
            side = -direction
            if c.parked_per_100m > 0:
                lo, hi = span(0.0)
                for s0 in fill(lo, hi, c.parked_per_100m, 6.0):
                    cls = TRUCK if rng.random() < 0.08 else CAR
                    size = _size(cls, rng)
                    d = side * (lay.parking[0] + lay.parking[1]) / 2 + rng.normal(0, 0.1)
                    yaw = 0.0 if (rng.random() < 0.8) == (direction > 0) else np.pi
                    self.actors.add(
                        cls,
                        size,
                        s0,
                        0.0,
                        d,
                        vehicle_parts(cls, size, rng),
                        rng,
                        rest_yaw=yaw + rng.normal(0, 0.03),
                    )
            if c.cyclists_per_100m > 0:
                speed = direction * rng.uniform(4.0, 6.5)
                lo, hi = span(speed)
                d = (
                    side * (lay.bike[0] + lay.bike[1]) / 2
                    if c.bike_lane_m
                    else side * (lay.road_edge - 0.7)
                )
                for s0 in fill(lo, hi, c.cyclists_per_100m, 4.0):
                    size = _size(CYCLIST, rng)
                    self.actors.add(
                        CYCLIST,
                        size,
                        s0,
                        speed,
                        d + rng.normal(0, 0.15),
                        cyclist_parts(size, rng),
                        rng,
                        surge=rng.uniform(0.0, 0.8),
                    )
            if c.pedestrians_per_100m > 0:
                lo, hi = span(0.0)
                for s0 in fill(lo, hi, c.pedestrians_per_100m, 0.8):
                    size = _size(PEDESTRIAN, rng)
                    parts = pedestrian_parts(size, rng)
                    if rng.random() < c.crossing_fraction:
                        d0 = side * (lay.sidewalk[0] + 0.4)
                        self.actors.add(
                            PEDESTRIAN,
                            size,
                            s0,
                            0.0,
                            d0,
                            parts,
                            rng,
                            d1=-d0,
                            cross_start_s=rng.uniform(0.5, max(duration_s - 3.0, 1.0)),
                            cross_duration_s=2 * abs(d0) / rng.uniform(1.1, 1.6),
                            rest_yaw=-side * np.pi / 2,
                        )
                        continue
                    d = side * rng.uniform(lay.sidewalk[0] + 0.5, lay.sidewalk[1] - 0.4)
                    walk = rng.choice([-1.0, 1.0]) * rng.uniform(0.9, 1.6)
                    rest = 0.0 if walk > 0 else np.pi
                    if rng.random() < 0.2:
                        walk = 0.0
                    self.actors.add(PEDESTRIAN, size, s0, walk, d, parts, rng, rest_yaw=rest)
        self.actors.freeze()
        self.scenery = self._scenery(rng, ego_end, view_back, view_ahead)

    def _scenery(self, rng, ego_end: float, view_back: float, view_ahead: float) -> Scenery:
        c, lay = self.config, self.layout
        lo, hi = -view_back - 20.0, ego_end + view_ahead + 20.0
        s_list, d_list, yaw_list, parts, rcs = [], [], [], [], []

        def add(s, d, part_list, rcs_dbsm, yaw=0.0):
            s_list.append(s)
            d_list.append(d)
            yaw_list.append(yaw)
            parts.append(part_list)
            rcs.append(rcs_dbsm)

        outer = lay.sidewalk[1] if c.sidewalk_m else lay.asphalt_edge + 1.5
        for side in (-1.0, 1.0):
            if c.buildings:
                pos = lo
                while pos < hi:
                    length = rng.uniform(12.0, 35.0)
                    depth, height = rng.uniform(10.0, 18.0), rng.uniform(6.0, 22.0)
                    colour = _vary(BUILDING_COLOURS[rng.integers(len(BUILDING_COLOURS))], rng, 15.0)
                    d = side * (outer + 0.6 + depth / 2)
                    add(
                        pos + length / 2,
                        d,
                        [Part((0.0, 0.0, height / 2), (length, depth, height), colour)],
                        12.0,
                    )
                    pos += length + rng.uniform(2.0, 12.0)
            for per_100m, kind in ((c.trees_per_100m, "tree"), (c.poles_per_100m, "pole")):
                if per_100m <= 0:
                    continue
                pos = lo + rng.exponential(100.0 / per_100m)
                while pos < hi:
                    if kind == "tree":
                        d = (
                            side * (outer + rng.uniform(1.5, 8.0))
                            if not c.buildings
                            else side * (lay.sidewalk[1] - 0.7)
                        )
                        crown = rng.uniform(2.0, 4.0)
                        trunk_h = rng.uniform(1.8, 2.6)
                        green = _vary(np.array([50.0, 110.0, 60.0]), rng, 18.0)
                        add(
                            pos,
                            d,
                            [
                                Part(
                                    (0.0, 0.0, trunk_h / 2), (0.3, 0.3, trunk_h), (40.0, 60.0, 90.0)
                                ),
                                Part(
                                    (0.0, 0.0, trunk_h + crown / 2 - 0.3),
                                    (crown, crown, crown),
                                    green,
                                ),
                            ],
                            -2.0,
                        )
                    else:
                        d = side * (
                            lay.sidewalk[0] + 0.3 if c.sidewalk_m else lay.asphalt_edge + 0.8
                        )
                        add(
                            pos,
                            d,
                            [
                                Part((0.0, 0.0, 3.5), (0.18, 0.18, 7.0), (110.0, 110.0, 115.0)),
                                Part(
                                    (0.0, -np.sign(d) * 0.8, 6.9),
                                    (0.5, 1.6, 0.15),
                                    (200.0, 230.0, 240.0),
                                    LAMP,
                                ),
                            ],
                            5.0,
                        )
                    pos += 3.0 + rng.exponential(100.0 / per_100m)
            if c.guard_rails:
                rail = [Part((0.0, 0.0, 0.75), (4.0, 0.15, 0.4), (150.0, 150.0, 155.0))]
                for pos in np.arange(lo, hi, 4.0):
                    add(pos + 2.0, side * (lay.asphalt_edge + 0.4), rail, 0.0)
                    if side < 0 and lay.median > 0:
                        add(pos + 2.0, 0.0, rail, 0.0)
        s = np.asarray(s_list, dtype=np.float64)
        d = np.asarray(d_list, dtype=np.float64)
        x, y, h = self.road.to_world(s, d)
        return Scenery(x, y, h + np.asarray(yaw_list), parts, np.asarray(rcs))

    # --- motion -------------------------------------------------------------------------

    def _frenet(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        a = self.actors
        s = (
            a.s0
            + a.speed * t
            + a.surge_m * (ex.sin(a.surge_rad_s * t + a.surge_phase) - ex.sin(a.surge_phase))
        )
        u = np.clip((t - a.cross_start_s) / a.cross_duration_s, 0.0, 1.0)
        d = a.d0 + (a.d1 - a.d0) * u * u * (3 - 2 * u)
        return s, d

    def actors_at(self, t: float) -> State:
        """Every actor's world pose and velocity at time `t` (seconds)."""
        s, d = self._frenet(t)
        x, y, heading = self.road.to_world(s, d)
        x1, y1, _ = self.road.to_world(*self._frenet(t + DIFF_STEP_S))
        x0, y0, _ = self.road.to_world(*self._frenet(t - DIFF_STEP_S))
        vx, vy = (x1 - x0) / (2 * DIFF_STEP_S), (y1 - y0) / (2 * DIFF_STEP_S)
        moving = ex.hypot(vx, vy) > 0.3
        yaw = np.where(moving, ex.arctan2(vy, vx), heading + self.actors.rest_yaw)
        return State(x, y, yaw, vx, vy)

    def ego_s(self, t: float) -> float:
        """The ego's arc length along the road at time `t`."""
        return self.config.ego_speed_mps * t + self.ego_surge_m * (
            math.sin(self.ego_surge_rad_s * t + self.ego_surge_phase)
            - math.sin(self.ego_surge_phase)
        )

    def _ego_pose(self, t: float) -> tuple[float, float]:
        x, y, _ = self.road.to_world(np.array([self.ego_s(t)]), np.array([self.ego_d]))
        return float(x[0]), float(y[0])

    def _ego_velocity(self, t: float) -> tuple[float, float]:
        x1, y1 = self._ego_pose(t + DIFF_STEP_S)
        x0, y0 = self._ego_pose(t - DIFF_STEP_S)
        return (x1 - x0) / (2 * DIFF_STEP_S), (y1 - y0) / (2 * DIFF_STEP_S)

    def ego_at(self, t: float) -> EgoState:
        """The ego's pose (its radar's origin, on the ground) and rates at time `t`."""
        x, y = self._ego_pose(t)
        vx, vy = self._ego_velocity(t)
        h = 0.02
        vx1, vy1 = self._ego_velocity(t + h)
        vx0, vy0 = self._ego_velocity(t - h)
        yaw1, yaw0 = math.atan2(vy1, vx1), math.atan2(vy0, vx0)
        dyaw = (yaw1 - yaw0 + math.pi) % (2 * math.pi) - math.pi
        return EgoState(
            x=x,
            y=y,
            yaw=math.atan2(vy, vx),
            vx=vx,
            vy=vy,
            speed=math.hypot(vx, vy),
            yaw_rate=dyaw / (2 * h),
            accel=(math.hypot(vx1, vy1) - math.hypot(vx0, vy0)) / (2 * h),
        )
