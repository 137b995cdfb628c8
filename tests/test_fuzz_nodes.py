"""Fuzz: 100,000+ malformed multipart messages thrown at a running fusion node and recorder.

The messages are seeded mutations of valid ones (garbage, truncated or bit-flipped headers,
missing, extra or short buffers, lying shapes and dtypes, a foreign topic or message type on a
topic), each checked here to be one the transport must reject. Valid messages go in between.
Both nodes must stay up, count every malformed message as rejected, and still process the valid
ones: the fusion node answers them with detections, the recorder writes exactly them.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import cv2
import msgpack
import numpy as np
import pytest

from fusion.errors import DecodeError
from fusion.logs.reader import RecordingReader
from fusion.runtime.transport import Publisher, Subscriber
from fusion.wire import codec, services
from fusion.wire.messages import CameraFrame, Detections, EgoMotion
from tests import nodeproc as npc

MALFORMED = 100_000
#: Share of the malformed messages per topic. Camera and radar get most: the test can see when
#: the fusion node has drained them (their last valid messages are answered).
SHARES = {"camera": 0.45, "radar": 0.45, "ego_motion": 0.05, "calibration": 0.05}
VALID_EVERY = 500  # one valid camera frame, radar scan and ego motion per this many malformed
SEED = 8
#: Longest wait for each event (an answer, the recorder's counts) on a machine whose cores are
#: busy with other work.
FUZZ_TIMEOUT_S = 180.0
#: Longest the wrong-content test waits for a valid frame's answer before sending the next input.
ANSWER_WAIT_S = 10.0


def must_reject(topic: str, frames: list) -> bool:
    """Whether a subscriber of `topic` rejects `frames` (what `Subscriber._decode` checks)."""
    try:
        got_topic, msg = codec.decode(frames)
    except DecodeError:
        return True
    return got_topic != topic or not isinstance(msg, services.service(topic).message_type)


class Mutator:
    """Seeded mutations of valid messages; `make(topic)` returns frames that must be rejected."""

    def __init__(self, seed: int, valid: dict[str, list]) -> None:
        self.rng = np.random.default_rng(seed)
        self.valid = {t: [bytes(f) for f in frames] for t, frames in valid.items()}
        self.headers = {t: msgpack.unpackb(f[1]) for t, f in self.valid.items()}
        self.kinds: Counter[str] = Counter()

    def make(self, topic: str) -> list:
        for _ in range(100):
            kind = self.rng.integers(0, 10)
            frames = self._mutate(int(kind), topic)
            if must_reject(topic, frames):
                self.kinds[str(kind)] += 1
                return frames
        raise AssertionError(f"no malformed {topic} message after 100 tries")

    def _mutate(self, kind: int, topic: str) -> list:
        rng = self.rng
        topic_b, header, *buffers = self.valid[topic]
        if kind == 0:  # random bytes as the header
            return [topic_b, rng.bytes(int(rng.integers(0, 300))), *buffers]
        if kind == 1:  # header cut short
            return [topic_b, header[: int(rng.integers(0, len(header)))], *buffers]
        if kind == 2:  # a few header bytes flipped
            h = bytearray(header)
            for i in rng.integers(0, len(h), int(rng.integers(1, 4))):
                h[i] ^= int(rng.integers(1, 256))
            return [topic_b, bytes(h), *buffers]
        if kind == 3:  # a buffer missing, or one too many
            return (
                [topic_b, header, *buffers[:-1]]
                if buffers and rng.random() < 0.5
                else [topic_b, header, *buffers, rng.bytes(8)]
            )
        if kind == 4:  # a buffer of the wrong length
            if not buffers:
                return [topic_b, header, rng.bytes(16)]
            cut = int(rng.integers(0, len(buffers[0])))
            return [topic_b, header, buffers[0][:cut], *buffers[1:]]
        if kind == 5:  # another topic's message on this topic
            other = [t for t in self.valid if t != topic][int(rng.integers(0, len(self.valid) - 1))]
            return [topic_b, *self.valid[other][1:]]
        if kind == 6:  # a longer topic that passes the subscription's prefix filter
            return [topic_b + rng.bytes(int(rng.integers(1, 8))), header, *buffers]
        if kind == 7:  # topic only
            return [topic_b]
        return self._lying_header(kind, topic, topic_b, buffers)

    def _lying_header(self, kind: int, topic: str, topic_b: bytes, buffers: list) -> list:
        rng = self.rng
        h = msgpack.unpackb(msgpack.packb(self.headers[topic]))
        if kind == 8 or not h["buffers"]:  # a field of the wrong type, or a future schema
            if rng.random() < 0.5:
                h["v"] = int(rng.integers(2, 1000))
            else:
                name = list(h["fields"])[int(rng.integers(0, len(h["fields"])))]
                h["fields"][name] = [None, "x", 1e300, -(2**63), {"a": 1}][int(rng.integers(0, 5))]
        else:  # a buffer spec lying about dtype or shape (huge, negative, wrong rank)
            spec = h["buffers"][int(rng.integers(0, len(h["buffers"])))]
            if rng.random() < 0.3:
                spec[1] = ["<f8", "|V7", "object", 12][int(rng.integers(0, 4))]
            else:
                spec[2] = [[10**9], [-1], [2**40, 2**40], [], [1, 1, 1, 1, 1]][
                    int(rng.integers(0, 5))
                ]
        return [topic_b, msgpack.packb(h), *buffers]


def recorder_rejected(log_text: str) -> dict[str, int]:
    """Per-topic rejected counts from the recorder's newest stats line."""
    return {topic: c["rejected"] for topic, c in npc.recorder_counts(log_text).items()}


@pytest.mark.slow
def test_fuzzed_messages_are_counted_and_valid_ones_still_processed(tmp_path: Path) -> None:
    weights = npc.tiny_weights(tmp_path / "tiny.safetensors")
    topics = list(SHARES)
    pubs = {t: Publisher(t, sndhwm=2 * MALFORMED) for t in topics}  # nothing dropped on our side
    detections = Subscriber("detections", latest_only=False, queue_size=10_000)
    fusion_log, recorder_log = tmp_path / "fusion.log", tmp_path / "recorder.log"
    out = tmp_path / "fuzz.mcap"
    fusion = npc.start(
        "nodes.fusion_node",
        [
            # nothing stale: all answered
            *npc.fusion_node_args(weights, budget_ms="3600000", readers=1),
            # A frame waits for its scan however long the flood of rejects delays the radar
            # queue (with the default 10 ms the last frame could go out with the scan before)
            "--sync-deadline-ms",
            "5000",
            "--stats-period-s",
            "0",
        ],
        fusion_log,
    )
    recorder = npc.start(
        "nodes.recorder",
        [
            "-o",
            str(out),
            "--topics",
            ",".join(topics),
            "--stats-period-s",
            "0.5",
            "--queue-size",
            "1000",
        ],
        recorder_log,
    )
    try:
        for pub in pubs.values():
            assert pub.wait_for_subscribers(2, npc.START_TIMEOUT_S), fusion_log.read_text()
        rng = np.random.default_rng(SEED)
        first = {
            "camera": codec.encode("camera", npc.camera_frame(0)),
            "radar": codec.encode("radar", npc.radar_scan(0)),
            "ego_motion": codec.encode("ego_motion", npc.ego_motion(0)),
            "calibration": codec.encode("calibration", npc.calibration()),
        }
        mutator = Mutator(SEED, first)
        plan = rng.choice(topics, size=MALFORMED, p=[SHARES[t] for t in topics])
        malformed = [(t, mutator.make(t)) for t in plan]
        sent_bad = Counter(str(t) for t in plan)
        sent_valid: Counter[str] = Counter()

        def send_valid(seq: int) -> None:
            for topic, msg in (
                ("ego_motion", npc.ego_motion(seq)),
                ("radar", npc.radar_scan(seq)),
                ("camera", npc.camera_frame(seq)),
            ):
                pubs[topic].send(msg)
                sent_valid[topic] += 1

        pubs["calibration"].send(npc.calibration())
        sent_valid["calibration"] += 1
        seq = 0
        t0 = time.monotonic()
        for i, (topic, frames) in enumerate(malformed):
            pubs[topic].socket.send_multipart(frames, copy=False)
            if i % VALID_EVERY == 0:
                send_valid(seq)
                seq += 1
        send_seconds = time.monotonic() - t0

        # Sentinels: the last valid camera frame answered, fused with the last radar scan, shows
        # the fusion node has drained its camera and radar inputs; one more round after it, that
        # it has taken everything sent before on the other inputs too (each poll takes from
        # every input, and ego motion and calibration are a small share of the flood).
        answered: list[Detections] = []
        for last_seq in (seq, seq + 1):
            if last_seq == seq + 1:
                pubs["calibration"].send(npc.calibration())
                sent_valid["calibration"] += 1
            send_valid(last_seq)
            deadline = time.monotonic() + FUZZ_TIMEOUT_S
            while time.monotonic() < deadline:
                msg = detections.recv(200)
                if msg is not None:
                    answered.append(msg)
                    if msg.source_seqs == {"camera": last_seq, "radar": last_seq}:
                        break
                assert fusion.poll() is None, fusion_log.read_text()[-3000:]
            else:
                raise AssertionError(
                    f"fusion node never answered frame {last_seq} (hung?): "
                    f"{fusion_log.read_text()[-3000:]}"
                )
        expected_rejected = {t: sent_bad[t] for t in topics}
        deadline = time.monotonic() + FUZZ_TIMEOUT_S
        while recorder_rejected(recorder_log.read_text()) != expected_rejected:
            assert recorder.poll() is None, recorder_log.read_text()[-3000:]
            assert time.monotonic() < deadline, (
                recorder_rejected(recorder_log.read_text()),
                expected_rejected,
            )
            time.sleep(0.2)
    finally:
        fusion_text = npc.stop(fusion, fusion_log)
        recorder_text = npc.stop(recorder, recorder_log)
        for pub in pubs.values():
            pub.close()
        detections.close()

    assert sum(sent_bad.values()) >= 100_000
    print(
        f"sent {MALFORMED} malformed + {sum(sent_valid.values())} valid in {send_seconds:.1f} s;"
        f" mutation kinds {dict(mutator.kinds)}"
    )
    counters = npc.input_counters(fusion_text)
    for topic in topics:
        c = counters[topic]
        assert c["rejected"] == sent_bad[topic], (topic, c, sent_bad[topic])
        assert c["received"] == c["rejected"] + c["delivered"] + c["skipped"], (topic, c)
        assert c["delivered"] + c["skipped"] == sent_valid[topic], (topic, c, sent_valid)
        assert c["lost"] == 0, (topic, c)
    assert len(answered) > 0 and all(d.valid for d in answered)
    assert "Traceback" not in fusion_text and "Traceback" not in recorder_text
    with RecordingReader(out) as reader:
        written = Counter(m.topic for m in reader.messages())
    assert written == sent_valid, (written, sent_valid)


def jpeg_claiming(width_px: int, height_px: int) -> np.ndarray:
    """A small valid JPEG whose frame header says `width_px` x `height_px`."""
    ok, data = cv2.imencode(".jpg", np.zeros((npc.H, npc.W, 3), np.uint8))
    assert ok
    data = data.reshape(-1).copy()
    sof = next(i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xC0)
    data[sof + 5 : sof + 9] = [height_px >> 8, height_px & 255, width_px >> 8, width_px & 255]
    return data


def lying_camera_frames(seq: int, image: np.ndarray, encoding: str) -> list[bytes]:
    """Wire frames of a camera frame whose image shape does not fit its encoding (our encoder
    refuses to make them; a foreign client can)."""
    frames = codec.encode(
        "camera",
        CameraFrame(
            image=image.reshape(-1),
            encoding="jpeg",
            seq=seq,
            capture_ns=time.monotonic_ns(),
            sensor_id="camera_front",
        ),
    )
    header = msgpack.unpackb(bytes(frames[1]))
    header["fields"]["encoding"] = encoding
    header["buffers"][0][2] = list(image.shape)
    return [bytes(frames[0]), msgpack.packb(header), bytes(frames[2])]


@pytest.mark.slow
def test_well_formed_but_wrong_content_is_counted_and_the_node_carries_on(tmp_path) -> None:
    """Calibration that is NaN, not a rotation, a pinhole that divides by zero or an absurd
    image size; images of the wrong size, or whose JPEG header disagrees with the declared size
    or claims 60000 x 60000 pixels; radar with NaN/inf points, only NaN points or 10^6 points;
    NaN ego speed; a frame stamped an hour ahead: dropped and counted by reason (all-NaN radar
    gives a ``camera_only`` output that is not ``valid``), the node keeps the last good
    calibration and goes on answering valid frames. Images whose shape does not fit their
    encoding (4 channels, a 2-D bgr8, an unknown encoding) are malformed on the wire: rejected
    by the camera input, by reason."""
    weights = npc.tiny_weights(tmp_path / "tiny.safetensors")
    topics = ("calibration", "radar", "camera", "ego_motion")
    pubs = {t: Publisher(t) for t in topics}
    detections = Subscriber("detections", latest_only=False, queue_size=1000)
    log_path = tmp_path / "fusion.log"
    fusion = npc.start(
        "nodes.fusion_node",
        [
            *npc.fusion_node_args(weights, budget_ms="5000", readers=1),
            "--stats-period-s",
            "0",
        ],
        log_path,
    )
    answered: list = []
    seq = 0
    valid_sent = 0

    def collect(wait_s: float = 0.15) -> None:
        time.sleep(wait_s)
        while (d := detections.recv(0)) is not None:
            answered.append(d)

    def valid_pair() -> None:
        """A valid scan and frame, then wait (up to ANSWER_WAIT_S) for the frame's answer, so
        the node is idle when the next input arrives: a camera frame sent while it is busy could
        be replaced by the next one (latest-only) before it is looked at."""
        nonlocal seq, valid_sent
        pubs["radar"].send(npc.radar_scan(seq))
        pubs["camera"].send(npc.camera_frame(seq))
        deadline = time.monotonic() + ANSWER_WAIT_S
        while time.monotonic() < deadline:
            if (d := detections.recv(50)) is not None:
                answered.append(d)
                if d.source_seqs.get("camera") == seq:
                    break
        seq += 1
        valid_sent += 1

    bad_calibrations = [npc.calibration() for _ in range(4)]
    bad_calibrations[0].intrinsics = np.full((3, 3), np.nan)
    bad_calibrations[1].sensor_to_ref = np.zeros((4, 4))
    bad_calibrations[2].intrinsics[2, 2] = 0.0  # the raster kernel divides by it
    bad_calibrations[3].width_px = bad_calibrations[3].height_px = 2**31  # blank image: EiB
    nonfinite = npc.radar_scan(0)
    nonfinite.points["x"][:3] = [np.nan, np.inf, -np.inf]
    huge = npc.radar_scan(0, n_points=1_000_000)
    bad_frames = [
        CameraFrame(image=np.zeros((100, 100, 3), np.uint8)),  # not the calibrated aspect
        CameraFrame(
            image=np.frombuffer(b"not a jpeg", np.uint8).copy(),
            encoding="jpeg",
            width_px=npc.W,
            height_px=npc.H,
        ),
        CameraFrame(
            image=jpeg_claiming(npc.W * 2, npc.H * 2),
            encoding="jpeg",
            width_px=npc.W,
            height_px=npc.H,
        ),
        CameraFrame(
            image=jpeg_claiming(60000, 60000), encoding="jpeg", width_px=60000, height_px=60000
        ),
        CameraFrame(
            image=np.zeros((npc.H, npc.W, 3), np.uint8), width_px=npc.W * 2, height_px=npc.H
        ),
    ]
    malformed_frames = [
        (np.zeros((npc.H, npc.W, 4), np.uint8), "bgr8"),  # 4 channels
        (np.zeros((npc.H, npc.W), np.uint8), "bgr8"),  # 2-D bgr
        (np.zeros((npc.H, npc.W, 3), np.uint8), "yuv422"),  # not an encoding
    ]
    try:
        for pub in pubs.values():
            assert pub.wait_for_subscribers(1, npc.START_TIMEOUT_S), log_path.read_text()
        pubs["calibration"].send(npc.calibration())
        for _ in range(3):
            valid_pair()
        for calib in bad_calibrations:
            pubs["calibration"].send(calib)
            valid_pair()
        for bad in bad_frames:
            bad.seq, bad.capture_ns, bad.sensor_id = seq, time.monotonic_ns(), "camera_front"
            pubs["radar"].send(npc.radar_scan(seq))
            pubs["camera"].send(bad)
            seq += 1
            collect()
            valid_pair()
        for image, encoding in malformed_frames:
            pubs["camera"].socket.send_multipart(lying_camera_frames(seq, image, encoding))
            seq += 1
            collect()
            valid_pair()
        for scan in (nonfinite, huge):
            scan.seq, scan.capture_ns = seq, time.monotonic_ns()
            seq += 1
            pubs["radar"].send(scan)
            valid_pair()
        time.sleep(0.3)  # the last valid scan is now outside the pairing slop (80 ms)
        all_nan = npc.radar_scan(seq, n_points=8)
        all_nan.points["y"] = np.nan
        pubs["radar"].send(all_nan)
        pubs["camera"].send(npc.camera_frame(seq))  # its nearest scan is the all-NaN one
        nan_frame_seq = seq
        seq += 1
        collect(0.3)
        valid_pair()
        pubs["ego_motion"].send(EgoMotion(speed_mps=float("nan"), capture_ns=time.monotonic_ns()))
        valid_pair()
        pubs["camera"].send(npc.camera_frame(seq, capture_ns=time.monotonic_ns() + 3600 * 10**9))
        seq += 1
        collect(0.3)
        for _ in range(3):
            valid_pair()
        collect(0.5)
        while (d := detections.recv(100)) is not None:
            answered.append(d)
        assert fusion.poll() is None, log_path.read_text()
    finally:
        text = npc.stop(fusion, log_path)
        for pub in pubs.values():
            pub.close()
        detections.close()
    counted = npc.pipeline_counters(text)
    assert counted["bad_calibration"] == len(bad_calibrations), counted
    assert counted["bad_image"] == len(bad_frames), counted
    assert counted["radar_too_many_points"] == 1, counted
    assert counted["radar_points_nonfinite"] == 3 + 8, counted
    assert counted["radar_empty"] == 1, counted
    assert counted["bad_ego_motion"] == 1 and counted["bad_stamp"] == 1, counted
    camera = npc.input_counters(text)["camera"]
    assert camera["rejected"] == len(malformed_frames), camera
    assert camera["rejected_by"] == {"rules": len(malformed_frames)}, camera
    # The frame matched with the all-NaN scan is answered, not fused and not valid.
    (nan_answer,) = [d for d in answered if d.source_seqs.get("camera") == nan_frame_seq]
    assert (nan_answer.mode, nan_answer.valid) == ("camera_only", False)
    # Valid frames sent after each bad input were still answered, with the good calibration.
    valid_seqs = {d.source_seqs.get("camera") for d in answered if d.valid}
    assert len(valid_seqs) >= 0.8 * valid_sent, (sorted(valid_seqs), valid_sent)
    assert all(np.isfinite(d.objects["x"]).all() for d in answered)
    assert "Traceback" not in text
