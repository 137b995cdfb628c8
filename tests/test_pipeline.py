"""The fusion node's logic with a stand-in model: modes, budget, bad input, trace."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import pytest

from fusion.perception.image import decode_jpeg
from fusion.perception.pipeline import FusionPipeline, PipelineConfig
from fusion.runtime.testing import forward_camera_calibration
from fusion.wire.messages import (
    RADAR_POINT_DTYPE,
    Calibration,
    CameraFrame,
    EgoMotion,
    RadarScan,
    ReplayControl,
    empty_detections,
)

MS = 1_000_000
W, H = 320, 180


@dataclass
class Cfg:
    input_w: int = 160
    input_h: int = 96


class FakeDetector:
    """Returns one detection per radar point (at the point) and records what it was given."""

    cfg = Cfg()

    def __init__(self, clock=None, infer_ms: float = 0.0) -> None:
        self.calls: list[tuple[str, int, tuple]] = []
        self.clock, self.infer_ms = clock, infer_ms

    def preprocess(self, image, points, camera):
        return image, points

    def infer(self, prepared, mode="fused"):
        if self.clock is not None:
            self.clock.t += int(self.infer_ms * MS)
        image, points = prepared
        self.calls.append((mode, len(points), image.shape))
        return points

    def decode(self, prepared, raw):
        out = empty_detections(len(raw))
        out["x"], out["y"] = raw["x"], raw["y"]
        return out, {"score": 1.0, "recon": 0.5, "kl": 0.5}


class Clock:
    def __init__(self) -> None:
        self.t = 10_000 * MS

    def __call__(self) -> int:
        return self.t


def calibration() -> Calibration:
    return forward_camera_calibration(W, H)


def frame(seq: int, capture_ns: int, image=None, encoding="bgr8") -> CameraFrame:
    image = np.zeros((H, W, 3), np.uint8) if image is None else image
    return CameraFrame(
        image=image,
        encoding=encoding,
        seq=seq,
        capture_ns=capture_ns,
        sensor_id="camera_front",
        trace={"received": capture_ns + MS},
        width_px=W,
        height_px=H,
    )


def scan(seq: int, capture_ns: int, n: int = 3, v_r: float = 0.0) -> RadarScan:
    points = np.zeros(n, RADAR_POINT_DTYPE)
    points["x"] = 10 + np.arange(n)
    points["v_r"] = v_r
    return RadarScan(
        points=points, seq=seq, capture_ns=capture_ns, sensor_id="radar", scan_period_ns=77 * MS
    )


@pytest.fixture
def setup():
    clock = Clock()
    detector = FakeDetector(clock)
    pipe = FusionPipeline(detector, PipelineConfig(budget_ms=50), clock_ns=clock)
    pipe.add("calibration", calibration())
    return pipe, detector, clock


def test_fused_output_with_trace_and_health(setup) -> None:
    pipe, _, clock = setup
    t = clock.t
    pipe.add("radar", scan(0, t - 5 * MS))
    pipe.add("camera", frame(0, t))
    pipe.add("radar", scan(1, t + 70 * MS))  # settles the match
    clock.t += 2 * MS
    outs = pipe.step()
    assert len(outs) == 1
    out = outs[0]
    assert out.mode == "fused" and out.valid and not out.budget_miss
    assert out.source_seqs == {"camera": 0, "radar": 0}
    assert len(out.objects) == 3 and out.health["score"] == 1.0
    stamps = [out.trace[k] for k in ("received", "synced", "preprocessed", "inferred", "decoded")]
    assert stamps == sorted(stamps)
    assert out.capture_ns == t and pipe.counters["fused"] == 1


def test_radar_silent_goes_camera_only_at_once(setup) -> None:
    pipe, det, clock = setup
    pipe.add("camera", frame(0, clock.t))
    outs = pipe.step()
    assert [o.mode for o in outs] == ["camera_only"]
    assert det.calls[0][:2] == ("camera_only", 0)


def test_camera_silent_goes_radar_only_then_back_to_fused(setup) -> None:
    pipe, det, clock = setup
    pipe.add("camera", frame(0, clock.t))
    pipe.add("radar", scan(0, clock.t))
    pipe.step()
    clock.t += 400 * MS  # camera silent past its timeout, radar keeps coming
    pipe.add("radar", scan(1, clock.t))
    outs = pipe.step()
    assert [o.mode for o in outs] == ["radar_only"] and outs[0].source_seqs == {"radar": 1}
    assert det.calls[-1][2] == (H, W, 3)  # a blank image of the calibrated size
    clock.t += 10 * MS
    pipe.add("radar", scan(2, clock.t - 5 * MS))
    pipe.add("camera", frame(1, clock.t))
    pipe.add("radar", scan(3, clock.t + 60 * MS))
    assert [o.mode for o in pipe.step()] == ["fused"]


def test_stale_frame_is_dropped_and_counted(setup) -> None:
    pipe, _, clock = setup
    pipe.add("camera", frame(0, clock.t - 80 * MS))
    assert pipe.step() == [] and pipe.counters["stale"] == 1


def test_slow_model_marks_budget_miss() -> None:
    clock = Clock()
    pipe = FusionPipeline(
        FakeDetector(clock, infer_ms=70), PipelineConfig(budget_ms=50), clock_ns=clock
    )
    pipe.add("calibration", calibration())
    pipe.add("camera", frame(0, clock.t))
    out = pipe.step()[0]
    assert out.budget_miss and pipe.counters["budget_miss"] == 1


def test_unusable_inputs_are_counted_not_raised(setup) -> None:
    pipe, _, clock = setup
    bad_jpeg = frame(0, clock.t, image=np.frombuffer(b"notajpeg", np.uint8).copy(), encoding="jpeg")
    pipe.add("camera", bad_jpeg)
    assert pipe.step() == []
    clock.t += 50 * MS
    pipe.add("camera", frame(1, clock.t, image=np.zeros((100, 100, 3), np.uint8)))  # wrong size
    assert pipe.step() == []
    assert pipe.counters["bad_image"] == 2
    huge = RadarScan(points=np.zeros(200_000, RADAR_POINT_DTYPE), seq=0, sensor_id="radar")
    pipe.add("radar", huge)
    assert pipe.counters["radar_too_many_points"] == 1
    nan_scan = scan(1, clock.t, n=4)
    nan_scan.points["x"][1] = np.nan
    nan_scan.points["v_r"][2] = np.inf
    pipe.add("radar", nan_scan)
    assert pipe.counters["radar_points_nonfinite"] == 2
    broken = calibration()
    broken.sensor_to_ref[0, 0] = np.nan
    pipe.add("calibration", broken)
    assert pipe.counters["bad_calibration"] == 1


def test_no_calibration_drops_or_answers_invalid_in_lockstep() -> None:
    clock = Clock()
    pipe = FusionPipeline(FakeDetector(), PipelineConfig(), clock_ns=clock)
    pipe.add("camera", frame(0, clock.t))
    assert pipe.step() == [] and pipe.counters["no_calibration"] == 1
    lock = FusionPipeline(FakeDetector(), PipelineConfig(answer_every_frame=True), clock_ns=clock)
    lock.add("camera", frame(5, clock.t))
    out = lock.step()[0]
    assert not out.valid and out.source_seqs == {"camera": 5} and len(out.objects) == 0


def test_motion_compensation_uses_ego_motion(setup) -> None:
    pipe, _, clock = setup
    pipe.add("ego_motion", EgoMotion(speed_mps=20.0, capture_ns=clock.t - 10 * MS))
    # Static points straight ahead: raw Doppler is minus the ego speed.
    pipe.add("radar", scan(0, clock.t - 40 * MS, v_r=-20.0))
    pipe.add("camera", frame(0, clock.t))
    pipe.add("radar", scan(1, clock.t + 60 * MS, v_r=-20.0))
    out = pipe.step()[0]
    # Static points seen 40 ms earlier are 0.8 m closer once the ego has moved on.
    np.testing.assert_allclose(out.objects["x"], [9.2, 10.2, 11.2], atol=0.05)
    assert out.health["motion_compensated"] == 1.0 and out.health["ego_age_ms"] == 10.0


def test_ego_motion_too_old_is_not_used_but_counted_and_marked(setup) -> None:
    pipe, _, clock = setup
    pipe.add("ego_motion", EgoMotion(speed_mps=20.0, capture_ns=clock.t - 900 * MS))
    pipe.add("ego_motion", EgoMotion(speed_mps=20.0, capture_ns=clock.t + 300 * MS))
    pipe.add("radar", scan(0, clock.t - 40 * MS, v_r=-20.0))
    pipe.add("camera", frame(0, clock.t))
    pipe.add("radar", scan(1, clock.t + 60 * MS, v_r=-20.0))
    out = pipe.step()[0]
    np.testing.assert_allclose(out.objects["x"], [10, 11, 12])  # not compensated
    assert out.valid and out.health["motion_compensated"] == 0.0
    assert out.health["ego_age_ms"] == 300.0  # the nearest one, 300 ms after the frame
    assert pipe.counters["ego_motion_stale"] == 1


def lockstep_pipeline(clock: Clock, detector=None) -> FusionPipeline:
    pipe = FusionPipeline(
        detector or FakeDetector(clock), PipelineConfig(budget_ms=50, lockstep=True), clock
    )
    pipe.add("calibration", calibration())
    return pipe


def step(sent_until_ns: int, order: str = "", final: bool = False) -> ReplayControl:
    return ReplayControl(
        lockstep=True, rate=0.0, order=order, sent_until_ns=sent_until_ns, final=final
    )


def test_lockstep_waits_for_the_data_not_the_clock() -> None:
    """Capture stamps far behind the clock (a replay slower than real time): nothing is stale
    or over budget, and a frame waits for its step however much wall-clock time passes."""
    clock = Clock()
    pipe = lockstep_pipeline(clock, FakeDetector(clock, infer_ms=70))
    t = clock.t - 5_000 * MS
    pipe.add("radar", scan(0, t - 30 * MS))
    pipe.add("camera", frame(0, t))
    clock.t += 10_000 * MS
    assert pipe.step() == []  # a nearer scan may still come: no deadline in lock-step
    assert pipe.control(step(t + 20 * MS)) == []  # not settled yet: 20 ms < 30 ms
    pipe.add("radar", scan(1, t + 25 * MS))
    (out,) = pipe.control(step(t + 80 * MS))
    assert out.mode == "fused" and out.source_seqs == {"camera": 0, "radar": 1}
    assert not out.budget_miss and pipe.counters["stale"] == 0
    assert pipe.counters["budget_miss"] == 0
    assert pipe.latency_ms.count == 1  # measured from the frame's receipt


def test_lockstep_judges_liveness_on_capture_times() -> None:
    clock = Clock()
    pipe = lockstep_pipeline(clock)
    t = clock.t
    pipe.add("camera", frame(0, t))
    (out,) = pipe.control(step(t + 80 * MS))
    assert out.mode == "camera_only"  # the step says no scan is coming
    # Radar only, 400 ms of capture time later, fed within the same wall-clock instant:
    pipe.add("radar", scan(0, t + 400 * MS))
    outs = pipe.control(step(t + 480 * MS))
    assert [o.mode for o in outs] == ["radar_only"] and outs[0].source_seqs == {"radar": 0}


def test_lockstep_answers_a_late_frame_and_the_last_step_releases_everything() -> None:
    clock = Clock()
    pipe = lockstep_pipeline(clock)
    t = clock.t
    pipe.add("radar", scan(0, t - 30 * MS))
    pipe.add("camera", frame(0, t))
    pipe.add("camera", frame(1, t))  # same stamp again: late for the synchroniser
    outs = pipe.step()
    assert [(o.valid, o.source_seqs) for o in outs] == [(False, {"camera": 1})]
    pipe.add("camera", frame(2, t + 40 * MS))
    outs = pipe.control(step(0, final=True))
    assert [(o.mode, o.source_seqs["camera"]) for o in outs] == [("fused", 0), ("fused", 2)]


def test_replay_pace_moves_the_age_of_a_frame() -> None:
    """At half speed a frame stamped 1 s into the replay was due 2 s in: not stale then."""
    clock = Clock()
    pipe = FusionPipeline(FakeDetector(clock), PipelineConfig(budget_ms=50), clock_ns=clock)
    pipe.add("calibration", calibration())
    origin = clock.t
    pipe.add("replay_control", ReplayControl(rate=0.5, origin_ns=origin))
    clock.t = origin + 2_000 * MS + 10 * MS
    pipe.add("camera", frame(0, origin + 1_000 * MS))
    (out,) = pipe.step()
    assert out.mode == "camera_only" and not out.budget_miss and pipe.counters["stale"] == 0


def test_jpeg_frames_are_decoded_reduced() -> None:
    image = np.full((H * 2, W * 2, 3), 128, np.uint8)
    _, data = cv2.imencode(".jpg", image)
    small = decode_jpeg(data.reshape(-1), W * 2, H * 2, 160, 90)
    assert small.shape == (H // 2, W // 2, 3)  # 1/4 scale still covers 160x90


@pytest.mark.parametrize("mode", ["camera_only", "radar_only"])
def test_a_held_mode_pairs_as_auto_but_runs_the_model_in_that_mode(mode: str) -> None:
    clock = Clock()
    detector = FakeDetector(clock)
    pipe = FusionPipeline(detector, PipelineConfig(budget_ms=50, mode=mode), clock_ns=clock)
    pipe.add("calibration", calibration())
    t = clock.t
    pipe.add("radar", scan(4, t - 5 * MS))
    pipe.add("camera", frame(9, t))
    pipe.add("radar", scan(5, t + 70 * MS))
    clock.t += 2 * MS
    (out,) = pipe.step()
    assert out.mode == mode and detector.calls[0][0] == mode
    assert out.source_seqs == {"camera": 9, "radar": 4}
    with pytest.raises(Exception, match="mode"):
        PipelineConfig(mode="fused_only")


def test_radar_points_are_moved_into_the_reference_frame_with_the_radar_calibration(setup):
    pipe, _, clock = setup
    mounted = np.eye(4)
    mounted[:3, 3] = (1.5, -0.5, 0.25)  # the radar 1.5 m ahead of the reference origin
    pipe.add(
        "calibration",
        Calibration(
            sensor_id="radar",
            sensor_to_ref=mounted,
            intrinsics=np.zeros((3, 3)),
            distortion=np.zeros(0),
            capture_ns=clock.t,
        ),
    )
    t = clock.t
    pipe.add("radar", scan(0, t, n=2))
    pipe.add("camera", frame(0, t))
    pipe.add("radar", scan(1, t + 70 * MS))
    clock.t += 2 * MS
    (out,) = pipe.step()
    np.testing.assert_allclose(out.objects["x"], [11.5, 12.5])
    np.testing.assert_allclose(out.objects["y"], [-0.5, -0.5])


def test_outputs_whose_health_is_past_the_threshold_are_counted(setup) -> None:
    pipe, det, clock = setup
    det.decode = lambda prepared, raw: (empty_detections(), {"score": 9.0, "ok": 0.0})
    pipe.add("camera", frame(0, clock.t))
    (out,) = pipe.step()
    assert out.health["ok"] == 0.0 and pipe.counters["health_flagged"] == 1


def test_lockstep_decodes_ahead_and_still_answers_an_undecodable_frame() -> None:
    clock = Clock()
    pipe = lockstep_pipeline(clock)
    t = clock.t
    bad = frame(0, t, image=np.frombuffer(b"notajpeg", np.uint8).copy(), encoding="jpeg")
    pipe.prefetch(bad)  # as the node does on arrival, before the step
    pipe.add("camera", bad)
    _, data = cv2.imencode(".jpg", np.full((H, W, 3), 90, np.uint8))
    pipe.add("camera", frame(1, t + 50 * MS, image=data.reshape(-1), encoding="jpeg"))
    outs = pipe.control(step(0, final=True))
    assert [(o.valid, o.source_seqs["camera"]) for o in outs] == [(False, 0), (True, 1)]
    assert pipe.counters["bad_image"] == 1


# -- hostile content: well-formed messages that must not crash, silence or mislabel ---------


def settle(pipe: FusionPipeline, clock: Clock, cam: CameraFrame, radar: RadarScan) -> list:
    """Feed a scan, a frame and a later scan that settles their match; step."""
    pipe.add("radar", radar)
    pipe.add("camera", cam)
    pipe.add("radar", scan(radar.seq + 1, cam.capture_ns + 70 * MS))
    clock.t += 2 * MS
    return pipe.step()


@pytest.mark.parametrize("kind", ["empty", "all NaN", "all out of range"])
def test_a_radar_scan_with_no_usable_point_is_not_fused(setup, kind: str) -> None:
    pipe, det, clock = setup
    bad = scan(0, clock.t - 5 * MS, n=0 if kind == "empty" else 4)
    if kind == "all NaN":
        bad.points["x"] = np.nan
    elif kind == "all out of range":
        bad.points["dt_s"] = 1e9
    (out,) = settle(pipe, clock, frame(0, clock.t), bad)
    assert (out.mode, out.valid) == ("camera_only", False)
    assert det.calls[-1][:2] == ("camera_only", 0)
    assert pipe.counters["radar_empty"] == 1 and pipe.counters["fused"] == 0
    assert pipe.counters["radar_points_nonfinite"] == (4 if kind == "all NaN" else 0)
    assert pipe.counters["radar_points_out_of_range"] == (4 if kind == "all out of range" else 0)


def test_nan_dt_s_points_are_dropped_and_counted(setup) -> None:
    pipe, _, clock = setup
    bad = scan(0, clock.t - 5 * MS, n=4)
    bad.points["dt_s"][1:3] = np.nan
    (out,) = settle(pipe, clock, frame(0, clock.t), bad)
    assert out.mode == "fused" and out.valid and len(out.objects) == 2
    assert pipe.counters["radar_points_nonfinite"] == 2


def test_nan_ego_speed_is_rejected_and_points_stay_finite(setup) -> None:
    pipe, _, clock = setup
    pipe.add("ego_motion", EgoMotion(speed_mps=float("nan"), capture_ns=clock.t))
    pipe.add("ego_motion", EgoMotion(yaw_rate_rps=float("inf"), capture_ns=clock.t))
    (out,) = settle(pipe, clock, frame(0, clock.t), scan(0, clock.t - 40 * MS, v_r=-20.0))
    assert pipe.counters["bad_ego_motion"] == 2 and not pipe.egos
    assert out.mode == "fused" and np.all(np.isfinite(out.objects["x"]))


def test_an_unknown_encoding_is_rejected_not_read_as_bgr(setup) -> None:
    pipe, det, clock = setup
    pipe.add("camera", frame(0, clock.t, encoding="yuyv"))
    assert pipe.step() == [] and det.calls == []
    assert pipe.counters["bad_image"] == 1


def test_unusable_calibration_sizes_and_kernels_divisors_are_rejected(setup) -> None:
    pipe, _, clock = setup
    huge = calibration()
    huge.width_px = huge.height_px = 2**31 - 1
    flat = calibration()
    flat.intrinsics[2, 2] = 0.0
    for bad in (huge, flat):
        pipe.add("calibration", bad)
    assert pipe.counters["bad_calibration"] == 2 and pipe.camera.width_px == W
    # radar-only answers use a blank image of the calibrated size: still the good one
    clock.t += 400 * MS
    pipe.add("radar", scan(1, clock.t))
    assert [o.mode for o in pipe.step()] == ["radar_only"]


def test_a_frame_stamped_in_the_future_does_not_silence_the_node(setup) -> None:
    """On this host's clock a frame an hour ahead is rejected (``bad_stamp``); the frames after
    it are fused as before."""
    pipe, _, clock = setup
    pipe.add("camera", frame(0, clock.t + 3600 * 10**9))
    assert pipe.counters["bad_stamp"] == 1
    modes = []
    for seq in range(1, 6):
        clock.t += 50 * MS
        modes += [o.mode for o in settle(pipe, clock, frame(seq, clock.t), scan(2 * seq, clock.t))]
    assert modes == ["fused"] * 5


def test_a_jump_of_a_foreign_clock_resets_the_sync_and_fusion_goes_on() -> None:
    """Stamps of a sim (or replayed) clock cannot be checked against this host's: a frame an
    hour ahead is taken, and the synchroniser resets on the next normal one (counted)."""
    clock = Clock()
    pipe = FusionPipeline(FakeDetector(), PipelineConfig(budget_ms=50), clock_ns=clock)
    pipe.add("calibration", calibration())
    t = 1_000 * MS

    def sim(msg):
        msg.clock = "sim"
        return msg

    outputs = []
    for seq in range(8):
        t += 50 * MS
        clock.t += 50 * MS
        capture = t + (3600 * 10**9 if seq == 2 else 0)
        pipe.add("radar", sim(scan(2 * seq, t - 5 * MS)))
        pipe.add("camera", sim(frame(seq, capture)))
        pipe.add("radar", sim(scan(2 * seq + 1, t + 70 * MS)))
        clock.t += 20 * MS
        outputs += pipe.step()
    modes = [o.mode for o in outputs if o.source_seqs["camera"] != 2]
    assert modes == ["fused"] * 7, [(o.source_seqs, o.mode) for o in outputs]
    jumps = pipe.counters["sync_camera_clock_jump"] + pipe.counters["sync_radar_clock_jump"]
    assert jumps == pipe.sync.stats.clock_jumps == 1


def test_outputs_stay_under_the_header_limit_whatever_the_input_trace(setup) -> None:
    from fusion.perception.pipeline import MAX_TRACE_COPY, input_trace
    from fusion.wire import codec

    pipe, _, clock = setup
    cam = frame(0, clock.t)
    cam.trace = {f"{i:0>64}": i for i in range(32)}  # as much as validation lets through
    (out,) = settle(pipe, clock, cam, scan(0, clock.t - 5 * MS))
    assert len(codec.encode("detections", out)[1]) < codec.MAX_HEADER_BYTES
    huge = frame(1, clock.t)
    huge.trace = {f"hop{i}": i for i in range(10_000)}
    assert len(input_trace(huge)) <= MAX_TRACE_COPY
