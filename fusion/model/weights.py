"""Weights files: safetensors tensors plus a JSON header, never pickle.

A weights file holds what a trained model adds to the pretrained backbone
(`FusionNet.trainable_state_dict`) as float32 tensors, and in the safetensors metadata: the
format, the whole `ModelConfig` as JSON, the SHA-256 of the backbone weights it was trained on
(`fusion.model.efficientnet.pretrained_digest`) and whatever the trainer adds (its config, the
data, the code version, the seed, the best metric). Loading rebuilds the network from the config,
loads the backbone from the installed package and the file's tensors strictly on top: a missing
or unexpected tensor, or a backbone other than the one trained on, is an error that says so.
Reading a safetensors file parses a JSON header and copies bytes; it cannot run code.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from fusion.errors import ModelError
from fusion.model.config import ModelConfig
from fusion.model.efficientnet import pretrained_digest
from fusion.model.network import FusionNet

WEIGHTS_FORMAT = "fusion-weights/2"
#: The committed weights trained on the simulator's drives; the demo's default model.
DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "sim_default.safetensors"


def save_weights(path: Path | str, model: FusionNet, **metadata: object) -> Path:
    """Write `model`'s trainable tensors and config (plus `metadata`, JSON-encoded) atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        k: v.detach().float().contiguous() if v.is_floating_point() else v.detach().contiguous()
        for k, v in model.trainable_state_dict().items()
    }
    header = {
        "format": WEIGHTS_FORMAT,
        "config": model.cfg.to_json(),
        "backbone_sha256": pretrained_digest(),
        **{k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()},
    }
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=header)
    tmp.replace(path)
    return path


def read_metadata(path: Path | str) -> dict[str, str]:
    """The JSON header of a weights file, checked to be ours."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelError(
            f"no weights file at {path}; train one with `fusion train` or pass --weights"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own and OS errors for damaged files
        raise ModelError(f"{path} is not a safetensors weights file: {exc}") from exc
    if metadata.get("format") != WEIGHTS_FORMAT:
        raise ModelError(
            f"{path} is not a {WEIGHTS_FORMAT} file (format {metadata.get('format')!r}); "
            "weights from before the safetensors format must be retrained"
        )
    return metadata


def load_weights(path: Path | str) -> tuple[FusionNet, dict[str, str]]:
    """(model on the CPU in eval mode, the file's metadata)."""
    from safetensors.torch import load_file

    metadata = read_metadata(path)
    try:
        cfg = ModelConfig.from_dict(json.loads(metadata["config"]))
    except (KeyError, ValueError) as exc:
        raise ModelError(f"{path}: the model config in its header is unreadable: {exc}") from exc
    if metadata.get("backbone_sha256") != pretrained_digest():
        raise ModelError(
            f"{path} was trained on backbone weights {metadata.get('backbone_sha256')}, the "
            f"installed package has {pretrained_digest()}; install the version it was trained "
            "with or retrain"
        )
    model = FusionNet(cfg)
    tensors = load_file(str(path))
    expected = set(model.trainable_state_dict())
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise ModelError(
            f"{path} does not fit the network its config describes: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    try:
        model.load_state_dict(tensors, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise ModelError(f"{path}: {exc}") from exc
    return model.eval(), metadata


def file_digest(path: Path | str) -> str:
    """SHA-256 (first 16 hex digits) of a file: names caches built from a weights file."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def model_digest(model: FusionNet) -> str:
    """SHA-256 (16 hex digits) of a model's config and trainable tensors, however it was made."""
    digest = hashlib.sha256(model.cfg.to_json().encode())
    for name, tensor in sorted(model.trainable_state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
