"""The fusion network and its inference API.

- `config`: `ModelConfig` and the per-dataset presets (`sim_config`, `astyx_config`);
- `efficientnet`: the ImageNet-pretrained EfficientNet-Lite0 backbone (weights from the
  installed package);
- `network`: `FusionNet` (image branch lifted to a bird's-eye-view grid, radar raster encoder,
  BEV network, CenterPoint head, health VAE);
- `inputs`, `targets`: one frame -> network inputs (shared by training and serving); boxes ->
  training targets;
- `losses`, `decode`, `health`: training losses; head maps -> `DETECTION_DTYPE` boxes; the
  health score (VAE and cues);
- `weights`, `backends`, `detector`: safetensors weights files; PyTorch / ONNX Runtime /
  OpenVINO / CUDA backends chosen by measurement; `Detector` (load, warm_up, detect /
  preprocess + infer + decode).

Importing this package imports torch; `fusion.cli` imports it lazily.
"""

from fusion.model.config import ModelConfig, astyx_config, sim_config
from fusion.model.detector import Detector
from fusion.model.network import MODES, FusionNet
from fusion.model.weights import DEFAULT_WEIGHTS, load_weights, save_weights

__all__ = [
    "DEFAULT_WEIGHTS",
    "MODES",
    "Detector",
    "FusionNet",
    "ModelConfig",
    "astyx_config",
    "load_weights",
    "save_weights",
    "sim_config",
]
