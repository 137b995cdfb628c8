"""Where producer nodes get their data: devices, files, recordings, the simulator, a radar driver.

A source yields messages on its own clock (a file's frame times, a recording's capture stamps,
simulation time). `Pacer` releases them at their original timing (times a rate) and restamps
``capture_ns`` onto this host's monotonic clock, so the rest of the graph measures latency the
same way for live and replayed data. Live devices are stamped at capture and need no pacing.

Source specs on the command line: ``device:0``, ``video:PATH``, ``folder:DIR``,
``recording:FILE``, ``sim:SCENARIO[:SEED]``, and for radar ``udp:HOST:PORT``.

A real radar plugs in by subclassing `RadarDriver` (see `UdpRadarDriver`, which reads the
simple datagram format documented on it).
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from fusion.errors import ConfigError, FusionError
from fusion.wire.messages import (
    RADAR_POINT_DTYPE,
    Calibration,
    CameraFrame,
    Message,
    RadarScan,
)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


class Pacer:
    """Releases messages at their source timing divided by `rate` (0 = as fast as possible).

    By default the first message is released at once. With `epoch_ns` (a monotonic time shared
    by several producers, e.g. ``$FUSION_EPOCH_NS`` set by the launcher) source time 0 is due at
    `epoch_ns`, so independent producers of one simulated drive stay aligned; a producer that
    (re)starts after the epoch skips what is already past, as a live sensor would, and counts it
    in `skipped`. A source that starts again (a looped file: its time goes backwards) continues
    one typical gap after the last message instead of bursting.
    """

    def __init__(self, rate: float = 1.0, epoch_ns: int | None = None) -> None:
        self.rate = rate
        self.epoch_ns = epoch_ns
        self.skipped = 0
        self._t0_ns: int | None = None
        self._source_t0_ns = 0
        self._last_source_ns = 0
        self._last_gap_ns = 0

    def wait(self, source_ns: int) -> int | None:
        """Sleep until `source_ns` is due; return the monotonic time it was released at, or
        None for a message that was already past due at an epoch-anchored (re)start."""
        now = time.monotonic_ns()
        if self._t0_ns is None:
            if self.epoch_ns is None:
                self._t0_ns, self._source_t0_ns, self._last_source_ns = now, source_ns, source_ns
                return now
            self._t0_ns, self._source_t0_ns, self._last_source_ns = self.epoch_ns, 0, source_ns
        if source_ns < self._last_source_ns:  # the source started again
            self._source_t0_ns += source_ns - self._last_source_ns - self._last_gap_ns
        elif source_ns > self._last_source_ns:
            self._last_gap_ns = source_ns - self._last_source_ns
        self._last_source_ns = source_ns
        if self.rate <= 0:
            return now
        due = self._t0_ns + int((source_ns - self._source_t0_ns) / self.rate)
        if self.epoch_ns is not None and due < now - self._last_gap_ns:
            self.skipped += 1
            return None
        if due > now:
            time.sleep((due - now) / 1e9)
            now = time.monotonic_ns()
        return now


def epoch_from_env() -> int | None:
    """``$FUSION_EPOCH_NS``: the monotonic time a graph's simulated drive starts."""
    value = os.environ.get("FUSION_EPOCH_NS")
    return int(value) if value else None


def camera_frames_from_capture(
    capture: cv2.VideoCapture, sensor_id: str, live: bool
) -> Iterator[CameraFrame]:
    """Frames from an open OpenCV capture: stamped at read for a device, by position for a file."""
    fps = capture.get(cv2.CAP_PROP_FPS) or 20.0
    seq = 0
    while True:
        ok, image = capture.read()
        now = time.monotonic_ns()
        if not ok:
            return
        capture_ns = now if live else int(seq * 1e9 / fps)
        yield CameraFrame(
            image=image,
            encoding="bgr8",
            seq=seq,
            capture_ns=capture_ns,
            sensor_id=sensor_id,
            clock="monotonic" if live else "sim",
        )
        seq += 1


def camera_frames_from_folder(
    folder: Path, rate_hz: float, sensor_id: str, keep_jpeg: bool
) -> Iterator[CameraFrame]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ConfigError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    for seq, path in enumerate(files):
        data = np.fromfile(path, dtype=np.uint8)
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)
        if image is None:
            raise FusionError(f"{path} is not a readable image")
        capture_ns = int(seq * 1e9 / rate_hz)
        if keep_jpeg and path.suffix.lower() in (".jpg", ".jpeg"):
            yield CameraFrame(
                image=data,
                encoding="jpeg",
                width_px=image.shape[1],
                height_px=image.shape[0],
                seq=seq,
                capture_ns=capture_ns,
                sensor_id=sensor_id,
                clock="sim",
            )
        else:
            yield CameraFrame(
                image=image, seq=seq, capture_ns=capture_ns, sensor_id=sensor_id, clock="sim"
            )


def recorded_messages(path: str, topics: set[str]) -> Iterator[tuple[str, Message]]:
    from fusion.logs.reader import RecordingReader

    reader = RecordingReader(path)
    for record in reader.messages(topics=sorted(topics)):
        yield record.topic, record.decode()


def simulated_messages(
    scenario: str, seed: int, topics: set[str], **options
) -> Iterator[tuple[str, Message]]:
    from fusion.sim import simulate

    yield from simulate(scenario, seed, topics=topics, **options)


def parse_source(spec: str) -> tuple[str, list[str]]:
    kind, _, rest = spec.partition(":")
    kinds = ("device", "video", "folder", "recording", "sim", "udp")
    if kind not in kinds or not rest:
        raise ConfigError(
            f"source must be one of {', '.join(k + ':...' for k in kinds)}; got {spec!r}"
        )
    return kind, rest.split(":")


class RadarDriver:
    """Interface for a real radar: subclass it and return scans from `read_scan`.

    `read_scan` waits at most `timeout_s` and returns a `RadarScan` in the radar frame with
    `capture_ns` on the host's monotonic clock (or ``clock="realtime"`` if the sensor is
    PTP-synchronised), or None when no scan arrived in time. Malformed sensor data should be
    counted in `rejected` and skipped, not raised.
    """

    sensor_id = "radar"

    def __init__(self) -> None:
        self.rejected = 0
        self.seq = 0

    def read_scan(self, timeout_s: float) -> RadarScan | None:
        raise NotImplementedError

    def calibration(self) -> Calibration:
        """The radar's calibration; the radar frame is the reference frame by default."""
        return Calibration(
            sensor_to_ref=np.eye(4),
            intrinsics=np.zeros((3, 3)),
            distortion=np.zeros(0),
            sensor_id=self.sensor_id,
        )

    def close(self) -> None:
        pass


class UdpRadarDriver(RadarDriver):
    """Reads scans from UDP datagrams, one scan per datagram, little-endian::

        magic   4 bytes  b"RDR1"
        seq     uint32   scan counter
        n       uint32   number of points
        points  n * 5 float32: x, y, z (m, radar frame), v_r (m/s), rcs (dBsm)

    A datagram that does not follow this is counted in `rejected`. The capture time is the
    receive time (the format carries no sensor clock).
    """

    HEADER = struct.Struct("<4sII")
    MAGIC = b"RDR1"
    MAX_POINTS = (65507 - 12) // 20

    def __init__(self, host: str = "127.0.0.1", port: int = 50000) -> None:
        super().__init__()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, port))

    def read_scan(self, timeout_s: float) -> RadarScan | None:
        self.sock.settimeout(timeout_s)
        try:
            data = self.sock.recv(65535)
        except TimeoutError:
            return None
        now = time.monotonic_ns()
        points = self.parse(data)
        if points is None:
            self.rejected += 1
            return None
        scan = RadarScan(points=points, seq=self.seq, capture_ns=now, sensor_id=self.sensor_id)
        self.seq += 1
        return scan

    @classmethod
    def parse(cls, data: bytes) -> np.ndarray | None:
        if len(data) < cls.HEADER.size:
            return None
        magic, _seq, n = cls.HEADER.unpack_from(data)
        if magic != cls.MAGIC or n > cls.MAX_POINTS or len(data) != cls.HEADER.size + 20 * n:
            return None
        raw = np.frombuffer(data, dtype="<f4", offset=cls.HEADER.size).reshape(n, 5)
        points = np.zeros(n, dtype=RADAR_POINT_DTYPE)
        for i, name in enumerate(("x", "y", "z", "v_r", "rcs")):
            points[name] = raw[:, i]
        return points

    @classmethod
    def pack(cls, seq: int, points: np.ndarray) -> bytes:
        """Encode a scan as a datagram (for tests and for writing a sensor bridge)."""
        raw = np.stack([points[k] for k in ("x", "y", "z", "v_r", "rcs")], axis=1).astype("<f4")
        return cls.HEADER.pack(cls.MAGIC, seq, len(points)) + raw.tobytes()

    def close(self) -> None:
        self.sock.close()
