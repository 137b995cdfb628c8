"""`TrainConfig`: every setting of a training run in one dataclass, nanoGPT-style.

Each field says why it has its default; `fusion train` builds one from its flags, prints it, and
stores the whole of it in every checkpoint and weights file beside the data description, the
code version and the seed, so a model says exactly how it was made. The defaults are the
settings chosen by k-fold cross-validation over whole Astyx sequences (docs/model.md) and fit
the 15-minute budget of the default `fusion train --astyx` on a 2-core CPU.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from fusion.errors import ConfigError


@dataclass
class TrainConfig:
    # --- data ---
    data: str = "astyx"  # astyx | sim | recordings
    # Astyx: frames split by whole runs (sequences), never frames of one run on both sides:
    # the last runs holding 20 % of the frames are the test part (356-445, only `fusion eval`
    # reads it), the runs before them holding 15 % the validation part, the rest training.
    astyx_root: str = ""  # empty: ../shared/realdata/astyx_hires2019 or $FUSION_ASTYX_ROOT
    astyx_train_on: str = "train"  # train | train+val (final model: validate on train's tail)
    recordings: tuple[str, ...] = ()
    val_recordings: tuple[str, ...] = ()
    sim_seeds: tuple[int, ...] = (11, 12, 13, 14, 15, 16, 17, 18)  # never a shipped drive's
    sim_val_seeds: tuple[int, ...] = (100, 101, 102)  # one drive per scenario (city, highway,
    # night): the health score is calibrated on these, so each condition must be in them
    sim_duration_s: float = 20.0
    sim_frame_step: int = 4  # 20 Hz drives: every 4th frame (5 Hz) is plenty of variety

    # --- optimisation ---
    epochs: int = 20  # validation mean AP plateaus after ~15 epochs on 288 Astyx frames
    batch_size: int = 8  # 36 steps an epoch on Astyx; small batches regularise
    lr: float = 2e-3  # peak of a one-cycle schedule (10 % warm-up, cosine down)
    weight_decay: float = 1e-2  # AdamW; 288 frames overfit without it
    ema_decay: float = 0.99  # weights averaged over ~100 steps: steadier validation than raw
    patience: int = 8  # epochs without a better validation mean AP before stopping
    max_minutes: float = 0.0  # wall-clock budget, 0 = none (checkpoint kept when it runs out)
    seed: int = 0
    device: str = "auto"  # auto = CUDA when present, else CPU
    threads: int = 2

    # --- augmentation, consistent across sensors (fusion.learn.augment) ---
    flip: float = 0.5  # chance of a mirrored frame: image, calibration, radar and boxes together
    # the image as recorded or one of its cached photometric variants (exposure, white
    # balance; fusion.learn.features), picked uniformly
    rotate_rad: float = 0.1  # world rotation about the camera, uniform +-
    scale: float = 0.05  # world scale about the camera (the image is unchanged), uniform +-
    shift_m: float = 2.0  # world shift along x, uniform +-
    point_dropout: float = 0.3  # up to this fraction of radar points dropped (uniform per frame)
    point_jitter_m: float = 0.05  # radar point position noise (std, m)

    # --- where things go ---
    out: str = "runs/train"
    cache_dir: str = "runs/cache"  # frozen backbone features and encoded frames per data set
    progress: bool = True

    notes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.data not in ("astyx", "sim", "recordings"):
            raise ConfigError(f"data {self.data!r} is not one of astyx, sim, recordings")
        if self.astyx_train_on not in ("train", "train+val"):
            raise ConfigError("astyx_train_on must be 'train' or 'train+val'")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError(
                f"epochs ({self.epochs}), batch size ({self.batch_size}) and lr ({self.lr}) "
                "must be positive"
            )
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema_decay {self.ema_decay} must be in [0, 1)")
        if self.data == "recordings" and not (self.recordings and self.val_recordings):
            raise ConfigError("--data recordings needs training and validation recordings")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        values = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in known}
        return cls(**fixed)

    def describe(self) -> str:
        """The config as aligned ``name = value`` lines (what `fusion train` prints)."""
        items = dataclasses.asdict(self)
        width = max(map(len, items))
        return "\n".join(f"{k:<{width}} = {v!r}" for k, v in items.items())
