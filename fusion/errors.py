"""The project's error hierarchy.

Every error the library raises on purpose is a `FusionError`, so a long-running node can catch
exactly what it expects (a malformed message, a corrupt recording) and count it, while a genuine
bug still surfaces as an ordinary exception. Messages say what was wrong and, where it helps, what
to change.
"""

from __future__ import annotations


class FusionError(Exception):
    """Base class of every error raised on purpose by `fusion`."""


class DecodeError(FusionError):
    """A wire message was malformed: wrong frame count, bad header, bad buffer, wrong types.

    `reason` names the part at fault in one word (``frames``, ``topic``, ``header``,
    ``version``, ``type``, ``fields``, ``buffers``, ``rules``, ``topic_type``), so a receiver
    can count rejections by reason; the message says exactly what was wrong."""

    def __init__(self, message: str, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason


class EncodeError(FusionError):
    """A message could not be encoded (wrong dtype or shape for a field, unknown type)."""


class ConfigError(FusionError):
    """A user-supplied setting is invalid (unknown topic, bad endpoint, bad argument)."""


class ImageError(FusionError):
    """A camera frame's image is unusable: not a decodable JPEG, the wrong shape or encoding."""


class CalibrationError(FusionError):
    """A calibration is unusable: NaN, non-invertible transform, missing sensor."""


class RecordingError(FusionError):
    """A recording could not be read or written."""


class CorruptRecordingError(RecordingError):
    """A recording is truncated or damaged; the message names the file and byte offset."""

    def __init__(self, message: str, *, path: str = "", offset: int = -1) -> None:
        super().__init__(message)
        self.path = path
        self.offset = offset


class ReplayError(FusionError):
    """A replay could not run as asked (a lock-step consumer that never showed up)."""


class ModelError(FusionError):
    """A model checkpoint or input is unusable."""
