"""Training: ``tinystories-train``, a thin driver around one readable loop.

``config`` (``TrainConfig``: preset, then TOML, then ``--key=value`` flags, validated before anything is
allocated), ``device`` (device, precision, torchrun, MFU), ``inputs`` (shards, text files or the offline
demo corpus), ``step`` (the one training step, also timed by ``sweep estimate``), ``loop`` (the resumable
run: metrics, evaluation, checkpoints) and ``cli``.
"""

from tinystories.train.cli import main
from tinystories.train.config import ConfigError, TrainConfig, load_config
from tinystories.train.loop import TrainingAborted, train

__all__ = ["ConfigError", "TrainConfig", "TrainingAborted", "load_config", "main", "train"]
