"""``download``: the published TinyStories files from the Hugging Face Hub, by short name.

    download(["v1"], "data/raw")        # data/raw/TinyStories-train.txt, data/raw/TinyStories-valid.txt

Built on ``huggingface_hub`` (``HF_ENDPOINT``, ``HF_TOKEN``, ``HF_HUB_OFFLINE``, its HEAD metadata, its
resumable ``http_get``). ``hf_hub_download`` itself is not used because, as of huggingface_hub 2.4, it
writes each attempt to a process-unique temporary file and deletes it on failure, so a killed download
starts over. Here the partial file has a stable name (the file's name plus its sha256), so rerunning
the command resumes it with a ``Range`` request, and a file that changed on the Hub meanwhile starts
over. Every finished file is checked against the size and sha256 the Hub reports before it takes its
final name; a mismatch removes it and is an error naming the file. Without a network (or with
``HF_HUB_OFFLINE=1``) the error lists the exact URLs and where to put the files.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO, cast

from tinystories.atomic import atomic_write_json
from tinystories.data.shards import sha256_file
from tinystories.progress import Progress

REPO_ID = "roneneldan/TinyStories"
DATASETS: dict[str, tuple[str, ...]] = {
    "v1": ("TinyStories-train.txt", "TinyStories-valid.txt"),
    "v2": ("TinyStoriesV2-GPT4-train.txt", "TinyStoriesV2-GPT4-valid.txt"),
    "instruct": ("TinyStoriesInstruct-train.txt", "TinyStoriesInstruct-valid.txt"),
    "all-data": ("TinyStories_all_data.tar.gz",),
    "parquet": (  # the Hub's conversion of v1 (a `text` column); names as of the repository's main branch
        "data/train-00000-of-00004-2d5a1467fff1081b.parquet",
        "data/train-00001-of-00004-5852b56a2bd28fd9.parquet",
        "data/train-00002-of-00004-a26307300439e943.parquet",
        "data/train-00003-of-00004-d243063613e5a057.parquet",
        "data/validation-00000-of-00001-869c898b519ad725.parquet",
    ),
}
ALL = "all"
RECORD_FILE = ".tinystories-download.json"  # what was downloaded: file -> sha256, size, commit
_SHA256 = re.compile(r"[0-9a-f]{64}")


class DownloadError(RuntimeError):
    """A download that cannot be done; the message names the file(s) and what to do."""


def files_for(names: Sequence[str]) -> list[str]:
    """Repository paths of the given short names, in catalogue order, without repeats."""
    unknown = [n for n in names if n != ALL and n not in DATASETS]
    if unknown or not names:
        raise ValueError(
            f"unknown dataset name(s) {', '.join(unknown) or '(none given)'}; known: {', '.join([*DATASETS, ALL])}"
        )
    wanted = set(DATASETS) if ALL in names else set(names)
    return [f for name, files in DATASETS.items() if name in wanted for f in files]


def install_command(extra: str) -> str:
    """How to add an extra: into a source checkout (a pyproject.toml beside the package) editable, from the
    checkout; otherwise from the package index."""
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file():
        return f'pip install -e ".[{extra}]" (in {root})'
    return f"pip install 'tinystories[{extra}]'"


def _require_hub() -> None:
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        raise DownloadError(f"downloading needs huggingface_hub: {install_command('hub')}") from None


def _endpoint() -> str:
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT", constants.ENDPOINT).rstrip("/")


def file_url(path: str, revision: str = "main") -> str:
    from huggingface_hub import hf_hub_url

    return hf_hub_url(REPO_ID, path, repo_type="dataset", revision=revision, endpoint=_endpoint())


def _unreachable(files: Sequence[str], out: Path, revision: str, reason: str) -> DownloadError:
    where = "\n".join(f"  {file_url(f, revision)}  ->  {out / f}" for f in files)
    return DownloadError(
        f"cannot reach the Hugging Face Hub at {_endpoint()} ({reason}). Fetch these files another way and put "
        f"them at the paths shown, then rerun this command (or pass them straight to `tinystories data prepare`):\n"
        f"{where}\nA mirror can be set with HF_ENDPOINT; HF_HUB_OFFLINE=1 forbids any network access."
    )


def list_files(revision: str = "main") -> list[dict[str, Any]]:
    """The catalogue with each file's size on the Hub: [{name, file, bytes, offline}]. Offline or with the Hub
    out of reach the names and files are still listed, with ``bytes`` None and ``offline`` saying why."""
    _require_hub()
    import httpx2
    from huggingface_hub import HfApi, RepoFile, constants
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    everything = files_for([ALL])
    sizes: dict[str, int | None] = {}
    offline = None
    if constants.is_offline_mode():
        offline = "HF_HUB_OFFLINE is set"
    else:
        try:
            infos = HfApi(endpoint=_endpoint()).get_paths_info(
                REPO_ID, everything, repo_type="dataset", revision=revision
            )
        except HfHubHTTPError as e:
            raise DownloadError(f"{REPO_ID} at revision {revision}: the Hub refused the file listing ({e})") from None
        except (httpx2.TransportError, OfflineModeIsEnabled) as e:
            offline = f"cannot reach the Hugging Face Hub at {_endpoint()} ({type(e).__name__}: {e})"
        else:
            sizes = {i.path: i.size for i in infos if isinstance(i, RepoFile)}  # every path asked for is a file
    return [
        {"name": name, "file": f, "bytes": sizes.get(f), "offline": offline}
        for name, files in DATASETS.items()
        for f in files
    ]


class _CountingFile:
    """The partial file, telling the progress bar about every chunk ``http_get`` writes."""

    def __init__(self, fh: BinaryIO, bar: Progress):
        self._fh, self._bar = fh, bar

    def write(self, data: bytes) -> int:
        self._bar.advance(len(data))
        return self._fh.write(data)

    def __getattr__(self, name: str) -> Any:  # tell / seek / truncate, used when a server ignores Range
        return getattr(self._fh, name)


def download(names: Sequence[str], out: str | Path, *, revision: str = "main", progress: bool = True) -> list[Path]:
    """Downloads the files of the named datasets into ``out`` (repository paths kept); returns their paths.

    Files already there with the size and sha256 the Hub reports are kept as they are. Raises
    DownloadError (offline, unreachable, missing file, hash or size mismatch, interrupted transfer).
    """
    _require_hub()
    import httpx2
    from huggingface_hub import constants, get_hf_file_metadata
    from huggingface_hub.errors import (
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.utils import build_hf_headers, disable_progress_bars

    disable_progress_bars()  # ours is the rich bar below
    out = Path(out)
    files = files_for(names)
    record_path = out / RECORD_FILE
    record: dict[str, dict] = json.loads(record_path.read_text()) if record_path.is_file() else {}
    if constants.is_offline_mode():
        missing = [f for f in files if not (out / f).is_file()]
        if missing:
            raise _unreachable(missing, out, revision, "HF_HUB_OFFLINE is set")
        for f in files:  # downloaded before: checked against the record; placed by hand: taken as it is
            if f in record and not _matches(out / f, record[f]["sha256"], record[f]["bytes"]):
                raise DownloadError(
                    f"{out / f}: no longer matches the sha256 and size recorded when it was downloaded "
                    f"({record_path}); delete it and rerun online to fetch it again"
                )
        return [out / f for f in files]
    paths: list[Path] = []
    for f in files:
        url, dest = file_url(f, revision), out / f
        try:
            meta = get_hf_file_metadata(url, timeout=constants.HF_HUB_ETAG_TIMEOUT)
        except RemoteEntryNotFoundError:
            raise DownloadError(f"{f}: no such file in {REPO_ID} at revision {revision} ({url})") from None
        except RevisionNotFoundError:
            raise DownloadError(f"{REPO_ID} has no revision {revision!r} ({url})") from None
        except RepositoryNotFoundError:
            raise DownloadError(
                f"{REPO_ID}: repository not found at {_endpoint()} (check HF_ENDPOINT / HF_TOKEN)"
            ) from None
        except HfHubHTTPError as e:
            raise DownloadError(f"{f}: the Hub refused {url} ({e})") from None
        except (httpx2.TransportError, OfflineModeIsEnabled) as e:
            todo = [g for g in files[files.index(f) :] if not (out / g).is_file()]
            if not todo:
                paths.extend(out / g for g in files[files.index(f) :])
                break
            raise _unreachable(todo, out, revision, f"{type(e).__name__}: {e}") from None
        sha, size = meta.etag, meta.size
        if sha is None or not _SHA256.fullmatch(sha) or size is None:
            raise DownloadError(
                f"{f}: the Hub did not report a sha256 and size for {url} (ETag {sha!r}); not a dataset file?"
            )
        if _matches(dest, sha, size):  # hashed again every time: a file can be damaged after its download
            paths.append(dest)
        else:
            if dest.is_file():
                print(f"{dest}: does not match the Hub's sha256 and size; downloading it again", file=sys.stderr)
            paths.append(_fetch(f, meta.location, dest, sha, size, build_hf_headers(), progress))
        record[f] = {"sha256": sha, "bytes": size, "commit": meta.commit_hash, "revision": revision}
        atomic_write_json(record_path, record)
    return paths


def _matches(path: Path, sha: str, size: int) -> bool:
    return path.is_file() and path.stat().st_size == size and sha256_file(path) == sha


def _fetch(name: str, url: str, dest: Path, sha: str, size: int, headers: dict, progress: bool) -> Path:
    """Downloads (or resumes) one file into ``dest``, checked against ``sha`` and ``size``."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.file_download import http_get

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f"{dest.name}.{sha[:16]}.incomplete")
    for stale in dest.parent.glob(f"{dest.name}.*.incomplete"):
        if stale != part:
            stale.unlink()  # a partial download of an older version of the file
    done = part.stat().st_size if part.is_file() else 0
    if done > size:
        part.unlink()
        done = 0
    with (
        Progress(f"download {name}", size, unit="bytes", completed=done, enabled=progress) as bar,
        open(part, "ab") as fh,
    ):
        try:
            counting = cast(BinaryIO, _CountingFile(fh, bar))  # a BinaryIO by delegation (__getattr__)
            http_get(url, counting, resume_size=done, headers=headers, expected_size=size)
        except (httpx2.TransportError, HfHubHTTPError, OSError) as e:
            fh.flush()
            got = part.stat().st_size
            raise DownloadError(
                f"{name}: download interrupted after {got:,} of {size:,} bytes ({type(e).__name__}: "
                f"{str(e).splitlines()[0]}); {part} is kept: rerun the same command to resume"
            ) from None
    got_size, got_sha = part.stat().st_size, sha256_file(part)
    if got_size != size or got_sha != sha:
        part.unlink()
        raise DownloadError(
            f"{name}: the downloaded file does not match the Hub (sha256 {got_sha}, {got_size:,} bytes; "
            f"expected {sha}, {size:,} bytes); it was removed: rerun to download it again"
        )
    os.replace(part, dest)
    return dest
