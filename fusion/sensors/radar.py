"""Real radars: the `RadarDriver` interface and a driver for a simple UDP datagram format.

A real radar plugs in by subclassing `RadarDriver` and passing it to the radar node
(``nodes.radar.main(driver=...)``); `UdpRadarDriver` reads the datagram format documented on it,
which a small bridge next to any sensor can send.
"""

from __future__ import annotations

import socket
import struct
import time

import numpy as np

from fusion.wire.messages import RADAR_POINT_DTYPE, Calibration, RadarScan


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
