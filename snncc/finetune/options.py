"""The options of a fine-tuning run, validated once, in one record that checkpoints and ``.snn`` attrs store."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from snncc.errors import SnnccError

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "step", "none")
#: The options that decide the trained weights: a checkpoint resumes only under the same values of these.
RESULT_OPTIONS = ("timesteps", "epochs", "lr", "batch_size", "optimizer", "schedule", "seed", "limit", "val_limit",
                  "surrogate", "width", "momentum", "distill", "temperature")


@dataclass(frozen=True)
class FinetuneOptions:
    """How to fine-tune. ``timesteps`` T is the latency the loss sees; ``epochs`` passes over the training
    images; ``lr`` the peak learning rate of ``optimizer`` (``adam``, or ``sgd`` with ``momentum``) under
    ``schedule`` (``cosine`` decays it to 0 over all steps, ``step`` divides it by 10 at half and again at three
    quarters of the epochs, ``none`` keeps it); ``seed`` fixes the shuffling and torch's generator; ``limit``
    uses the first N training images; of those the last ``val_limit`` are held back for the validation accuracy
    at the end of each epoch (0: no validation); ``checkpoint`` is a directory written after every epoch and
    ``resume`` one to continue from; ``device`` is ``cpu`` or ``cuda``; ``surrogate`` and ``width`` the spike's
    surrogate derivative (:data:`snncc.runtime.dynamics.SURROGATES`)."""

    timesteps: int = 8
    epochs: int = 1
    lr: float = 1e-4
    batch_size: int = 32
    optimizer: str = "adam"
    schedule: str = "cosine"
    seed: int = 0
    limit: int | None = None
    val_limit: int = 1000
    checkpoint: Path | None = None
    resume: Path | None = None
    device: str = "cpu"
    surrogate: str = "fast-sigmoid"
    width: float = 0.5
    momentum: float = 0.9
    distill: float = 0.0
    temperature: float = 4.0
    teacher: Path | None = None

    def __post_init__(self) -> None:
        for name in ("timesteps", "epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                flag = "--" + name.replace("_", "-")
                raise SnnccError(f"{name} ({flag}) must be a positive integer, got {value!r}")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            raise SnnccError(f"limit (--limit) must be a positive number of images, got {self.limit!r}")
        if not isinstance(self.val_limit, int) or self.val_limit < 0:
            raise SnnccError(f"val_limit (--val-limit) must be 0 or a positive number of images, "
                             f"got {self.val_limit!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise SnnccError(f"lr (--lr) must be a positive number, got {self.lr!r}")
        if self.optimizer not in OPTIMIZERS:
            raise SnnccError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise SnnccError(f"unknown learning-rate schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if self.device not in ("cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise SnnccError(f"device must be cpu or cuda (cuda:N), got {self.device!r}")
        if not (isinstance(self.distill, (int, float)) and 0 <= self.distill <= 1):
            raise SnnccError(f"distill (--distill) is the weight of the distillation loss, between 0 and 1; got "
                             f"{self.distill!r}")
        if not (isinstance(self.temperature, (int, float)) and self.temperature > 0):
            raise SnnccError(f"temperature (--temperature) must be a positive number, got {self.temperature!r}")
        for name in ("checkpoint", "resume", "teacher"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))
        object.__setattr__(self, "lr", float(self.lr))
        object.__setattr__(self, "width", float(self.width))
        object.__setattr__(self, "distill", float(self.distill))
        object.__setattr__(self, "temperature", float(self.temperature))

    def replace(self, **changes: object) -> FinetuneOptions:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict:
        """Every option as JSON (paths as strings)."""
        return {f.name: (str(v) if isinstance(v := getattr(self, f.name), Path) else v)
                for f in dataclasses.fields(self)}

    def result_options(self) -> dict:
        """The options that decide the trained weights (:data:`RESULT_OPTIONS`)."""
        return {name: getattr(self, name) for name in RESULT_OPTIONS}
