"""Training: ``tinystories-train``, a thin driver around one readable loop.

``config`` (``TrainConfig``: preset, then TOML, then ``--key=value`` flags, validated before anything is
allocated), ``inputs`` (shards, text files or the offline demo corpus), ``step`` (the one training step, also
timed by ``sweep estimate``), ``loop`` (the ``Trainer``: the resumable run, read one method at a time),
``metrics`` (metrics.jsonl, TensorBoard, the display and its ETA), ``validation`` (the validation loss and the
sampled story), ``rng`` (the random state a checkpoint carries), ``resume`` (what a resume may change, which
checkpoint it continues, the run's config.json history), ``memory`` (what a configuration needs against what the
device has, checked before anything is allocated), ``lock`` (one trainer per run directory), ``signals``
(SIGINT/SIGTERM/SIGUSR1: checkpoint, then exit 128 + N) and ``cli``. The device and execution path come from
:mod:`tinystories.runtime`.
"""

from tinystories.runtime.errors import ConfigError
from tinystories.train.cli import main
from tinystories.train.config import TrainConfig, load_config
from tinystories.train.lock import RunLocked
from tinystories.train.loop import TrainingAborted, train
from tinystories.train.signals import Interrupted

__all__ = ["ConfigError", "Interrupted", "RunLocked", "TrainConfig", "TrainingAborted", "load_config", "main", "train"]
