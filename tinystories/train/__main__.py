"""``python -m tinystories.train`` (and ``torchrun ... -m tinystories.train``): the trainer's command line."""

from tinystories.train.cli import main

raise SystemExit(main())
