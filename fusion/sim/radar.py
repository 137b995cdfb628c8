"""The simulated radar: detections spread over objects' visible surfaces, with noise and clutter.

Per scan, each object in the field of view returns a Poisson number of detections that grows
with its visible surface's angular size (and its class's reflectivity), placed uniformly over the
faces that look at the radar, mostly below 1.2 m where bumpers and wheels reflect. Points behind
a nearer object are mostly dropped (shadowing); a whole object is sometimes missed. Range,
azimuth and elevation get Gaussian noise in polar coordinates, so lateral error grows with range.
Doppler ``v_r`` is the true relative velocity of the reflector along the line of sight (positive
moving away) plus noise; pedestrians and cyclists add micro-Doppler spread. RCS (dBsm) is drawn
per class. Static scenery (buildings, poles, trees, guard rails) reflects too, and the road edges
(kerbs) and random false alarms add clutter. Points outside the field of view or maximum range are
cut. All points are in the radar (reference) frame at the scan's capture time; ``dt_s`` = 0.
Geometry goes through `fusion.sim._exact`, so a scan is the same bits on every CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fusion.sim import _exact as ex
from fusion.sim.world import CYCLIST, PEDESTRIAN, RADAR_HEIGHT_M, TRUCK, EgoState, State, World
from fusion.wire.messages import RADAR_POINT_DTYPE


@dataclass(frozen=True)
class RadarParams:
    """Noise figures and limits of the simulated radar."""

    azimuth_fov_deg: float = 60.0  # half angle
    elevation_fov_deg: float = 15.0  # half angle
    min_range_m: float = 0.8
    range_sigma_m: float = 0.12
    azimuth_sigma_deg: float = 0.6
    elevation_sigma_deg: float = 1.2
    v_r_sigma_mps: float = 0.1
    micro_doppler_sigma_mps: float = 0.6
    #: Detections per object: mean = density * visible area (m^2) * 20 m / range, clipped (the
    #: number of azimuth cells an object covers falls as 1 / range).
    points_per_m2_at_20m: tuple[float, float, float, float] = (3.5, 2.0, 3.5, 3.0)
    min_mean_points: tuple[float, float, float, float] = (2.5, 3.0, 0.8, 1.2)
    max_points: int = 40
    miss_probability: tuple[float, float, float, float] = (0.04, 0.02, 0.15, 0.1)
    rcs_dbsm: tuple[float, float, float, float] = (10.0, 20.0, -6.0, 0.0)
    rcs_sigma_db: float = 4.0
    shadow_drop_probability: float = 0.9
    scenery_points_per_m2_at_20m: float = 0.25
    scenery_max_points: int = 10


class RadarModel:
    """Produces the radar points of one scan from the world state at the scan's time."""

    def __init__(self, world: World, rng: np.random.Generator, params: RadarParams | None = None):
        self.world, self.rng = world, rng
        self.params = params or RadarParams()
        self.max_range_m = world.config.radar_max_range_m

    def scan(self, t: float, ego: EgoState, state: State, actor_idx: np.ndarray) -> np.ndarray:
        """The (N,) `RADAR_POINT_DTYPE` points of a scan at time `t`."""
        p, rng, world = self.params, self.rng, self.world
        actors = world.actors
        ego_v = np.array([ego.vx, ego.vy])
        c, s = math.cos(ego.yaw), math.sin(ego.yaw)
        to_ref = np.array([[c, s], [-s, c]])

        def rel(x, y):
            d = ex.apply(to_ref, np.stack([x - ego.x, y - ego.y], axis=-1))
            return d[..., 0], d[..., 1]

        # Objects: actors then scenery, as (centre, yaw, size, velocity, class, rcs).
        ax, ay = rel(state.x[actor_idx], state.y[actor_idx])
        avel = np.stack([state.vx[actor_idx], state.vy[actor_idx]], axis=1) - ego_v
        sc = world.scenery
        sx, sy = rel(sc.x, sc.y)
        keep = np.flatnonzero(ex.hypot(sx, sy) < self.max_range_m + 20)
        boxes_x = np.concatenate([ax, sx[keep]])
        boxes_y = np.concatenate([ay, sy[keep]])
        yaw = np.concatenate([state.yaw[actor_idx], sc.yaw[keep]]) - ego.yaw
        sizes = [actors.size[i] for i in actor_idx]
        for i in keep:
            part = max(sc.parts[i], key=lambda q: q.size[0] * q.size[1] * q.size[2])
            sizes.append(np.array(part.size))
        sizes = np.array(sizes, dtype=np.float64).reshape(-1, 3)
        rel_v = ex.apply(to_ref, np.concatenate([avel, np.repeat(-ego_v[None], len(keep), 0)]))
        cls = np.concatenate([actors.class_id[actor_idx], np.full(len(keep), -1)])
        rcs_mean = np.concatenate(
            [np.array(p.rcs_dbsm)[actors.class_id[actor_idx]], sc.radar_rcs_dbsm[keep]]
        )
        n_obj = len(boxes_x)

        # Footprint corners in the ref frame, for shadowing and visible faces.
        cos, sin = ex.cos(yaw), ex.sin(yaw)
        hl, hw = sizes[:, 0] / 2, sizes[:, 1] / 2
        sign = np.array([[1, 1], [1, -1], [-1, -1], [-1, 1]], dtype=np.float64)
        lx, ly = sign[None, :, 0] * hl[:, None], sign[None, :, 1] * hw[:, None]
        cx = boxes_x[:, None] + cos[:, None] * lx - sin[:, None] * ly
        cy = boxes_y[:, None] + sin[:, None] * lx + cos[:, None] * ly
        corner_az = ex.arctan2(cy, cx)
        az_lo, az_hi = corner_az.min(axis=1), corner_az.max(axis=1)
        range_near = ex.hypot(cx, cy).min(axis=1)
        behind = cx.max(axis=1) < 0.5
        wrap = (az_hi - az_lo) > np.pi  # straddles the +-pi cut: behind the radar
        in_fov = ~behind & ~wrap & (range_near < self.max_range_m + 5)

        chunks_xyz, chunks_v, chunks_rcs, chunks_cls = [], [], [], []
        for i in np.flatnonzero(in_fov):
            scenery = cls[i] < 0
            if not scenery and rng.random() < p.miss_probability[cls[i]]:
                continue
            # Faces (front, back, left, right) with outward normals; keep those facing us.
            normals = np.array(
                [[cos[i], sin[i]], [-cos[i], -sin[i]], [-sin[i], cos[i]], [sin[i], -cos[i]]]
            )
            half = np.array([hl[i], hl[i], hw[i], hw[i]])
            across = np.array([hw[i], hw[i], hl[i], hl[i]])
            centres = np.array([boxes_x[i], boxes_y[i]]) + normals * half[:, None]
            view = -centres / ex.norm_last(centres)[:, None]
            facing = ex.dot_last(normals, view)
            widths = np.where(facing > 0, 2 * across * facing, 0.0)
            height = min(sizes[i, 2], 1.2 if cls[i] not in (PEDESTRIAN, CYCLIST) else 2.0)
            if cls[i] == TRUCK:
                height = 2.0
            area = widths.sum() * height
            if area <= 0:
                continue
            r = max(math.hypot(boxes_x[i], boxes_y[i]), 1.0)
            if scenery:
                mean = min(p.scenery_points_per_m2_at_20m * area * 20.0 / r, 4.0)
                n = min(int(rng.poisson(mean)), p.scenery_max_points)
            else:
                mean = max(
                    p.points_per_m2_at_20m[cls[i]] * area * 20.0 / r, p.min_mean_points[cls[i]]
                )
                n = min(int(rng.poisson(mean)), p.max_points)
            if n == 0:
                continue
            face = rng.choice(4, size=n, p=widths / widths.sum())
            tangent = np.stack([-normals[face, 1], normals[face, 0]], axis=1)
            along = rng.uniform(-1.0, 1.0, n) * across[face]
            xy = centres[face] + tangent * along[:, None]
            z = rng.uniform(0.15, height, n) - RADAR_HEIGHT_M
            chunks_xyz.append(np.column_stack([xy, z]))
            chunks_v.append(np.repeat(rel_v[i][None], n, 0))
            chunks_rcs.append(rcs_mean[i] + rng.normal(0.0, p.rcs_sigma_db, n))
            chunks_cls.append(np.full(n, cls[i]))
        xyz = np.concatenate(chunks_xyz) if chunks_xyz else np.zeros((0, 3))
        vel = np.concatenate(chunks_v) if chunks_v else np.zeros((0, 2))
        rcs = np.concatenate(chunks_rcs) if chunks_rcs else np.zeros(0)
        point_cls = np.concatenate(chunks_cls) if chunks_cls else np.zeros(0, dtype=int)

        # Shadowing: drop most points that lie behind a nearer object's azimuth span.
        if len(xyz) and n_obj:
            az = ex.arctan2(xyz[:, 1], xyz[:, 0])
            rng_m = ex.hypot(xyz[:, 0], xyz[:, 1])
            fov_obj = in_fov & (cls >= 0)
            hidden = np.any(
                fov_obj[None]
                & (az[:, None] > az_lo[None] + 0.002)
                & (az[:, None] < az_hi[None] - 0.002)
                & (range_near[None] < rng_m[:, None] - 1.0),
                axis=1,
            )
            drop = hidden & (rng.random(len(xyz)) < p.shadow_drop_probability)
            xyz, vel, rcs, point_cls = xyz[~drop], vel[~drop], rcs[~drop], point_cls[~drop]

        # Kerb clutter along both road edges, and false alarms anywhere in the field of view.
        kerb = self._kerb(world.ego_s(t), rel)
        clutter_v = np.repeat(ex.apply(to_ref, -ego_v)[None], len(kerb), 0)
        n_fa = int(rng.poisson(self.world.config.false_alarms_per_scan))
        fa_r = rng.uniform(2.0, self.max_range_m, n_fa)
        fa_az = rng.uniform(-1.0, 1.0, n_fa) * math.radians(p.azimuth_fov_deg)
        fa = np.column_stack(
            [fa_r * ex.cos(fa_az), fa_r * ex.sin(fa_az), rng.uniform(-0.4, 1.5, n_fa)]
        )
        all_xyz = np.concatenate([xyz, kerb, fa])
        true_vr = self._radial(all_xyz, np.concatenate([vel, clutter_v, np.zeros((n_fa, 2))]))
        true_vr[len(xyz) + len(kerb) :] = rng.normal(0.0, 4.0, n_fa)
        all_rcs = np.concatenate(
            [rcs, rng.normal(-8.0, 4.0, len(kerb)), rng.normal(-12.0, 4.0, n_fa)]
        )
        spread = np.where(np.isin(point_cls, (PEDESTRIAN, CYCLIST)), p.micro_doppler_sigma_mps, 0.0)
        spread = np.concatenate([spread, np.zeros(len(kerb) + n_fa)])
        v_r = true_vr + rng.normal(0.0, 1.0, len(true_vr)) * ex.hypot(p.v_r_sigma_mps, spread)
        return self._measure(all_xyz, v_r, all_rcs)

    def _kerb(self, s_ego: float, rel) -> np.ndarray:
        world, rng = self.world, self.rng
        c = world.config
        mean = c.clutter_per_scan
        n = int(rng.poisson(mean))
        s = s_ego + rng.uniform(1.0, self.max_range_m, n)
        edge = world.layout.asphalt_edge
        d = rng.choice([-1.0, 1.0], n) * (edge + rng.normal(0.0, 0.3, n))
        x, y, _ = world.road.to_world(s, d)
        xr, yr = rel(x, y)
        z = rng.uniform(-RADAR_HEIGHT_M, 0.4 - RADAR_HEIGHT_M, n)
        return np.column_stack([xr, yr, z])

    @staticmethod
    def _radial(xyz: np.ndarray, vel_xy: np.ndarray) -> np.ndarray:
        r = ex.norm_last(xyz)
        return ex.dot_last(xyz[:, :2], vel_xy) / np.maximum(r, 1e-6)

    def _measure(self, xyz: np.ndarray, v_r: np.ndarray, rcs: np.ndarray) -> np.ndarray:
        p, rng = self.params, self.rng
        n = len(xyz)
        r = ex.norm_last(xyz)
        az = ex.arctan2(xyz[:, 1], xyz[:, 0])
        el = ex.arcsin(np.clip(xyz[:, 2] / np.maximum(r, 1e-6), -1.0, 1.0))
        r = r + rng.normal(0.0, p.range_sigma_m, n)
        az = az + rng.normal(0.0, math.radians(p.azimuth_sigma_deg), n)
        el = el + rng.normal(0.0, math.radians(p.elevation_sigma_deg), n)
        ok = (
            (r >= p.min_range_m)
            & (r <= self.max_range_m)
            & (np.abs(az) <= math.radians(p.azimuth_fov_deg))
            & (np.abs(el) <= math.radians(p.elevation_fov_deg))
        )
        points = np.zeros(int(ok.sum()), dtype=RADAR_POINT_DTYPE)
        r, az, el = r[ok], az[ok], el[ok]
        cos_el = ex.cos(el)
        points["x"] = r * cos_el * ex.cos(az)
        points["y"] = r * cos_el * ex.sin(az)
        points["z"] = r * ex.sin(el)
        points["v_r"] = v_r[ok]
        points["rcs"] = rcs[ok]
        return points
