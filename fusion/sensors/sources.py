"""Where producer nodes get their data: devices, video files, image folders, recordings and the
simulator.

Source specs on the command line: ``device:0``, ``video:PATH``, ``folder:DIR``,
``recording:FILE``, ``sim:SCENARIO[:SEED]``, and for radar ``udp:HOST:PORT``
(`fusion.sensors.radar`). `parse_source` reads a spec; `replayed_messages` opens the two sources
both producers share (a recording's topics, or a drive simulated on the fly); the camera frame
generators read OpenCV captures and image folders.
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
