"""Drawing and the viewer's frame matching."""

from __future__ import annotations

import numpy as np

from fusion import viz
from fusion.runtime.testing import forward_camera_calibration
from fusion.wire.messages import (
    RADAR_POINT_DTYPE,
    Calibration,
    CameraFrame,
    Detections,
    empty_detections,
)
from nodes.viewer import Viewer

W, H = 320, 180


def calibration() -> Calibration:
    return forward_camera_calibration(W, H)


def one_car() -> np.ndarray:
    det = empty_detections(1)
    det[0] = (0, 0.9, 15.0, 0.0, 0.0, 4.5, 1.9, 1.5, 0.0, 0.0, 0.0)
    return det


def test_box_and_points_are_drawn_where_they_project() -> None:
    from fusion.perception.geometry import CameraModel

    camera = CameraModel.from_calibration(calibration())
    points = np.zeros(1, RADAR_POINT_DTYPE)
    points[0]["x"], points[0]["y"] = 20.0, 5.0
    out = viz.draw_camera(np.zeros((H, W, 3), np.uint8), camera, one_car(), points)
    assert out.any()
    u, v = camera.project(np.array([[20.0, 5.0, 0.0]]))[0][0]
    assert out[int(v), int(u)].any()  # the radar point
    assert not out[:, : W // 4].any()  # a car straight ahead leaves the left edge empty
    bev = viz.draw_bev(200, one_car(), points)
    assert bev.shape == (200, 200, 3) and (bev != 24).any()


def test_viewer_matches_detections_to_their_frame() -> None:
    viewer = Viewer(width_px=160)
    viewer.update("calibration", calibration())
    for seq in range(3):
        viewer.update("camera", CameraFrame(image=np.full((H, W, 3), seq * 50, np.uint8), seq=seq))
    picture = viewer.update("detections", Detections(objects=one_car(), source_seqs={"camera": 1}))
    assert picture.shape == (90, 160 + 90, 3)
    assert picture[60, 5, 0] == 50  # drawn over frame 1, not the newest
    missing = viewer.update("detections", Detections(objects=one_car(), source_seqs={"camera": 99}))
    assert missing is None and viewer.unmatched == 1


def test_video_sink_writes_a_playable_file(tmp_path) -> None:
    import cv2

    sink = viz.VideoSink(str(tmp_path / "v.mp4"), fps=10)
    for i in range(5):
        sink.write(np.full((64, 96, 3), i * 40, np.uint8))
    sink.close()
    capture = cv2.VideoCapture(str(tmp_path / "v.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 5


def test_viewer_node_writes_a_video(tmp_path) -> None:
    import signal
    import subprocess
    import sys
    import time

    import cv2

    from fusion.runtime.transport import Publisher

    out = tmp_path / "v.mp4"
    proc = subprocess.Popen(
        [sys.executable, "-m", "nodes.viewer", "-o", str(out), "--width", "160"]
    )
    pubs = {t: Publisher(t) for t in ("calibration", "camera", "detections")}
    try:
        for pub in pubs.values():
            assert pub.wait_for_subscribers(1, timeout_s=30)
        pubs["calibration"].send(calibration())
        for seq in range(5):
            pubs["camera"].send(CameraFrame(image=np.zeros((H, W, 3), np.uint8), seq=seq))
            time.sleep(0.02)
            pubs["detections"].send(Detections(objects=one_car(), source_seqs={"camera": seq}))
            time.sleep(0.05)
        time.sleep(0.5)
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()
        for pub in pubs.values():
            pub.close()
    assert int(cv2.VideoCapture(str(out)).get(cv2.CAP_PROP_FRAME_COUNT)) == 5


def test_viewer_counts_what_it_cannot_trust_and_goes_on() -> None:
    viewer = Viewer(width_px=160)
    bad = calibration()
    bad.intrinsics[2, 2] = 0.0  # would divide by zero when projecting
    assert viewer.update("calibration", bad) is None and viewer.camera is None
    lying = CameraFrame(image=np.zeros((H, W, 3), np.uint8), width_px=W * 100, height_px=H)
    assert viewer.update("camera", lying) is None
    not_a_camera = calibration()
    not_a_camera.intrinsics, not_a_camera.width_px, not_a_camera.height_px = np.zeros((3, 3)), 0, 0
    assert viewer.update("calibration", not_a_camera) is None
    assert viewer.rejected == {"bad_calibration": 2, "bad_image": 1}
    viewer.update("calibration", calibration())
    viewer.update("camera", CameraFrame(image=np.zeros((H, W, 3), np.uint8), seq=1))
    picture = viewer.update("detections", Detections(objects=one_car(), source_seqs={"camera": 1}))
    assert picture is not None
