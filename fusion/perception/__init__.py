"""From synced sensor data to model inputs and back to `Detections`, without sockets.

`geometry` holds calibration math (transforms, the pinhole `CameraModel`), `sync` pairs camera
frames with radar scans and motion-compensates the radar, `preprocess` (with its Numba kernels
in `_kernels`) makes the radar rasters and the image tensor, and `pipeline` is the fusion
node's logic: sync, degraded modes, latency budget, the
model's stages and the staged trace. The model itself is passed in (`DetectorLike`), so nothing
here imports torch.
"""
