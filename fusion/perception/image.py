"""A camera frame's pixels: the one way any `CameraFrame` becomes a BGR image.

The fusion node, the viewer and training read camera frames through `camera_image`: the frame's
declared size is checked against its pixels or its JPEG header first, so nothing is decoded or
allocated for a size a frame merely claims; then ``bgr8`` is used as it is, ``rgb8`` is flipped
to BGR, ``mono8`` is spread over three channels, and a JPEG is decoded, at a reduced scale when
the caller needs only a smaller image (`decode_jpeg`: libjpeg's 1/2 and 1/4 decoding skips
most of the work).
"""

from __future__ import annotations

import cv2
import numpy as np

from fusion.errors import ImageError
from fusion.wire import validate
from fusion.wire.messages import IMAGE_ENCODINGS, CameraFrame

#: The smallest image side `camera_image` accepts, in pixels.
MIN_SIDE_PX = 8


def decode_jpeg(
    data: np.ndarray,
    width_px: int,
    height_px: int,
    min_w: int | None = None,
    min_h: int | None = None,
) -> np.ndarray | None:
    """Decode a `width_px` x `height_px` JPEG at the smallest of 1/1, 1/2 and 1/4 scale that is
    still at least `min_w` x `min_h` (full size without them); None when it does not decode."""
    flag = cv2.IMREAD_COLOR
    if min_w is not None and min_h is not None:
        for factor, reduced in ((4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2)):
            if width_px // factor >= min_w and height_px // factor >= min_h:
                flag = reduced
                break
    return cv2.imdecode(np.asarray(data, dtype=np.uint8), flag)


def camera_image(frame: CameraFrame, min_size: tuple[int, int] | None = None) -> np.ndarray:
    """`frame`'s image as (H, W, 3) uint8 BGR; a JPEG is decoded no smaller than `min_size`
    (width, height) allows, at full size without it. Raises `ImageError` for an unknown
    encoding, an image whose size does not match what the frame declares or is out of bounds
    (`fusion.wire.validate.image_problem`, checked before decoding), a JPEG that does not
    decode, or pixels that are not 3 channels of at least `MIN_SIDE_PX` on each side."""
    image = frame.image
    if frame.encoding not in IMAGE_ENCODINGS:
        raise ImageError(
            f"camera frame {frame.seq} has encoding {frame.encoding!r:.40}, not one of "
            f"{', '.join(IMAGE_ENCODINGS)}"
        )
    why = validate.image_problem(frame)
    if why is not None:  # before anything is decoded or allocated for the declared size
        raise ImageError(f"camera frame {frame.seq}: {why}")
    if frame.encoding == "jpeg":
        image = decode_jpeg(image, frame.width_px, frame.height_px, *(min_size or (None, None)))
        if image is None:
            raise ImageError(f"camera frame {frame.seq} is not a decodable JPEG")
    elif frame.encoding == "rgb8" and image.ndim == 3:
        image = np.ascontiguousarray(image[..., ::-1])
    elif frame.encoding == "mono8" and image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < MIN_SIDE_PX:
        raise ImageError(f"camera frame {frame.seq} has shape {image.shape}")
    return image
