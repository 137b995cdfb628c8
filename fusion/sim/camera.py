"""The simulated front camera: its calibration, and a painter's-algorithm renderer.

The camera sits above and behind the radar, looking forward with OpenCV axes and a small
pitch/yaw/roll misalignment, like a windscreen camera. A frame is drawn back to front with
`cv2.fillPoly`: sky and ground (precomputed), road surfaces, lane marks and shadows, then the
visible faces of every box (vehicles, people, buildings, trees, poles, rails) sorted far to near,
shaded by a sun (day) or by the ego's headlights (night), faded into haze with distance; then
the ego's bonnet, a global light level that drifts, horizontal motion blur from yaw rate and
speed over the exposure, and sensor noise. An id buffer at half resolution, drawn in the same
order, gives each object's occluded fraction. Geometry and shading go through
`fusion.sim._exact`, so a frame is the same pixels on every CPU.
"""

from __future__ import annotations

import itertools
import math

import cv2
import numpy as np

from fusion.perception.geometry import CameraModel, make_transform
from fusion.sim import _exact as ex
from fusion.sim.scenarios import ScenarioConfig
from fusion.sim.world import (
    HEAD_LIGHT,
    LAMP,
    RADAR_HEIGHT_M,
    TAIL_LIGHT,
    EgoState,
    State,
    World,
)
from fusion.wire.messages import Calibration

#: Camera position in the radar frame (metres): behind and above the bumper radar.
CAMERA_POSITION_M = (-1.3, 0.05, 0.85)
CAMERA_PITCH_RAD = 0.025  # looking slightly down
CAMERA_YAW_RAD = 0.004
CAMERA_ROLL_RAD = -0.003
HORIZONTAL_FOV_DEG = 60.0
NEAR_M = 0.3
SHIFT_BITS = 3  # sub-pixel precision of polygon vertices
NOISE_MARGIN_PX = 32

#: Box corners in unit-box coordinates (matches `fusion.perception.geometry.box_corners`).
_UNIT_CORNERS = (
    np.array(
        [
            [1, 1, -1],
            [1, -1, -1],
            [-1, -1, -1],
            [-1, 1, -1],
            [1, 1, 1],
            [1, -1, 1],
            [-1, -1, 1],
            [-1, 1, 1],
        ],
        dtype=np.float64,
    )
    / 2
)
#: Faces (front, back, left, right, top) as corner indices, and their outward normals.
_FACES = np.array([[0, 1, 5, 4], [2, 3, 7, 6], [3, 0, 4, 7], [1, 2, 6, 5], [4, 5, 6, 7]])
_FACE_NORMALS = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1]], np.float64)

_NIGHT_EMISSIVE = {
    TAIL_LIGHT: (50.0, 40.0, 255.0),
    HEAD_LIGHT: (235.0, 250.0, 255.0),
    LAMP: (170.0, 230.0, 255.0),
}


def camera_calibrations(width_px: int, height_px: int) -> tuple[Calibration, Calibration]:
    """The (camera, radar) calibrations of the simulated rig, ``clock="sim"``, capture_ns 0."""
    base = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # OpenCV -> radar axes
    cp, sp = math.cos(CAMERA_PITCH_RAD), math.sin(CAMERA_PITCH_RAD)
    pitch = np.array([[cp, 0.0, sp], [0.0, 1.0, 0.0], [-sp, 0.0, cp]])
    cr, sr = math.cos(CAMERA_ROLL_RAD), math.sin(CAMERA_ROLL_RAD)
    roll = np.array([[1.0, 0.0, 0.0], [0.0, cr, -sr], [0.0, sr, cr]])
    rotation = ex.matmul(ex.matmul(ex.matmul(ex.rotation_z(CAMERA_YAW_RAD), pitch), roll), base)
    cam_to_ref = make_transform(rotation, np.array(CAMERA_POSITION_M))
    focal = width_px / 2 / math.tan(math.radians(HORIZONTAL_FOV_DEG) / 2)
    K = np.array(
        [
            [focal, 0.0, width_px / 2 + 0.0025 * width_px],
            [0.0, focal, height_px / 2 - 0.004 * height_px],
            [0.0, 0.0, 1.0],
        ]
    )
    camera = Calibration(
        sensor_id="camera_front",
        clock="sim",
        sensor_to_ref=cam_to_ref,
        intrinsics=K,
        distortion=np.zeros(5),
        width_px=width_px,
        height_px=height_px,
    )
    radar = Calibration(
        sensor_id="radar",
        clock="sim",
        sensor_to_ref=np.eye(4),
        intrinsics=np.zeros((3, 3)),
        distortion=np.zeros(5),
    )
    return camera, radar


def world_to_ref(ego: EgoState, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World ground-plane points -> radar frame x, y (the radar frame is the ego's)."""
    c, s = math.cos(ego.yaw), math.sin(ego.yaw)
    dx, dy = x - ego.x, y - ego.y
    return c * dx + s * dy, -s * dx + c * dy


def _fixed(uv: np.ndarray) -> np.ndarray:
    """Pixel coordinates -> int32 fixed point with `SHIFT_BITS` fractional bits."""
    return np.round(uv * (1 << SHIFT_BITS)).astype(np.int32)


def _clip_near(poly_cam: np.ndarray) -> np.ndarray:
    """Sutherland-Hodgman clip of one (K, 3) camera-frame polygon against z >= NEAR_M."""
    out = []
    n = len(poly_cam)
    for i in range(n):
        a, b = poly_cam[i], poly_cam[(i + 1) % n]
        if a[2] >= NEAR_M:
            out.append(a)
        if (a[2] >= NEAR_M) != (b[2] >= NEAR_M):
            t = (NEAR_M - a[2]) / (b[2] - a[2])
            out.append(a + t * (b - a))
    return np.array(out).reshape(-1, 3)


class Renderer:
    """Draws frames of a `World` through a `CameraModel`; one per drive (it holds noise)."""

    def __init__(self, world: World, camera: CameraModel, rng: np.random.Generator) -> None:
        self.world, self.camera, self.config = world, camera, world.config
        self.rng = rng
        c: ScenarioConfig = world.config
        self.width, self.height = camera.width_px, camera.height_px
        # ref -> camera: the transpose of the rotation, and minus it applied to the position.
        self.cam_rotation = camera.cam_to_ref[:3, :3].T.copy()
        self.cam_pos_ref = camera.cam_to_ref[:3, 3]
        self.cam_offset = -ex.apply(self.cam_rotation, self.cam_pos_ref)
        self.K = camera.K
        self.haze_bgr = np.array(c.sky_horizon_bgr, dtype=np.float64)
        sun_az, sun_el = rng.uniform(-np.pi, np.pi), rng.uniform(0.5, 1.0)
        self.sun_world = np.array(
            [
                math.cos(sun_el) * math.cos(sun_az),
                math.cos(sun_el) * math.sin(sun_az),
                math.sin(sun_el),
            ]
        )
        self.asphalt = np.array([95.0, 95.0, 100.0]) + rng.normal(0, 8.0)
        self.light_phase = rng.uniform(0, 2 * np.pi, 2)
        self.light_period_s = rng.uniform(4.0, 9.0, 2)
        # Road sample offsets along s: dense near the ego, sparser far away.
        offsets = [-8.0]
        while offsets[-1] < c.draw_distance_m:
            offsets.append(offsets[-1] + 1.0 + 0.05 * max(offsets[-1], 0.0))
        self.road_offsets = np.array(offsets)
        self.background = self._background()
        self.hood = self._hood_polygon()
        self.noise_add, self.noise_sub = self._noise_bank(rng, c.noise_sigma)

    def _noise_bank(self, rng: np.random.Generator, sigma: float):
        """Two frames of Gaussian sensor noise, as + and - parts for saturating uint8 adds."""
        h, w = self.height + NOISE_MARGIN_PX, self.width + NOISE_MARGIN_PX
        noise = rng.standard_normal((2, h, w, 3), dtype=np.float32) * np.float32(sigma)
        return np.clip(noise, 0, 255).astype(np.uint8), np.clip(-noise, 0, 255).astype(np.uint8)

    # --- static layers ----------------------------------------------------------------

    def _background(self) -> np.ndarray:
        c = self.config
        far = np.array([[5000.0, 0.0, -RADAR_HEIGHT_M]])
        uv = self._project(self._to_cam(far))
        horizon = float(np.clip(uv[0, 1], 1, self.height - 1))
        rows = np.arange(self.height, dtype=np.float64)[:, None]
        t = ex.power(np.clip(rows / horizon, 0.0, 1.0), 0.7)
        sky = (1 - t) * np.array(c.sky_top_bgr) + t * np.array(c.sky_horizon_bgr)
        img = np.ascontiguousarray(
            np.broadcast_to(sky[:, None, :], (self.height, self.width, 3)).astype(np.uint8)
        )
        bands = [0.0, 6.0, 12.0, 25.0, 50.0, 100.0, 200.0, 400.0, 5000.0]
        ground = np.array(c.ground_bgr, dtype=np.float64)
        for near, far_x in itertools.pairwise(bands):
            half = 3 * far_x + 50
            quad = np.array(
                [[near, -half, 0], [near, half, 0], [far_x, half, 0], [far_x, -half, 0]],
                dtype=np.float64,
            )
            quad[:, 2] = -RADAR_HEIGHT_M
            mid = (near + far_x) / 2
            colour = self._light(ground, np.array([mid]), np.array([0.0]), np.array([[0, 0, 1.0]]))
            self._fill(img, None, quad, colour[0], 0)
        return img

    def _hood_polygon(self) -> np.ndarray:
        ys = np.linspace(-1.0, 1.0, 9)
        front = np.stack([0.05 - 0.25 * ys**2, ys * 0.95, 0.45 - 0.12 * ys**2], axis=1)
        back = front[::-1].copy()
        back[:, 0] = self.cam_pos_ref[0] + 0.6
        back[:, 2] = self.cam_pos_ref[2] - 0.6
        return np.concatenate([front, back])

    # --- shading ----------------------------------------------------------------------

    def _light(self, colour, x_ref, y_ref, normal_ref, sun_ref=None) -> np.ndarray:
        """Colours (N, 3) of surfaces at ref points (x, y) with normals (N, 3)."""
        c = self.config
        dist = ex.hypot(x_ref, y_ref)
        if c.night:
            bearing = ex.arctan2(y_ref, np.maximum(x_ref, 1e-3))
            beam = np.where(x_ref > 0, ex.exp(-((bearing / 0.45) ** 2)), 0.0)
            to_ego = (
                -np.stack([x_ref, y_ref, np.zeros_like(x_ref)], axis=1)
                / np.maximum(dist, 1e-3)[:, None]
            )
            facing = np.clip(ex.dot_last(normal_ref, to_ego), 0.0, 1.0)
            facing = np.maximum(facing, 0.35 * normal_ref[:, 2])  # the lit ground and roofs
            intensity = c.ambient + 2.2 * beam * facing / (1 + (dist / 20.0) ** 2)
        else:
            sun = self.sun_world if sun_ref is None else sun_ref
            intensity = (
                c.ambient
                + c.sun_strength * np.clip(ex.dot_last(normal_ref, sun), 0.0, 1.0)
                + 0.12 * normal_ref[:, 2]
            )
        lit = np.asarray(colour, dtype=np.float64) * intensity[:, None]
        fog = ex.exp(-dist / c.haze_m)[:, None]
        return np.clip(lit * fog + self.haze_bgr * (1 - fog), 0, 255)

    # --- drawing ----------------------------------------------------------------------

    def _to_cam(self, pts_ref: np.ndarray) -> np.ndarray:
        return ex.apply(self.cam_rotation, pts_ref, self.cam_offset)

    def _project(self, pts_cam: np.ndarray) -> np.ndarray:
        uvw = ex.apply(self.K, pts_cam)
        uv = uvw[..., :2] / uvw[..., 2:3]
        return np.clip(uv, -1e5, 1e5)

    def _fill(self, img, ids, quad_ref: np.ndarray, colour, object_id: int) -> None:
        """Fill one reference-frame polygon (clipped at the near plane)."""
        cam = self._to_cam(quad_ref)
        if np.any(cam[:, 2] < NEAR_M):
            cam = _clip_near(cam)
        if len(cam) < 3:
            return
        pts = _fixed(self._project(cam))
        cv2.fillPoly(img, [pts], [float(v) for v in colour], cv2.LINE_8, SHIFT_BITS)
        if ids is not None:
            cv2.fillPoly(ids, [pts >> 1], int(object_id), cv2.LINE_8, SHIFT_BITS)

    def _on_screen(self, uv: np.ndarray) -> np.ndarray:
        """Mask of polygons (N, K, 2) whose bounding box meets the image."""
        lo, hi = uv.min(axis=1), uv.max(axis=1)
        return (
            (hi[:, 0] >= 0) & (hi[:, 1] >= 0) & (lo[:, 0] < self.width) & (lo[:, 1] < self.height)
        )

    def _quads(self, img, quads_ref: np.ndarray, colours: np.ndarray) -> None:
        """Fill many ground quads (N, 4, 3) with colours (N, 3); vectorised projection."""
        cam = self._to_cam(quads_ref)
        depth = cam[..., 2]
        front = np.all(depth >= NEAR_M, axis=1)
        uv = self._project(np.where(front[:, None, None], cam, 1.0))
        pts = _fixed(uv)
        cols = np.round(colours).tolist()
        for i in np.flatnonzero(front & self._on_screen(uv)).tolist():
            cv2.fillPoly(img, [pts[i]], cols[i], cv2.LINE_8, SHIFT_BITS)
        for i in np.flatnonzero(~front & np.any(depth >= NEAR_M, axis=1)).tolist():
            poly = _fixed(self._project(_clip_near(cam[i])))
            cv2.fillPoly(img, [poly], cols[i], cv2.LINE_8, SHIFT_BITS)

    def _strip_quads(self, ego: EgoState, s: np.ndarray, d_lo: float, d_hi: float) -> np.ndarray:
        """Quads (N-1, 4, 3) in the ref frame covering d in [d_lo, d_hi] between samples s."""
        road = self.world.road
        n = len(s)
        xs, ys, _ = road.to_world(np.concatenate([s, s]), np.repeat([d_lo, d_hi], n))
        xr, yr = world_to_ref(ego, xs, ys)
        pts = np.stack([xr, yr, np.full_like(xr, -RADAR_HEIGHT_M)], axis=1)
        a, b = pts[:n], pts[n:]
        return np.stack([a[:-1], b[:-1], b[1:], a[1:]], axis=1)

    def _draw_road(self, img, ego: EgoState, s_ego: float) -> None:
        c, lay = self.config, self.world.layout
        s = s_ego + self.road_offsets
        up = np.array([[0.0, 0.0, 1.0]])

        def surface(d_lo, d_hi, colour, lift=0.0):
            # At night the headlight falloff across the road needs narrow strips.
            n_strips = int(np.ceil((d_hi - d_lo) / 1.6)) if c.night else 1
            edges = np.linspace(d_lo, d_hi, n_strips + 1)
            quads = np.concatenate(
                [self._strip_quads(ego, s, lo, hi) for lo, hi in itertools.pairwise(edges)]
            )
            quads[..., 2] += lift
            mid = quads.mean(axis=1)
            cols = self._light(colour, mid[:, 0], mid[:, 1], np.repeat(up, len(mid), 0))
            self._quads(img, quads, cols)

        surface(-lay.asphalt_edge, lay.asphalt_edge, self.asphalt)
        for side in (-1.0, 1.0):
            if c.bike_lane_m:
                surface(*sorted((side * lay.bike[0], side * lay.bike[1])), (80.0, 90.0, 150.0))
            if c.sidewalk_m:
                surface(
                    *sorted((side * lay.sidewalk[0], side * lay.sidewalk[1])),
                    (150.0, 155.0, 160.0),
                    0.12,
                )
        white = np.array([225.0, 225.0, 225.0])
        # Solid lines: road edges, and the centre line (or median edges).
        solid = [side * (lay.road_edge - 0.2) for side in (-1.0, 1.0)]
        solid += [-lay.median - 0.15, lay.median + 0.15] if lay.median else [0.0]
        near_s = s[s < s_ego + 90.0]
        for d in solid:
            colour = (40.0, 190.0, 225.0) if d == 0.0 else white
            surface_s = near_s
            quads = self._strip_quads(ego, surface_s, d - 0.07, d + 0.07)
            quads[..., 2] += 0.005
            mid = quads.mean(axis=1)
            cols = self._light(colour, mid[:, 0], mid[:, 1], np.repeat(up, len(mid), 0))
            self._quads(img, quads, cols)
        # Dashed lines between lanes of one direction; dashes are fixed to the road.
        period, dash = (12.0, 4.0) if lay.median else (9.0, 3.0)
        starts = np.arange(np.floor((s_ego - 8.0) / period) * period, s_ego + 90.0, period)
        for k in range(1, lay.lanes):
            for side in (-1.0, 1.0):
                d = side * (lay.median + k * lay.lane_width)
                quads = []
                for s0 in starts:
                    quads.append(
                        self._strip_quads(ego, np.array([s0, s0 + dash]), d - 0.07, d + 0.07)
                    )
                quads = np.concatenate(quads)
                quads[..., 2] += 0.005
                mid = quads.mean(axis=1)
                cols = self._light(white, mid[:, 0], mid[:, 1], np.repeat(up, len(mid), 0))
                self._quads(img, quads, cols)

    def _draw_shadows(self, img, ego: EgoState, xr, yr, yaw_rel, sizes) -> None:
        sun_ref = ex.apply(ex.rotation_z(-ego.yaw), self.sun_world)
        shift = -sun_ref[:2] / max(sun_ref[2], 0.3) * 0.4
        quads = []
        for x, y, yaw, (length, width, _) in zip(xr, yr, yaw_rel, sizes, strict=True):
            corners = _UNIT_CORNERS[:4, :2] * [length + 0.3, width + 0.3]
            turned = ex.apply(ex.rotation_z(float(yaw))[:2, :2], corners)
            corners = turned + np.array([x, y]) + shift
            quads.append(np.column_stack([corners, np.full(4, -RADAR_HEIGHT_M + 0.01)]))
        if quads:
            quads = np.array(quads)
            cols = np.repeat((self.asphalt * 0.45)[None], len(quads), 0)
            self._quads(img, quads, cols)

    def _parts(self, x, y, yaw, parts_lists, ids):
        """Flatten objects' parts to arrays: centres, yaw, size, colour, kind, object id."""
        rows = []
        for ox, oy, oyaw, parts, oid in zip(x, y, yaw, parts_lists, ids, strict=True):
            c, s = math.cos(oyaw), math.sin(oyaw)
            for p in parts:
                px = ox + c * p.offset[0] - s * p.offset[1]
                py = oy + s * p.offset[0] + c * p.offset[1]
                rows.append(
                    (px, py, p.offset[2] - RADAR_HEIGHT_M, oyaw, *p.size, *p.colour, p.kind, oid)
                )
        return np.array(rows, dtype=np.float64).reshape(-1, 12)

    def render(
        self, t: float, ego: EgoState, state: State, actor_idx: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The BGR image at time `t` and the occluded fraction of actors `actor_idx`.

        Occlusion is -1 for an actor the camera does not see at all.
        """
        c = self.config
        img = self.background.copy()
        ids = np.zeros((self.height // 2 + 1, self.width // 2 + 1), dtype=np.uint16)
        s_ego = float(self.world.ego_s(t))
        self._draw_road(img, ego, s_ego)

        ax, ay = world_to_ref(ego, state.x[actor_idx], state.y[actor_idx])
        ayaw = state.yaw[actor_idx] - ego.yaw
        asizes = self.world.actors.size[actor_idx]
        if not c.night:
            ahead = (ax > -5) & (ex.hypot(ax, ay) < 80)
            self._draw_shadows(img, ego, ax[ahead], ay[ahead], ayaw[ahead], asizes[ahead])

        scenery = self.world.scenery
        sx, sy = world_to_ref(ego, scenery.x, scenery.y)
        near_scenery = np.flatnonzero((sx > -25) & (ex.hypot(sx, sy) < c.draw_distance_m + 30))
        parts = self._parts(
            np.concatenate([ax, sx[near_scenery]]),
            np.concatenate([ay, sy[near_scenery]]),
            np.concatenate([ayaw, scenery.yaw[near_scenery] - ego.yaw]),
            [self.world.actors.parts[i] for i in actor_idx]
            + [scenery.parts[i] for i in near_scenery],
            list(range(1, len(actor_idx) + 1)) + [0] * len(near_scenery),
        )
        silhouettes = self._draw_parts(img, ids, ego, parts, len(actor_idx))
        if c.night:
            hood_colour = np.array([90.0, 60.0, 40.0]) * (c.ambient + 0.1)
        else:
            hood_colour = self._light(
                (90.0, 60.0, 40.0), np.array([3.0]), np.array([0.0]), np.array([[0.3, 0.0, 0.95]])
            )[0]
        self._fill(img, ids, self.hood, hood_colour, 0)
        occlusion = self._occlusion(ids, silhouettes)
        return self._finish(img, t, ego), occlusion

    def _draw_parts(self, img, ids, ego: EgoState, parts: np.ndarray, n_actors: int):
        c = self.config
        if len(parts) == 0:
            return [[] for _ in range(n_actors)]
        centre = parts[:, 0:3]
        yaw, size, colour = parts[:, 3], parts[:, 4:7], parts[:, 7:10]
        kind, owner = parts[:, 10].astype(int), parts[:, 11].astype(int)
        cos, sin = ex.cos(yaw), ex.sin(yaw)
        rot = np.zeros((len(parts), 3, 3))
        rot[:, 0, 0], rot[:, 0, 1] = cos, -sin
        rot[:, 1, 0], rot[:, 1, 1] = sin, cos
        rot[:, 2, 2] = 1.0
        local = _UNIT_CORNERS[None] * size[:, None, :]
        corners = ex.apply(rot[:, None], local) + centre[:, None, :]
        cam = self._to_cam(corners)
        depth = cam[..., 2]
        seen = np.any(depth >= NEAR_M, axis=1)
        uv_all = self._project(np.where(depth[..., None] >= NEAR_M, cam, 1.0))
        normals = ex.apply(rot[:, None], _FACE_NORMALS[None])  # (P, 5, 3)
        face_centres = corners[:, _FACES].mean(axis=2)  # (P, 5, 3)
        facing = ex.dot_last(normals, self.cam_pos_ref - face_centres) > 0
        n_p = len(parts)
        shade = self._light(
            np.repeat(colour, 5, axis=0),
            face_centres[..., 0].ravel(),
            face_centres[..., 1].ravel(),
            normals.reshape(-1, 3),
            ex.apply(ex.rotation_z(-ego.yaw), self.sun_world),
        ).reshape(n_p, 5, 3)
        if c.night:
            for k, glow in _NIGHT_EMISSIVE.items():
                shade[kind == k] = glow
        order = np.argsort(-ex.norm_last(centre - self.cam_pos_ref), kind="stable")
        all_front = np.all(depth >= NEAR_M, axis=1)
        drawable = (seen & ~all_front) | (all_front & self._on_screen(uv_all))
        face_pts = np.ascontiguousarray(_fixed(uv_all)[:, _FACES])  # (P, 5, 4, 2)
        half_pts = face_pts >> 1
        colours = np.round(shade).tolist()
        faces_of = [[f for f, v in enumerate(row) if v] for row in facing.tolist()]
        owners = owner.tolist()
        silhouettes: list[list[np.ndarray]] = [[] for _ in range(n_actors)]
        for p in order[drawable[order]].tolist():
            if all_front[p]:
                polys = [face_pts[p, f] for f in faces_of[p]]
                halves = [half_pts[p, f] for f in faces_of[p]]
                cols = [colours[p][f] for f in faces_of[p]]
            else:
                polys, cols = [], []
                for f in faces_of[p]:
                    poly = _clip_near(cam[p, _FACES[f]])
                    if len(poly) < 3:
                        continue
                    uv = self._project(poly)
                    if self._on_screen(uv[None])[0]:
                        polys.append(_fixed(uv))
                        cols.append(colours[p][f])
                halves = [q >> 1 for q in polys]
            if not polys:
                continue
            for poly, col in zip(polys, cols, strict=True):
                cv2.fillPoly(img, [poly], col, cv2.LINE_8, SHIFT_BITS)
            cv2.fillPoly(ids, halves, owners[p], cv2.LINE_8, SHIFT_BITS)
            if owners[p] > 0:
                silhouettes[owners[p] - 1].extend(halves)
        return silhouettes

    def _occlusion(self, ids: np.ndarray, silhouettes: list[list[np.ndarray]]) -> np.ndarray:
        counts = np.bincount(ids.ravel(), minlength=len(silhouettes) + 1)
        occlusion = np.full(len(silhouettes), -1.0, dtype=np.float32)
        size = np.array([ids.shape[1], ids.shape[0]])
        for i, polys in enumerate(silhouettes):
            if not polys:
                continue
            pts = np.concatenate(polys)
            lo = np.maximum(pts.min(axis=0) >> SHIFT_BITS, 0)
            hi = np.minimum((pts.max(axis=0) >> SHIFT_BITS) + 2, size)
            if np.any(hi <= lo):
                continue
            if counts[i + 1] == 0:
                occlusion[i] = 1.0  # in view, but painted over entirely
                continue
            roi = np.zeros((hi[1] - lo[1], hi[0] - lo[0]), dtype=np.uint8)
            offset = (lo << SHIFT_BITS).astype(np.int32)
            cv2.fillPoly(roi, [q - offset for q in polys], 1, cv2.LINE_8, SHIFT_BITS)
            full = int(np.count_nonzero(roi))
            if full:
                occlusion[i] = float(np.clip(1.0 - counts[i + 1] / full, 0.0, 1.0))
        return occlusion

    def skip(self) -> None:
        """Pass over a frame without drawing it: take the random draws it would have taken,
        so the frames after it are the same as in a drive where it was drawn."""
        self._noise_window()

    def _noise_window(self) -> tuple[int, tuple[slice, slice]]:
        k = int(self.rng.integers(2))
        oy, ox = self.rng.integers(0, NOISE_MARGIN_PX, 2)
        return k, (slice(oy, oy + self.height), slice(ox, ox + self.width))

    def _finish(self, img: np.ndarray, t: float, ego: EgoState) -> np.ndarray:
        c = self.config
        phase = 2 * np.pi * t / self.light_period_s + self.light_phase
        gain = 1.0 + c.light_variation * (0.7 * math.sin(phase[0]) + 0.3 * math.sin(phase[1]))
        if abs(gain - 1.0) > 1e-3:
            img = cv2.convertScaleAbs(img, alpha=gain)
        exposure_s = c.exposure_us * 1e-6
        blur_px = round(exposure_s * self.K[0, 0] * (abs(ego.yaw_rate) + ego.speed / 60.0))
        if blur_px >= 2:
            img = cv2.blur(img, (blur_px + 1, 1))
        k, window = self._noise_window()
        img = cv2.add(img, self.noise_add[k][window])
        return cv2.subtract(img, self.noise_sub[k][window])
