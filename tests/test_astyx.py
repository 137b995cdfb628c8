"""The Astyx HiRes2019 reader and ``fusion import astyx``: conventions on a tiny hand-made copy
of the format, and the real data (skipped where ../shared/realdata is absent)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from fusion.cli import main as fusion_main
from fusion.datasets import astyx
from fusion.errors import ConfigError
from fusion.learn.baselines import filter_gt_for_eval
from fusion.logs.reader import RecordingReader
from fusion.perception.geometry import CameraModel, box_corners
from fusion.wire.messages import CLASS_NAMES

REAL_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "realdata" / "astyx_hires2019"
_needs_data = pytest.mark.skipif(
    not REAL_ROOT.is_dir(), reason=f"Astyx HiRes2019 not found at {REAL_ROOT}"
)


def realdata(test: Callable[..., None]) -> Callable[..., None]:
    return pytest.mark.realdata(_needs_data(test))


# The real camera calibration (radar is the reference frame).
CAMERA_TO_REF = [
    [0.015721251542359097, 0.0388038506130491, 0.9991231397751291, -0.04286578070231163],
    [-0.9983693562813132, -0.054233366081888695, 0.0178156951919443, -0.0019011493702534147],
    [0.054877145205922295, -0.9977740503554758, 0.0378879601312635, 0.011313703630010682],
    [0.0, 0.0, 0.0, 1.0],
]
K = [[1817.98103, 0.0, 1040.27484], [0.0, 1816.83987, 319.497539], [0.0, 0.0, 1.0]]


def yaw_quaternion(yaw_rad: float) -> list[float]:
    return [math.cos(yaw_rad / 2), 0.0, 0.0, math.sin(yaw_rad / 2)]


def write_fake_astyx(root: Path, n_frames: int = 3) -> Path:
    """A tiny dataset in the Astyx layout: frame i has one car at x = 10 + i and a bus."""
    for sub in ("radar_6455", "camera_front", "calibration", "groundtruth_obj3d"):
        (root / sub).mkdir(parents=True)
    ok, jpeg = cv2.imencode(".jpg", np.full((62, 205, 3), 90, np.uint8))
    assert ok
    for i in range(n_frames):
        stem = f"{i:06d}"
        (root / "radar_6455" / f"{stem}.txt").write_text(
            f"\nX Y Z V_r Mag\n{10.0 + i} 1.5 0.2 2.5 60\n30.0 -4.0 0.5 -1.25 48\n"
        )
        (root / "camera_front" / f"{stem}.jpg").write_bytes(jpeg.tobytes())
        sensors = [
            {"sensor_uid": "radar_6455", "calib_data": {"T_to_ref_COS": np.eye(4).tolist()}},
            {"sensor_uid": "camera_front", "calib_data": {"K": K, "T_to_ref_COS": CAMERA_TO_REF}},
        ]
        (root / "calibration" / f"{stem}.json").write_text(json.dumps({"sensors": sensors}))
        car = {
            "center3d": [10.0 + i, 1.5, -0.5],
            "dimension3d": [4.2, 1.8, 1.5],
            "orientation_quat": yaw_quaternion(0.3),
            "classname": "Car",
            "occlusion": 1,
            "object_id": 7,
        }
        bus = {
            "center3d": [25.0, -3.0, 0.5],
            "dimension3d": [12.0, 2.5, 3.2],
            "orientation_quat": yaw_quaternion(-2.0),
            "classname": "Bus",
            "occlusion": 2,
            "object_id": -1,
        }
        (root / "groundtruth_obj3d" / f"{stem}.json").write_text(
            json.dumps({"frame_index": i, "objects": [car, bus]})
        )
    return root


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    return write_fake_astyx(tmp_path / "astyx")


def test_frame_conventions(fake_root: Path) -> None:
    assert astyx.frame_indices(fake_root) == [0, 1, 2]
    frame = astyx.read_frame(fake_root, 1)

    jpeg = (fake_root / "camera_front" / "000001.jpg").read_bytes()
    assert frame.camera.encoding == "jpeg" and frame.camera.image.tobytes() == jpeg
    assert (frame.camera.width_px, frame.camera.height_px) == (205, 62)

    points = frame.radar.points
    assert points["x"].tolist() == [11.0, 30.0]
    assert points["v_r"].tolist() == [-2.5, 1.25]  # Astyx: positive approaching; ours: away
    assert points["rcs"].tolist() == [60.0, 48.0]
    assert not points["dt_s"].any()

    car, bus = frame.ground_truth.boxes
    assert CLASS_NAMES[car["class_id"]] == "car" and CLASS_NAMES[bus["class_id"]] == "truck"
    assert (car["x"], car["l"], car["w"], car["h"]) == pytest.approx((11.0, 4.2, 1.8, 1.5))
    assert car["yaw"] == pytest.approx(0.3) and bus["yaw"] == pytest.approx(-2.0)
    assert (car["occlusion"], bus["occlusion"]) == pytest.approx((0.5, 0.8))
    assert car["track_id"] == 7
    assert math.isnan(car["vx"]) and math.isnan(car["vy"])

    for msg in (frame.camera, frame.radar, frame.ground_truth, *frame.calibrations):
        assert (msg.seq, msg.capture_ns, msg.clock) == (1, 100_000_000, "assigned")
    camera_calib, radar_calib = frame.calibrations
    assert (camera_calib.sensor_id, radar_calib.sensor_id) == ("camera_front", "radar")
    assert np.allclose(camera_calib.sensor_to_ref, CAMERA_TO_REF)
    assert np.allclose(camera_calib.intrinsics, K)
    assert np.array_equal(radar_calib.sensor_to_ref, np.eye(4))


def test_unknown_class_and_wrong_directory_are_config_errors(
    fake_root: Path, tmp_path: Path
) -> None:
    path = fake_root / "groundtruth_obj3d" / "000000.json"
    data = json.loads(path.read_text())
    data["objects"][0]["classname"] = "Tram"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="Tram"):
        astyx.read_frame(fake_root, 0)
    with pytest.raises(ConfigError, match="not an Astyx"):
        astyx.frame_indices(tmp_path / "nowhere")


def test_default_root_honours_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(astyx.ROOT_ENV, "/data/astyx")
    assert astyx.default_root() == Path("/data/astyx")
    monkeypatch.delenv(astyx.ROOT_ENV)
    assert astyx.default_root().parts[-3:] == ("shared", "realdata", "astyx_hires2019")


def test_jpeg_size_rejects_non_jpeg() -> None:
    with pytest.raises(ConfigError, match="not a JPEG"):
        astyx.jpeg_size(b"\x89PNG....")
    with pytest.raises(ConfigError, match="SOF"):
        astyx.jpeg_size(b"\xff\xd8\xff\xe0\x00\x04ab" + b"\x00" * 8)


def test_import_command_writes_every_frame(fake_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "astyx.mcap"
    assert fusion_main(["import", "astyx", str(fake_root), "-o", str(out)]) == 0
    with RecordingReader(out) as reader:
        messages = [(m.topic, m.log_time_ns, m.decode()) for m in reader.messages()]
    by_topic = {t: [msg for topic, _, msg in messages if topic == t] for t in reader.topics}
    assert [m.seq for m in by_topic["camera"]] == [0, 1, 2]
    assert [m.seq for m in by_topic["ground_truth"]] == [0, 1, 2]
    assert [m.sensor_id for m in by_topic["calibration"]] == ["camera_front", "radar"]
    assert messages[0][0] == "calibration"
    assert all(log_ns == msg.capture_ns for _, log_ns, msg in messages)
    assert by_topic["radar"][2].points["x"][0] == 12.0


def test_import_frame_range(fake_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "part.mcap"
    assert fusion_main(["import", "astyx", str(fake_root), "-o", str(out), "--frames", "1:"]) == 0
    with RecordingReader(out) as reader:
        assert [m.decode().seq for m in reader.messages(["camera"])] == [1, 2]
    assert fusion_main(["import", "astyx", str(fake_root), "-o", str(out), "--frames", "x"]) == 2


@realdata
def test_real_frames_all_read() -> None:
    indices = astyx.frame_indices(REAL_ROOT)
    assert indices == list(range(446))
    for index in indices:
        frame = astyx.read_frame(REAL_ROOT, index)
        assert (frame.camera.width_px, frame.camera.height_px) == (2048, 618)
        assert len(frame.radar.points) > 100
        assert np.isfinite(frame.radar.points["x"]).all()


@realdata
@pytest.mark.slow
def test_real_boxes_fit_camera_and_radar() -> None:
    """Boxes in front of the camera overlap its image, and as DESIGN.md says about 93 % of the
    evaluated cars hold 3+ radar points in their 0.3 m enlarged box; with length and width
    swapped (a wrong ``dimension3d`` or yaw convention) only ~70 % would."""
    in_front = overlapping = 0
    held, held_swapped = [], []
    for index in range(0, 446, 3):
        frame = astyx.read_frame(REAL_ROOT, index)
        camera = CameraModel.from_calibration(frame.calibrations[0])
        for box in frame.ground_truth.boxes:
            centre = np.array([box["x"], box["y"], box["z"]], dtype=float)
            corners = box_corners(centre, np.array([box["l"], box["w"], box["h"]]), box["yaw"])
            uv, depth = camera.project(corners)
            if (depth > 0.1).all():
                in_front += 1
                overlapping += bool(
                    (uv[:, 0].max() >= 0)
                    & (uv[:, 0].min() < camera.width_px)
                    & (uv[:, 1].max() >= 0)
                    & (uv[:, 1].min() < camera.height_px)
                )
        cars = filter_gt_for_eval(frame.ground_truth.boxes, camera)
        cars = cars[cars["class_id"] == CLASS_NAMES.index("car")]
        for car in cars:
            held.append(_points_in_box(frame.radar.points, car, swap=False) >= 3)
            held_swapped.append(_points_in_box(frame.radar.points, car, swap=True) >= 3)
    assert overlapping >= 0.95 * in_front
    assert np.mean(held) > 0.88
    assert np.mean(held) > np.mean(held_swapped) + 0.1


def _points_in_box(points: np.ndarray, box: np.void, swap: bool, margin_m: float = 0.3) -> int:
    dx, dy = points["x"] - box["x"], points["y"] - box["y"]
    c, s = np.cos(box["yaw"]), np.sin(box["yaw"])
    length, width = (box["w"], box["l"]) if swap else (box["l"], box["w"])
    inside = (
        (np.abs(c * dx + s * dy) <= length / 2 + margin_m)
        & (np.abs(-s * dx + c * dy) <= width / 2 + margin_m)
        & (np.abs(points["z"] - box["z"]) <= box["h"] / 2 + margin_m)
    )
    return int(inside.sum())


@realdata
@pytest.mark.slow
def test_real_import_every_frame_and_centres_project(tmp_path: Path) -> None:
    out = tmp_path / "astyx.mcap"
    assert fusion_main(["import", "astyx", str(REAL_ROOT), "-o", str(out)]) == 0
    camera = None
    seen, inside, ahead = [], 0, 0
    with RecordingReader(out) as reader:
        for message in reader.messages(["calibration", "ground_truth"]):
            msg = message.decode()
            if message.topic == "calibration":
                if msg.sensor_id == "camera_front":
                    camera = CameraModel.from_calibration(msg)
                continue
            seen.append(msg.seq)
            boxes = msg.boxes
            uv, _ = camera.project(np.stack([boxes["x"], boxes["y"], boxes["z"]], axis=1))
            # Centres well inside the horizontal field of view (|azimuth| < 25 deg; the camera
            # sees about +-29 deg) and over 10 m ahead (nearer, low ones fall below the image's
            # +-10 deg vertical view) must land inside the image.
            central = (boxes["x"] > 10) & (np.abs(np.arctan2(boxes["y"], boxes["x"])) < 0.44)
            ahead += int(central.sum())
            inside += int(camera.in_image(uv[central]).sum())
    assert seen == list(range(446))
    assert inside == ahead > 1500


@realdata
@pytest.mark.slow
def test_real_sequence_ids_split_into_runs() -> None:
    runs = astyx.sequence_ids(REAL_ROOT, range(80))
    assert sorted(runs) == list(range(80))
    ids = [runs[i] for i in range(80)]
    assert ids == sorted(ids) and ids[0] == 0
    # Frames 0-2 are one parked-car street; 8 -> 9 and 68 -> 69 are clear scene changes.
    assert runs[0] == runs[1] == runs[2]
    assert runs[9] != runs[8] and runs[69] != runs[68]
    assert 10 < len(set(ids)) < 50
