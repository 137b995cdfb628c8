"""The fusion network and its inference API.

- `config`: `ModelConfig` and the per-dataset presets (`sim_config`, `astyx_config`);
- `network`: `FusionNet` (image branch, radar encoder, gated fusion, CenterNet head, health VAE);
- `data`: samples from any source -> tensors and training targets;
- `losses`, `decode`: training losses; head maps -> `DETECTION_DTYPE` boxes;
- `detector`: `Detector` (load, warm_up, detect / preprocess + infer + decode) and checkpoints.

Importing this package imports torch; `fusion.cli` imports it lazily.
"""

from fusion.model.config import ModelConfig, astyx_config, sim_config
from fusion.model.detector import DEFAULT_WEIGHTS, Detector, load_checkpoint, save_checkpoint
from fusion.model.network import MODES, FusionNet

__all__ = [
    "DEFAULT_WEIGHTS",
    "MODES",
    "Detector",
    "FusionNet",
    "ModelConfig",
    "astyx_config",
    "load_checkpoint",
    "save_checkpoint",
    "sim_config",
]
