"""The shared runtime below every stage (each stage may import it; it imports no stage).

``device`` (where a run executes: the device, the execution path that ``auto`` resolves to -- precision, kernels,
``torch.compile`` --, the torchrun process group and peak FLOP/s for MFU; the trainer, ``sample``, ``eval``,
``sweep`` and ``serve`` all resolve it the same way), ``errors`` (:class:`ConfigError`, a bad setting as one line;
:class:`WorkFailed`, exit status 1) and ``arguments`` (the command-line vocabulary every command is built from:
the parser, the options shared between commands, the one-line errors; see ``docs/cli.md``).
"""

from tinystories.runtime.errors import ConfigError, WorkFailed

__all__ = ["ConfigError", "WorkFailed"]
