"""Where producer nodes get their data: devices, video files, image folders, recordings and the
simulator.

Source specs on the command line: ``device:0``, ``video:PATH``, ``folder:DIR``,
``recording:FILE``, ``sim:SCENARIO[:SEED]``, and for radar ``udp:HOST:PORT``
(`fusion.sensors.radar`). `parse_source` reads a spec; `replayed_messages` opens the two sources
both producers share (a recording's topics, or a drive simulated on the fly); the camera frame
generators read OpenCV captures and image folders.

What ``capture_ns`` means, per source (`docs/timing.md` has the whole table): a device frame is
stamped with the driver's buffer timestamp when OpenCV reports one on this host's monotonic
clock, else when it was read (`capture_time_ns`); a video frame with its presentation time in
the file; a folder's images at ``--rate-hz`` from 0 (they have no times); a recording's and a
simulated drive's messages keep their own stamps. All but a device's are then paced and moved
onto the monotonic clock by one offset (`fusion.sensors.pacing`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from fusion.errors import ConfigError, FusionError
from fusion.wire.messages import CameraFrame, Message

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
SOURCE_KINDS = ("device", "video", "folder", "recording", "sim", "udp")


def parse_source(spec: str) -> tuple[str, list[str]]:
    """``"sim:city:3"`` -> ``("sim", ["city", "3"])``; an unknown kind is a `ConfigError`."""
    kind, _, rest = spec.partition(":")
    if kind not in SOURCE_KINDS or not rest:
        raise ConfigError(
            f"source must be one of {', '.join(k + ':...' for k in SOURCE_KINDS)}; got {spec!r}"
        )
    return kind, rest.split(":")


def replayed_messages(
    kind: str, parts: list[str], topics: set[str], **sim_options: object
) -> Iterator[tuple[str, Message]]:
    """``(topic, message)`` on `topics` of a ``recording:FILE`` or ``sim:SCENARIO[:SEED]``
    source (`sim_options` go to `fusion.sim.simulate`), on the source's own clock."""
    if kind == "recording":
        from fusion.logs.reader import recorded_messages

        return recorded_messages(parts[0], topics)
    if kind == "sim":
        from fusion.sim import simulate

        seed = int(parts[1]) if len(parts) > 1 else 0
        return simulate(parts[0], seed, topics=topics, **sim_options)
    raise ConfigError(f"a {kind} source cannot be replayed")


#: A device timestamp older than this at read time is not believed (a backend whose
#: ``CAP_PROP_POS_MSEC`` is not the V4L2 buffer time on this host's monotonic clock).
MAX_DEVICE_DELAY_NS = 1_000_000_000


def camera_frames_from_capture(
    capture: cv2.VideoCapture, sensor_id: str, live: bool
) -> Iterator[CameraFrame]:
    """Frames from an open OpenCV capture, stamped with what the source reports
    (``CAP_PROP_POS_MSEC``, see `capture_time_ns`)."""
    fps = capture.get(cv2.CAP_PROP_FPS) or 20.0
    seq = 0
    last_ns: int | None = None
    while True:
        ok, image = capture.read()
        read_ns = time.monotonic_ns()
        if not ok:
            return
        reported_ms = capture.get(cv2.CAP_PROP_POS_MSEC)
        capture_ns = capture_time_ns(reported_ms, live, read_ns, last_ns, fps)
        last_ns = capture_ns
        yield CameraFrame(
            image=image,
            encoding="bgr8",
            seq=seq,
            capture_ns=capture_ns,
            sensor_id=sensor_id,
            clock="monotonic" if live else "sim",
        )
        seq += 1


def capture_time_ns(
    reported_ms: float, live: bool, read_ns: int, last_ns: int | None, fps: float
) -> int:
    """When a frame was captured, from what OpenCV reports after reading it.

    - **A device** (``live``): V4L2 gives ``CAP_PROP_POS_MSEC`` as the buffer's timestamp, which
      the driver takes on the host's monotonic clock when the frame starts to arrive (UVC: at
      the start of the frame's transfer, just after its exposure; error a millisecond or two
      against the end of exposure). Used when it is on this clock (at most
      `MAX_DEVICE_DELAY_NS` before the read); otherwise the read time, which is late by the
      driver's queue: a frame can wait up to its buffer count times the frame period (4
      buffers: 130 ms at 30 Hz) when the reader falls behind, one period when it keeps up.
    - **A video file**: the frame's presentation time in the file (ms from the start, to the
      container's time base), so a variable frame rate is kept; where the backend reports
      none (0 after the first frame, or going backwards), one frame period after the last.
    """
    if live:
        device_ns = round(reported_ms * 1e6)
        return device_ns if 0 <= read_ns - device_ns <= MAX_DEVICE_DELAY_NS else read_ns
    position_ns = round(reported_ms * 1e6)
    if last_ns is None:
        return max(position_ns, 0)
    if position_ns <= last_ns:
        return last_ns + round(1e9 / fps)
    return position_ns


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
