"""Tokens, part 2: the published corpus -> zstd token shards -> training batches.

``download`` fetches the TinyStories files from the Hugging Face Hub by short name (``v1``, ``v2``, ``instruct``,
``all-data``, ``parquet``); ``prepare`` tokenizes corpora (any format :mod:`tinystories.corpus` reads) into a
dataset directory of hash-checked zstd shards plus the tokenizer that made them; ``TokenLoader`` serves shuffled,
resumable, DDP-disjoint batches from it on native threads; ``verify`` and ``stats`` inspect it. Modules:
``download``, ``shards`` (the directory format), ``writer`` (``prepare``), ``loader``, ``inspect`` and ``cli``
(``tinystories data``)."""

from tinystories.data.download import DownloadError, download
from tinystories.data.inspect import stats, verify
from tinystories.data.loader import TokenLoader
from tinystories.data.shards import IGNORE_INDEX, ShardError, load_dataset_tokenizer, read_index
from tinystories.data.writer import DatasetWriter, prepare, story_in_val

__all__ = [
    "IGNORE_INDEX",
    "DatasetWriter",
    "DownloadError",
    "ShardError",
    "TokenLoader",
    "download",
    "load_dataset_tokenizer",
    "prepare",
    "read_index",
    "stats",
    "story_in_val",
    "verify",
]
