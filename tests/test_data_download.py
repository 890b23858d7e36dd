"""`tinystories data download` against a fake Hub on 127.0.0.1 (HF_ENDPOINT), run as the user runs it."""

from __future__ import annotations

import importlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from _processes import wait_until

from tinystories.data.download import DATASETS, files_for
from tinystories.testing import FakeHub

pytest.importorskip("huggingface_hub")

TRAIN, VALID = DATASETS["v1"]
CHUNK = 10 << 20  # huggingface_hub writes what it receives in 10 MiB pieces: a resume starts at a multiple


def fake_text(seed: int, n_bytes: int) -> bytes:
    words = [b"Once", b"upon", b"a", b"time", b"Lily", b"saw", b"a", b"big", b"red", b"ball.", b"\n<|endoftext|>\n"]
    out, i = bytearray(), seed
    while len(out) < n_bytes:
        i = (i * 1103515245 + 12345) % 2**31
        out += words[i % len(words)] + b" "
    return bytes(out[:n_bytes])


@pytest.fixture
def hub():
    train = fake_text(1, 1 << 20) * 12 + fake_text(3, 5000)  # 12 MiB: more than one of huggingface_hub's pieces
    with FakeHub({TRAIN: train, VALID: fake_text(2, 20_000)}) as server:
        yield server


def cli(hub_url: str, *args: str, offline: bool = False, tmp: Path, wait: bool = True):
    env = {
        **os.environ,
        "HF_ENDPOINT": hub_url,
        "HF_HOME": str(tmp / "hf_home"),
        "COLUMNS": "400",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_ETAG_TIMEOUT": "5",
        "HF_TOKEN": "hf_test_token",
    }
    env.pop("HF_HUB_OFFLINE", None)
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    cmd = [sys.executable, "-m", "tinystories.cli", "data", "download", *args, "--no-progress"]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def gets(hub: FakeHub, name: str) -> list[str | None]:
    """The Range header of each GET of `name`."""
    return [rng for method, path, rng in hub.log if method == "GET" and path.endswith("/" + name)]


def test_names_expand_to_files():
    assert files_for(["v1"]) == [TRAIN, VALID]
    assert files_for(["all"]) == [f for files in DATASETS.values() for f in files]
    assert files_for(["all-data", "v1", "v1"]) == [TRAIN, VALID, "TinyStories_all_data.tar.gz"]
    with pytest.raises(ValueError, match="unknown dataset name.*v3.*known: v1, v2, instruct"):
        files_for(["v3"])


def test_full_download_then_nothing_to_do(hub, tmp_path):
    out = tmp_path / "raw"
    r = cli(hub.url, "v1", "--out", str(out), tmp=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (out / TRAIN).read_bytes() == hub.files[TRAIN] and (out / VALID).read_bytes() == hub.files[VALID]
    assert gets(hub, TRAIN) == [None] and not list(out.glob("*.incomplete"))
    assert hub.authorization == {"Bearer hf_test_token"}  # HF_TOKEN goes with every request
    r = cli(hub.url, "v1", "--out", str(out), tmp=tmp_path)  # checked against the Hub's metadata, not fetched again
    assert r.returncode == 0 and gets(hub, TRAIN) == [None]
    assert [m for m, p, _ in hub.log if p.endswith(TRAIN)] == ["HEAD", "GET", "HEAD"]


def test_a_file_damaged_after_its_download_is_hashed_again_and_fetched_again(hub, tmp_path):
    """Issue 22.3: a flipped byte (same size, so the record alone would pass it) is found on the next run."""
    out = tmp_path / "raw"
    assert cli(hub.url, "v1", "--out", str(out), tmp=tmp_path).returncode == 0
    damaged = bytearray((out / VALID).read_bytes())
    damaged[1000] ^= 0x01
    (out / VALID).write_bytes(bytes(damaged))
    r = cli(hub.url, "v1", "--out", str(out), tmp=tmp_path, offline=True)  # offline: checked against the record
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"{out / VALID}: no longer matches the sha256 and size recorded when it was downloaded" in r.stderr
    r = cli(hub.url, "v1", "--out", str(out), tmp=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{out / VALID}: does not match the Hub's sha256 and size; downloading it again" in r.stderr
    assert (out / VALID).read_bytes() == hub.files[VALID] and len(gets(hub, VALID)) == 2
    assert len(gets(hub, TRAIN)) == 1  # the intact file is kept


def test_dropped_connection_resumes_with_a_range_request(hub, tmp_path):
    hub.drop_after[TRAIN] = CHUNK + 100_000
    r = cli(hub.url, "v1", "--out", str(tmp_path / "raw"), tmp=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert gets(hub, TRAIN) == [None, f"bytes={CHUNK}-"]
    assert (tmp_path / "raw" / TRAIN).read_bytes() == hub.files[TRAIN]


def test_killed_download_resumes_where_it_stopped(hub, tmp_path):
    out = tmp_path / "raw"
    hub.stall_after[TRAIN] = CHUNK + 120_000
    proc = cli(hub.url, "v1", "--out", str(out), tmp=tmp_path, wait=False)
    try:

        def stalled() -> bool:
            assert proc.poll() is None, "the download ended before the stall"
            return any(p.stat().st_size == CHUNK for p in out.glob(f"{TRAIN}.*.incomplete"))

        wait_until(stalled, what="the download to reach the stall")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (out / TRAIN).exists()  # never a partial file under the final name
    del hub.stall_after[TRAIN]
    hub.released.set()
    r = cli(hub.url, "v1", "--out", str(out), tmp=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert gets(hub, TRAIN) == [None, f"bytes={CHUNK}-"]
    assert (out / TRAIN).read_bytes() == hub.files[TRAIN] and not list(out.glob("*.incomplete"))


def test_corrupted_file_is_an_error_and_removed(hub, tmp_path):
    out = tmp_path / "raw"
    hub.corrupt.add(VALID)
    r = cli(hub.url, "v1", "--out", str(out), tmp=tmp_path)
    assert r.returncode == 1
    assert f"{VALID}: the downloaded file does not match the Hub (sha256" in r.stderr and "Traceback" not in r.stderr
    assert (out / TRAIN).read_bytes() == hub.files[TRAIN]  # the good file stays
    assert not (out / VALID).exists() and not list(out.glob("*.incomplete"))
    hub.corrupt.clear()
    assert cli(hub.url, "v1", "--out", str(out), tmp=tmp_path).returncode == 0
    assert (out / VALID).read_bytes() == hub.files[VALID]


def test_missing_file_names_it(hub, tmp_path):
    del hub.files[VALID]
    r = cli(hub.url, "v1", "--out", str(tmp_path / "raw"), tmp=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"{VALID}: no such file in roneneldan/TinyStories at revision main" in r.stderr
    r = cli(hub.url, "v1", "--out", str(tmp_path / "raw"), "--revision", "v9", tmp=tmp_path)
    assert r.returncode == 1 and "has no revision 'v9'" in r.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("how", ["offline", "unreachable"])
def test_offline_or_unreachable_names_the_urls_and_where_to_put_them(tmp_path, how):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    out = tmp_path / "raw"
    r = cli(url, "v1", "--out", str(out), tmp=tmp_path, offline=how == "offline")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "cannot reach the Hugging Face Hub" in r.stderr and len(r.stderr.splitlines()) == 1
    for f in (TRAIN, VALID):
        assert f"{url}/datasets/roneneldan/TinyStories/resolve/main/{f}  ->  {out / f}" in r.stderr
    # files put there by hand are then taken as they are, even offline
    out.mkdir()
    for i, f in enumerate((TRAIN, VALID)):
        (out / f).write_bytes(fake_text(i, 100))
    r = cli(url, "v1", "--out", str(out), tmp=tmp_path, offline=how == "offline")
    assert r.returncode == 0, r.stdout + r.stderr


def test_list_shows_sizes(hub, tmp_path):
    r = cli(hub.url, "--list", tmp=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert any(TRAIN in line and "12.6" in line and "v1" in line for line in r.stdout.splitlines())
    assert any("TinyStories_all_data.tar.gz" in line and "missing" in line for line in r.stdout.splitlines())
    assert ("POST", "/api/datasets/roneneldan/TinyStories/paths-info/main", None) in hub.log


@pytest.mark.parametrize("how", ["offline", "unreachable"])
def test_list_without_the_hub_still_shows_the_names_and_files(tmp_path, how):
    """Issue 22.22: the catalogue is known without the network; only the sizes need it."""
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    r = cli(url, "--list", tmp=tmp_path, offline=how == "offline")
    assert r.returncode == 0, r.stdout + r.stderr
    rows = r.stdout.splitlines()
    for name, files in DATASETS.items():
        for f in files:
            assert any(name in line and f in line and "offline" in line for line in rows), (f, r.stdout)
    reason = "HF_HUB_OFFLINE is set" if how == "offline" else f"cannot reach the Hugging Face Hub at {url}"
    assert f"sizes: offline ({reason}" in r.stdout


def test_a_missing_extra_is_installed_from_the_checkout_or_the_index(monkeypatch, tmp_path):
    download = importlib.import_module("tinystories.data.download")  # (tinystories.data.download is a function)

    assert download.install_command("hub").startswith('pip install -e ".[hub]" (in ')  # this source checkout
    installed = tmp_path / "site-packages" / "tinystories" / "data" / "download.py"
    monkeypatch.setattr(download, "__file__", str(installed))
    assert download.install_command("hub") == "pip install 'tinystories[hub]'"
