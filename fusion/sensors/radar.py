"""Real radars: the `RadarDriver` interface and a driver for a simple UDP datagram format.

A real radar plugs in by subclassing `RadarDriver` and passing it to the radar node
(``nodes.radar.main(driver=...)``); `UdpRadarDriver` reads the datagram format documented on it,
which a small bridge next to any sensor can send: the sensor's own scan counter and, when it has
one, its capture time, so losses are counted and stamps mean capture time (`docs/timing.md`).
"""

from __future__ import annotations

import socket
import struct
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from fusion.wire.messages import RADAR_POINT_DTYPE, Calibration, RadarScan


class RadarDriver:
    """Interface for a real radar: subclass it and return scans from `read_scan`.

    `read_scan` waits at most `timeout_s` and returns a `RadarScan` in the radar frame with
    `capture_ns` when the sensor captured it, on the host's monotonic clock (or
    ``clock="realtime"`` if the sensor is PTP-synchronised), and ``seq`` the sensor's own scan
    counter where it has one (so that losses show as gaps), or None when no scan arrived in
    time. Malformed sensor data should be counted in `rejected` and skipped, not raised.
    """

    sensor_id = "radar"

    def __init__(self) -> None:
        self.rejected = 0
        self.lost = 0  # gaps in the sensor's own scan counter
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


@dataclass(frozen=True)
class RadarDatagram:
    """One parsed datagram: the sensor's scan counter, its capture time and that time's kind
    (``TIME_*``; 0 and ``TIME_NONE`` when it sent none), and the points."""

    seq: int
    time_ns: int
    time_kind: int
    points: np.ndarray


#: `RadarDatagram.time_kind`: no sensor time (the scan is stamped when it is received)...
TIME_NONE = 0
#: ... Unix time (ns) from a PTP- or NTP-disciplined clock on the sensor ...
TIME_UNIX = 1
#: ... or the sensor's own free-running clock (ns since anything; only differences matter).
TIME_SENSOR = 2
TIME_KINDS = (TIME_NONE, TIME_UNIX, TIME_SENSOR)


class UdpRadarDriver(RadarDriver):
    """Reads scans from UDP datagrams, one scan per datagram, little-endian::

        magic     4 bytes  b"RDR2"
        seq       uint32   the sensor's scan counter, +1 per scan (wraps at 2^32)
        time_ns   int64    the sensor's capture time of the scan, ns, of the kind below
        time_kind uint8    0: none, 1: Unix time from a PTP/NTP-disciplined clock,
                           2: the sensor's own free-running clock
        reserved  3 bytes  zero
        n         uint32   number of points
        points    n * 5 float32: x, y, z (m, radar frame), v_r (m/s), rcs (dBsm)

    The older ``RDR1`` datagram (magic, seq uint32, n uint32, points) is still read: it carries
    no time. A datagram that follows neither is counted in `rejected`.

    The published scan's ``seq`` is the sensor's own counter (unwrapped past 2^32), so a lost
    datagram shows downstream as a gap (``lost``), and here in `lost`. Its ``capture_ns`` is on
    this host's monotonic clock, and what it means depends on what the sensor sent:

    - kind 1 (Unix time): the sensor's time moved onto the monotonic clock with this host's
      Unix-to-monotonic offset at receipt; as good as the two clocks' synchronisation (PTP:
      microseconds; NTP: a few milliseconds).
    - kind 2 (sensor clock): the sensor's time plus an offset estimated as the smallest
      receipt-minus-sensor-time difference over the last `OFFSET_WINDOW` scans: late by the
      smallest delay seen (the sensor's processing and the network at their quickest; well
      under a millisecond on a LAN for the network part), and following a drift between the
      clocks within the window. The intervals between scans are the sensor's own.
    - kind 0, or an ``RDR1`` datagram: the time the datagram was received, late by the sensor's
      processing and the network (typically 5-50 ms for an automotive radar; that delay is
      not measured).
    """

    MAGIC_V1 = b"RDR1"
    MAGIC = b"RDR2"
    HEADER_V1 = struct.Struct("<4sII")
    HEADER = struct.Struct("<4sIqB3xI")
    MAX_POINTS = (65507 - 24) // 20
    #: Scans over which the sensor clock's offset is the smallest delay seen (20 s at 13 Hz).
    OFFSET_WINDOW = 256

    def __init__(self, host: str = "127.0.0.1", port: int = 50000) -> None:
        super().__init__()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self._last_seq: int | None = None  # unwrapped
        self._offsets: deque[int] = deque(maxlen=self.OFFSET_WINDOW)

    def read_scan(self, timeout_s: float) -> RadarScan | None:
        self.sock.settimeout(timeout_s)
        try:
            data = self.sock.recv(65535)
        except TimeoutError:
            return None
        received_ns = time.monotonic_ns()
        datagram = self.parse(data)
        if datagram is None:
            self.rejected += 1
            return None
        return RadarScan(
            points=datagram.points,
            seq=self._unwrap(datagram.seq),
            capture_ns=self.capture_ns(datagram, received_ns),
            sensor_id=self.sensor_id,
        )

    def capture_ns(self, datagram: RadarDatagram, received_ns: int) -> int:
        """The scan's capture time on this host's monotonic clock (see the class docstring)."""
        if datagram.time_kind == TIME_UNIX:
            return datagram.time_ns - (time.time_ns() - time.monotonic_ns())
        if datagram.time_kind == TIME_SENSOR:
            self._offsets.append(received_ns - datagram.time_ns)
            return datagram.time_ns + min(self._offsets)
        return received_ns

    def _unwrap(self, seq: int) -> int:
        """The sensor's uint32 counter as an ever-growing seq; gaps are counted in `lost`."""
        if self._last_seq is None:
            unwrapped = seq
        else:
            base = self._last_seq - (self._last_seq & 0xFFFFFFFF)
            unwrapped = base + seq
            if unwrapped < self._last_seq - 2**31:  # wrapped past 2^32
                unwrapped += 2**32
            if unwrapped > self._last_seq + 1:
                self.lost += unwrapped - self._last_seq - 1
        self._last_seq = unwrapped
        return unwrapped

    @classmethod
    def parse(cls, data: bytes) -> RadarDatagram | None:
        """A datagram's contents, or None when it is malformed."""
        magic = data[:4]
        if magic == cls.MAGIC and len(data) >= cls.HEADER.size:
            _, seq, time_ns, kind, n = cls.HEADER.unpack_from(data)
            header = cls.HEADER.size
        elif magic == cls.MAGIC_V1 and len(data) >= cls.HEADER_V1.size:
            _, seq, n = cls.HEADER_V1.unpack_from(data)
            time_ns, kind, header = 0, TIME_NONE, cls.HEADER_V1.size
        else:
            return None
        if kind not in TIME_KINDS or n > cls.MAX_POINTS or len(data) != header + 20 * n:
            return None
        raw = np.frombuffer(data, dtype="<f4", offset=header).reshape(n, 5)
        points = np.zeros(n, dtype=RADAR_POINT_DTYPE)
        for i, name in enumerate(("x", "y", "z", "v_r", "rcs")):
            points[name] = raw[:, i]
        return RadarDatagram(seq, time_ns if kind != TIME_NONE else 0, kind, points)

    @classmethod
    def pack(
        cls, seq: int, points: np.ndarray, time_ns: int = 0, time_kind: int = TIME_NONE
    ) -> bytes:
        """Encode a scan as an ``RDR2`` datagram (for tests and for writing a sensor bridge)."""
        raw = np.stack([points[k] for k in ("x", "y", "z", "v_r", "rcs")], axis=1).astype("<f4")
        header = cls.HEADER.pack(cls.MAGIC, seq & 0xFFFFFFFF, time_ns, time_kind, len(points))
        return header + raw.tobytes()

    def close(self) -> None:
        self.sock.close()
