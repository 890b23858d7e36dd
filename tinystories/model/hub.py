"""``push_to_hub``: an exported model folder to a Hugging Face Hub model repository (``export --push-to-hub``).

Built on ``huggingface_hub`` (``HfApi.create_repo`` with ``exist_ok``, then ``upload_folder``: one commit), which
reads the token from ``HF_TOKEN`` (or a saved ``hf auth login``) and the Hub's address from ``HF_ENDPOINT``. A
refused token, a missing repository permission or an unreachable Hub is a :class:`PushError` (one line); the
local folder is never touched.
"""

from __future__ import annotations

import re
from pathlib import Path

from tinystories.data.download import _endpoint, _require_hub
from tinystories.runtime.errors import ConfigError, WorkFailed

_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


class PushError(WorkFailed):
    """An upload that failed; the message names the repository and the reason."""


def check_push(repo_id: str) -> None:
    """Bad input before any work: a repository id that is not ``owner/name``, no huggingface_hub, no token."""
    if not _REPO_ID.fullmatch(repo_id) or len(repo_id) > 96:
        raise ConfigError(
            f"--push-to-hub {repo_id!r}: expected a Hub repository id OWNER/NAME (e.g. me/tinystories-33m)"
        )
    try:
        _require_hub()
    except RuntimeError as e:
        raise ConfigError(str(e)) from None
    from huggingface_hub import get_token

    if not get_token():
        raise ConfigError(
            f"--push-to-hub {repo_id}: no Hugging Face token; set HF_TOKEN to a token with write access "
            "(https://huggingface.co/settings/tokens) or run `hf auth login`"
        )


def push_to_hub(folder: str | Path, repo_id: str, *, private: bool = False) -> str:
    """Upload ``folder`` to the model repository ``repo_id`` (created when missing); returns the commit's URL."""
    check_push(repo_id)
    import httpx2
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
    from huggingface_hub.utils import disable_progress_bars

    api = HfApi(endpoint=_endpoint())
    disable_progress_bars()
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id, folder_path=str(folder), repo_type="model", commit_message=f"Upload {Path(folder).name}"
        )
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else "?"
        reason = {401: "the token was refused", 403: "the token may not write there"}.get(status, "the Hub refused it")
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PushError(
            f"pushing {folder} to {_endpoint()}/{repo_id}: {reason} (HTTP {status}: {first}); {folder} is complete"
        ) from None
    except (httpx2.TransportError, OfflineModeIsEnabled) as e:
        raise PushError(
            f"pushing {folder} to {repo_id}: cannot reach the Hugging Face Hub at {_endpoint()} "
            f"({type(e).__name__}: {e}); {folder} is complete: upload it later with `hf upload {repo_id} {folder}`"
        ) from None
    return str(commit.commit_url)
