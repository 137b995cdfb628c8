"""The driving simulator: determinism, timing, geometry of truth vs. camera and radar, scenarios."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from fusion.cli import main as fusion_main
from fusion.errors import ConfigError
from fusion.perception.geometry import CameraModel, box_corners
from fusion.sim import SCENARIOS, simulate
from fusion.wire import codec
from fusion.wire.messages import CLASS_NAMES, RADAR_POINT_DTYPE

W, H = 640, 360
CAR, TRUCK = CLASS_NAMES.index("car"), CLASS_NAMES.index("truck")


def _drive(scenario: str, seed: int, duration_s: float, **kw) -> list:
    return list(simulate(scenario, seed=seed, duration_s=duration_s, width_px=W, height_px=H, **kw))


@pytest.fixture(scope="module")
def city():
    return _drive("city", seed=2, duration_s=6.0)


@pytest.fixture(scope="module")
def highway():
    return _drive("highway", seed=2, duration_s=2.0)


def _by_topic(msgs, topic):
    return [m for t, m in msgs if t == topic]


def _camera_model(msgs) -> CameraModel:
    calib = next(m for t, m in msgs if t == "calibration" and m.sensor_id == "camera_front")
    return CameraModel.from_calibration(calib)


def _image(frame) -> np.ndarray:
    return cv2.imdecode(np.asarray(frame.image), cv2.IMREAD_COLOR)


def _bytes(topic, msg) -> bytes:
    return b"".join(bytes(f) for f in codec.encode(topic, msg))


def test_same_seed_gives_identical_bytes_and_other_seeds_differ():
    a = [_bytes(t, m) for t, m in _drive("city", seed=7, duration_s=0.8)]
    b = [_bytes(t, m) for t, m in _drive("city", seed=7, duration_s=0.8)]
    c = [_bytes(t, m) for t, m in _drive("city", seed=8, duration_s=0.8)]
    assert a == b
    assert a != c


def test_calibrations_come_first_and_describe_the_rig(city):
    (t0, cam), (t1, radar) = city[0], city[1]
    assert (t0, t1) == ("calibration", "calibration")
    assert (cam.sensor_id, radar.sensor_id) == ("camera_front", "radar")
    np.testing.assert_array_equal(radar.sensor_to_ref, np.eye(4))
    model = CameraModel.from_calibration(cam)
    assert (model.width_px, model.height_px) == (W, H)
    np.testing.assert_array_equal(cam.distortion, 0.0)
    position = cam.sensor_to_ref[:3, 3]
    assert position[0] < 0 and position[2] > 0  # behind and above the radar
    optical_axis = cam.sensor_to_ref[:3, :3] @ [0.0, 0.0, 1.0]
    assert optical_axis[0] > 0.99  # looking forward
    # A point straight ahead lands near the image centre.
    uv, _ = model.project(np.array([[50.0, 0.0, 0.0]]))
    assert abs(uv[0, 0] - W / 2) < 0.05 * W and abs(uv[0, 1] - H / 2) < 0.1 * H
    # Re-sent once per second for late subscribers.
    times = sorted({m.capture_ns for m in _by_topic(city, "calibration")})
    assert times == [k * 1_000_000_000 for k in range(6)]


def test_messages_are_time_ordered_with_nominal_camera_and_jittered_radar_rates(city):
    stamps = [m.capture_ns for _, m in city]
    assert stamps == sorted(stamps)
    assert {m.clock for _, m in city} == {"sim"}
    camera = np.array([m.capture_ns for m in _by_topic(city, "camera")])
    assert len(camera) == 120
    np.testing.assert_array_equal(np.diff(camera), 50_000_000)
    radar = np.array([m.capture_ns for m in _by_topic(city, "radar")])
    periods_s = np.diff(radar) * 1e-9
    assert abs(periods_s.mean() - 1 / 13) < 0.002
    assert periods_s.std() > 1e-4  # jitter
    assert not set(radar) & set(camera)  # not aligned with the camera
    for topic in ("camera", "radar", "ego_motion", "ground_truth"):
        assert [m.seq for m in _by_topic(city, topic)] == list(range(len(_by_topic(city, topic))))
    for topic in ("ego_motion", "ground_truth"):
        np.testing.assert_array_equal([m.capture_ns for m in _by_topic(city, topic)], camera)
    frame = _by_topic(city, "camera")[0]
    assert frame.encoding == "jpeg" and _image(frame).shape == (H, W, 3)
    assert all(s.points.dtype == RADAR_POINT_DTYPE for s in _by_topic(city, "radar"))


def test_raw_frames_when_no_jpeg_quality():
    frames = _by_topic(_drive("highway", seed=1, duration_s=0.1, jpeg_quality=None), "camera")
    assert frames[0].encoding == "bgr8" and frames[0].image.shape == (H, W, 3)


def test_ground_truth_boxes_project_into_the_image(city):
    model = _camera_model(city)
    checked = 0
    for gt in _by_topic(city, "ground_truth"):
        for box in gt.boxes:
            centre = np.array([[box["x"], box["y"], box["z"]]])
            uv, _depth = model.project(centre)
            bearing = np.degrees(np.arctan2(box["y"], box["x"]))
            if 5 < box["x"] < 80 and abs(bearing) < 25:
                # Well inside the field of view: the centre projects into the image ...
                assert model.in_image(uv)[0], (box, uv)
                # ... and the camera saw the object (occlusion known, 0..1).
                assert 0.0 <= box["occlusion"] <= 1.0
                checked += 1
            if box["x"] < -3:
                assert box["occlusion"] == -1.0  # behind the camera: not seen
    assert checked > 100


def test_visible_objects_are_drawn_where_their_boxes_project(city):
    """Pixels inside an unoccluded near car's projected box differ from the road around it."""
    model = _camera_model(city)
    found = 0
    for frame, gt in zip(_by_topic(city, "camera"), _by_topic(city, "ground_truth"), strict=True):
        image = _image(frame).astype(np.float32)
        for box in gt.boxes:
            if box["class_id"] != CAR or not (6 < box["x"] < 30) or box["occlusion"] > 0.1:
                continue
            corners = box_corners(
                np.array([box["x"], box["y"], box["z"]]),
                np.array([box["l"], box["w"], box["h"]]),
                float(box["yaw"]),
            )
            uv, _ = model.project(corners)
            if not model.in_image(uv).all():
                continue
            (u0, v0), (u1, v1) = uv.min(axis=0).astype(int), uv.max(axis=0).astype(int)
            inside = image[v0:v1, u0:u1].reshape(-1, 3)
            below = image[min(v1 + 3, H - 1), u0:u1]
            # An object, not asphalt: its pixels vary (body, glass, lights) or differ from below.
            assert inside.std(axis=0).max() > 8 or np.abs(inside.mean(0) - below.mean(0)).max() > 15
            found += 1
    assert found > 5


def _points_in_boxes(points, boxes, margin_m):
    """Index of the (enlarged) box each point lies in, -1 for none."""
    owner = np.full(len(points), -1)
    xy = np.stack([points["x"], points["y"]], axis=1).astype(np.float64)
    r = np.hypot(xy[:, 0], xy[:, 1])
    for i, b in enumerate(boxes):
        c, s = np.cos(b["yaw"]), np.sin(b["yaw"])
        d = xy - [b["x"], b["y"]]
        along, across = d @ [c, s], d @ [-s, c]
        m = margin_m + 0.03 * r  # range-dependent azimuth noise
        hit = (np.abs(along) <= b["l"] / 2 + m) & (np.abs(across) <= b["w"] / 2 + m)
        owner[hit & (owner < 0)] = i
    return owner


def _radar_with_truth(msgs):
    """Radar scans paired with ground truth moved to the scan's time (ego-relative motion)."""
    gts, egos = _by_topic(msgs, "ground_truth"), _by_topic(msgs, "ego_motion")
    stamps = np.array([g.capture_ns for g in gts])
    for scan in _by_topic(msgs, "radar"):
        k = int(np.argmin(np.abs(stamps - scan.capture_ns)))
        dt = (scan.capture_ns - stamps[k]) * 1e-9
        boxes, ego = gts[k].boxes.copy(), egos[k]
        boxes["x"] += (boxes["vx"] - ego.speed_mps) * dt
        boxes["y"] += boxes["vy"] * dt
        yield scan, boxes, ego


def test_radar_points_lie_on_objects_or_are_static_clutter(highway):
    on_objects = total = off_static = off_total = 0
    vr_errors = []
    for scan, boxes, ego in _radar_with_truth(highway):
        pts = scan.points
        owner = _points_in_boxes(pts, boxes, margin_m=0.6)
        r = np.hypot(pts["x"], pts["y"])
        static_vr = -ego.speed_mps * pts["x"] / r
        total += len(pts)
        on_objects += int(np.sum(owner >= 0))
        # Points off every object are clutter from static things (kerbs, rails, trees), apart
        # from a few false alarms (checked over all scans below).
        off = owner < 0
        off_static += int(np.sum(np.abs(pts["v_r"][off] - static_vr[off]) < 0.6))
        off_total += int(np.sum(off))
        # On moving vehicles, v_r is the relative velocity along the line of sight.
        for i in np.flatnonzero(owner >= 0):
            b = boxes[owner[i]]
            if b["class_id"] in (CAR, TRUCK) and np.hypot(b["vx"], b["vy"]) > 5:
                rel = np.array([b["vx"] - ego.speed_mps, b["vy"]])
                expected = rel @ [pts["x"][i], pts["y"][i]] / r[i]
                vr_errors.append(pts["v_r"][i] - expected)
    assert on_objects > 0.25 * total
    assert off_static > 0.85 * off_total
    assert len(vr_errors) > 50
    assert np.median(np.abs(vr_errors)) < 0.25


def test_radar_sees_near_cars_with_several_points_spread_over_them(city):
    counts, spreads = [], []
    for scan, boxes, _ in _radar_with_truth(city):
        owner = _points_in_boxes(scan.points, boxes, margin_m=0.4)
        for i, b in enumerate(boxes):
            if (
                b["class_id"] == CAR
                and 3 < b["x"] < 30
                and abs(b["y"]) < 10
                and b["occlusion"] == 0
            ):
                mine = scan.points[owner == i]
                counts.append(len(mine))
                if len(mine) >= 3:
                    spreads.append(max(np.ptp(mine["x"]), np.ptp(mine["y"])))
    assert len(counts) > 20
    assert np.mean(counts) >= 3 and np.mean(np.array(counts) == 0) < 0.2  # misses happen, rarely
    assert np.median(spreads) > 0.8  # over the surface, not a single centre point


def test_scenarios_differ_and_night_is_darker(city, highway):
    night = _drive("night", seed=2, duration_s=0.5)
    brightness = {
        name: np.mean([_image(f).mean() for f in _by_topic(msgs, "camera")[:10]])
        for name, msgs in (("city", city), ("highway", highway), ("night", night))
    }
    assert brightness["night"] < 0.5 * brightness["city"]
    speeds = {
        name: np.mean([e.speed_mps for e in _by_topic(msgs, "ego_motion")])
        for name, msgs in (("city", city), ("highway", highway))
    }
    assert speeds["highway"] > 1.8 * speeds["city"]
    classes = {name: set() for name in ("city", "highway")}
    for name, msgs in (("city", city), ("highway", highway)):
        for gt in _by_topic(msgs, "ground_truth"):
            classes[name].update(CLASS_NAMES[c] for c in gt.boxes["class_id"])
    assert {"pedestrian", "cyclist", "car"} <= classes["city"]
    assert "pedestrian" not in classes["highway"]
    assert set(SCENARIOS) >= {"city", "highway", "night"}


def test_ego_motion_is_plausible(city):
    egos = _by_topic(city, "ego_motion")
    speed = np.array([e.speed_mps for e in egos])
    assert np.all((speed > 5) & (speed < 16))
    # Pose integrates the speed and heading.
    x, y = np.array([e.x_m for e in egos]), np.array([e.y_m for e in egos])
    step = np.hypot(np.diff(x), np.diff(y))
    np.testing.assert_allclose(step, (speed[1:] + speed[:-1]) / 2 * 0.05, rtol=0.02)
    yaw = np.unwrap([e.yaw_rad for e in egos])
    yaw_rate = np.array([e.yaw_rate_rps for e in egos])
    np.testing.assert_allclose(np.diff(yaw) / 0.05, (yaw_rate[1:] + yaw_rate[:-1]) / 2, atol=0.01)


def test_objects_enter_and_leave_the_view(city):
    seen_per_frame = [
        {int(b["track_id"]) for b in gt.boxes if b["occlusion"] >= 0}
        for gt in _by_topic(city, "ground_truth")
    ]
    ever = set().union(*seen_per_frame)
    entered = ever - seen_per_frame[0]
    left = ever - seen_per_frame[-1]
    assert len(entered) >= 2 and len(left) >= 2


def test_velocity_over_ground_matches_box_motion(city):
    gts = _by_topic(city, "ground_truth")
    egos = _by_topic(city, "ego_motion")
    for k in range(0, len(gts) - 1, 10):
        a, b = gts[k], gts[k + 1]
        ids = np.intersect1d(a.boxes["track_id"], b.boxes["track_id"])
        for tid in ids[:20]:
            ba = a.boxes[a.boxes["track_id"] == tid][0]
            bb = b.boxes[b.boxes["track_id"] == tid][0]
            if np.hypot(ba["x"], ba["y"]) > 40:
                continue  # the ego's rotation makes far boxes sweep
            moved = np.array([bb["x"] - ba["x"], bb["y"] - ba["y"]]) / 0.05
            predicted = np.array([ba["vx"] - egos[k].speed_mps, ba["vy"]])
            np.testing.assert_allclose(moved, predicted, atol=0.8)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scenario": "moon"}, "unknown scenario"),
        ({"duration_s": 0}, "duration"),
        ({"camera_rate_hz": 0}, "rates"),
        ({"width_px": 10}, "too small"),
        ({"jpeg_quality": 0}, "JPEG quality"),
    ],
)
def test_bad_parameters_raise_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        simulate(**kwargs)


def test_cli_writes_identical_recordings(tmp_path):
    from fusion.logs.reader import RecordingReader

    paths = [tmp_path / "a.mcap", tmp_path / "b.mcap"]
    for path in paths:
        argv = ["sim", "--scenario", "night", "--seed", "4", "--duration", "0.5",
                "--width", "320", "--height", "180", "-o", str(path)]  # fmt: skip
        assert fusion_main(argv) == 0
    assert paths[0].read_bytes() == paths[1].read_bytes()
    reader = RecordingReader(paths[0])
    try:
        topics = [m.topic for m in reader.messages()]
    finally:
        reader.close()
    assert topics[:2] == ["calibration", "calibration"]
    assert topics.count("camera") == 10 and topics.count("ground_truth") == 10
    assert 5 <= topics.count("radar") <= 7


def test_topic_filter_yields_the_same_messages_without_rendering() -> None:
    def encoded(stream):
        return [b"".join(bytes(f) for f in codec.encode(t, m)) for t, m in stream]

    full = [
        (t, m) for t, m in simulate("city", seed=4, duration_s=1.0, width_px=320, height_px=180)
    ]
    radar_only = list(
        simulate(
            "city",
            seed=4,
            duration_s=1.0,
            width_px=320,
            height_px=180,
            topics={"radar", "ego_motion"},
        )
    )
    assert encoded(radar_only) == encoded((t, m) for t, m in full if t in {"radar", "ego_motion"})
    with pytest.raises(ConfigError, match="no topics"):
        simulate("city", topics={"lidar"})


def test_a_drive_started_late_is_the_same_from_there_and_renders_nothing_before(
    monkeypatch,
) -> None:
    """A restarted producer joins the drive at the present: the calibrations last published
    first, then what the whole drive yields from then on; the frames it skips are not rendered
    (rendering them only to skip them took longer than real time on a busy machine, and the
    camera never caught up)."""
    from fusion.sim.camera import Renderer

    def encoded(stream):
        return [(t, b"".join(bytes(f) for f in codec.encode(t, m))) for t, m in stream]

    options = {"seed": 4, "duration_s": 2.0, "width_px": 320, "height_px": 180}
    drive = list(simulate("city", **options))
    full = encoded([(t, m) for t, m in drive if t == "calibration" and m.capture_ns == 1e9])
    full += encoded((t, m) for t, m in drive if m.capture_ns >= 1.2e9)
    rendered = []
    original = Renderer.render
    monkeypatch.setattr(
        Renderer, "render", lambda self, t, *a: rendered.append(t) or original(self, t, *a)
    )
    late = encoded(simulate("city", start_s=1.2, **options))
    assert late == full and [t for t, _ in late[:2]] == ["calibration", "calibration"]
    assert min(rendered) >= 1.2 and len(rendered) == 16
    with pytest.raises(ConfigError, match="start"):
        simulate("city", start_s=-1.0)
