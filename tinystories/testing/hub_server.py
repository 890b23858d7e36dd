"""A Hugging Face Hub stand-in on 127.0.0.1 for tests: one dataset repository, served the way the Hub's
file endpoints answer ``huggingface_hub`` (point it here with ``HF_ENDPOINT``), with fault injection.

What ``huggingface_hub`` asks and what it gets (as read from huggingface_hub 2.4's ``file_download`` and
``hf_api``):

* ``HEAD /datasets/{repo}/resolve/{revision}/{path}``: 200 with ``X-Repo-Commit`` (the commit the revision
  points to), ``ETag`` and, as for the Hub's LFS files, ``X-Linked-Etag`` (the file's sha256) and
  ``X-Linked-Size``. A missing file is a 404 with ``X-Error-Code: EntryNotFound``; an unknown revision
  ``RevisionNotFound``; another repository ``RepoNotFound``.
* ``GET`` of the same URL: the bytes, or with ``Range: bytes=N-`` a 206 with ``Content-Range`` (how a
  download is resumed).
* ``POST /api/datasets/{repo}/paths-info/{revision}`` (form field ``paths``, repeated): the files'
  ``path``, ``size``, git ``oid`` and ``lfs`` (``oid`` = sha256, ``size``), what ``HfApi.get_paths_info``
  reads.

Uploads (what ``HfApi.create_repo`` and ``upload_folder`` send, as read from huggingface_hub 2.4's ``hf_api``,
``_commit_api`` and ``_upload_pipeline``), kept per repository in ``pushed[repo_id][path] = bytes``:

* ``POST /api/repos/create`` (JSON ``name``, ``organization``, ``type``): 200 with the repository's ``url``,
  409 when it exists (``exist_ok=True`` takes that as done).
* ``POST /api/validate-yaml`` (a README.md's front matter): 200.
* ``POST /api/{type}s/{repo}/preupload/{revision}`` (JSON ``files``: ``path``, ``sample``, ``size``): every
  file's ``uploadMode`` is ``regular``, so its bytes come inline in the commit (no LFS or Xet storage here).
* ``POST /api/{type}s/{repo}/commit/{revision}`` (NDJSON: a ``header``, then ``file`` lines with base64
  ``content``): the files are stored and ``commitUrl`` and ``commitOid`` answered.

With ``write_token`` set, an upload request whose ``Authorization`` is not ``Bearer <write_token>`` is a 401.

Faults, per file path: ``corrupt`` (serve bytes that differ from the advertised hash, same size),
``drop_after[path] = n`` (send n bytes then close the connection, once), ``stall_after[path] = n`` (send n
bytes then hang until ``released`` is set). Every request is logged as ``(method, path, Range header)``,
and the ``Authorization`` headers seen are kept.

    with FakeHub({"TinyStories-train.txt": b"..."}) as hub:
        os.environ["HF_ENDPOINT"] = hub.url
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "f54c09fd23315a6f9c86f9dc80f725de7d8f9c64"  # any 40-hex id: what `main` resolves to


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a file's content (the Hub's ``oid`` of a file)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    def __init__(self, files: dict[str, bytes], repo_id: str = "roneneldan/TinyStories", commit: str = COMMIT):
        self.files, self.repo_id, self.commit = dict(files), repo_id, commit
        self.corrupt: set[str] = set()
        self.drop_after: dict[str, int] = {}
        self.stall_after: dict[str, int] = {}
        self.log: list[tuple[str, str, str | None]] = []
        self.authorization: set[str | None] = set()  # the Authorization headers seen (HF_TOKEN)
        self.write_token: str | None = None  # uploads need `Authorization: Bearer <write_token>` when set
        self.pushed: dict[str, dict[str, bytes]] = {}  # repo id -> path -> bytes, what commits uploaded
        self.released = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.released.set()
        self._server.shutdown()
        self._server.server_close()

    def sha256(self, path: str) -> str:
        return hashlib.sha256(self.files[path]).hexdigest()

    def paths_info(self, paths: list[str]) -> list[dict]:
        return [
            {
                "type": "file",
                "path": p,
                "size": len(self.files[p]),
                "oid": git_blob_sha1(self.files[p]),
                "lfs": {"oid": self.sha256(p), "size": len(self.files[p]), "pointerSize": 134},
            }
            for p in paths
            if p in self.files
        ]


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

        def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for k, v in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, code: str) -> None:
            self._send(
                404,
                json.dumps({"error": code}).encode(),
                {"X-Error-Code": code, "X-Repo-Commit": hub.commit, "Content-Type": "application/json"},
            )

        def _revision_ok(self, revision: str) -> bool:
            if revision not in ("main", hub.commit):
                self._error("RevisionNotFound")
                return False
            return True

        def _resolve(self) -> str | None:
            """The file a resolve URL names; None when an error was answered instead."""
            prefix = f"/datasets/{hub.repo_id}/resolve/"
            path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
            hub.log.append((self.command, path, self.headers.get("Range")))
            hub.authorization.add(self.headers.get("Authorization"))
            if not path.startswith(prefix):
                self._error("RepoNotFound")
                return None
            revision, _, filename = path[len(prefix) :].partition("/")
            if not self._revision_ok(revision):
                return None
            if filename not in hub.files:
                self._error("EntryNotFound")
                return None
            return filename

        def _file_headers(self, filename: str) -> dict[str, str]:
            sha = hub.sha256(filename)
            return {
                "X-Repo-Commit": hub.commit,
                "ETag": f'"{sha}"',
                "X-Linked-Etag": f'"{sha}"',
                "X-Linked-Size": str(len(hub.files[filename])),
                "Accept-Ranges": "bytes",
            }

        def do_HEAD(self) -> None:
            if (filename := self._resolve()) is not None:
                self._send(200, hub.files[filename], self._file_headers(filename))

        def do_GET(self) -> None:
            if (filename := self._resolve()) is None:
                return
            data = hub.files[filename]
            if filename in hub.corrupt:
                data = bytes(b ^ 0x20 for b in data[:64]) + data[64:]
            headers, start = self._file_headers(filename), 0
            if (rng := self.headers.get("Range")) and rng.startswith("bytes=") and rng.endswith("-"):
                start = int(rng[len("bytes=") : -1])
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            body = data[start:]
            cut = hub.drop_after.pop(filename, None)
            if cut is None and not hub.released.is_set():
                cut = hub.stall_after.get(filename)
            if cut is None:
                self._send(206 if start else 200, body, headers)
                return
            self.send_response(206 if start else 200)
            for k, v in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body[:cut])
            self.wfile.flush()
            if filename in hub.stall_after:
                hub.released.wait()
            self.close_connection = True

        def _json(self, status: int, body: object) -> None:
            self._send(status, json.dumps(body).encode(), {"Content-Type": "application/json"})

        def _upload(self, path: str, body: bytes) -> bool:
            """Answer an upload request (create, validate, preupload, commit); False when ``path`` is none."""
            if path == "/api/validate-yaml":
                self._json(200, {"errors": [], "warnings": []})
                return True
            create = path == "/api/repos/create"
            parts = path.split("/")  # "", "api", "models", owner, name, "preupload"|"commit", revision
            if not create and not (len(parts) == 7 and parts[1] == "api" and parts[5] in ("preupload", "commit")):
                return False
            hub.authorization.add(self.headers.get("Authorization"))
            if hub.write_token is not None and self.headers.get("Authorization") != f"Bearer {hub.write_token}":
                self._json(401, {"error": "Invalid credentials in Authorization header"})
                return True
            if create:
                spec = json.loads(body)
                repo = f"{spec['organization']}/{spec['name']}" if spec.get("organization") else spec["name"]
                if repo in hub.pushed:
                    self._json(409, {"error": "You already created this model repo", "url": f"{hub.url}/{repo}"})
                else:
                    hub.pushed[repo] = {}
                    self._json(200, {"url": f"{hub.url}/{repo}", "name": repo})
                return True
            repo = f"{parts[3]}/{parts[4]}"
            if repo not in hub.pushed:
                self._send(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"})
            elif parts[5] == "preupload":
                files = json.loads(body)["files"]
                self._json(
                    200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
                )
            else:
                lines = [json.loads(line) for line in body.splitlines() if line.strip()]
                for line in lines:
                    if line["key"] == "file":
                        hub.pushed[repo][line["value"]["path"]] = base64.b64decode(line["value"]["content"])
                oid = hashlib.sha1(body).hexdigest()
                self._json(200, {"commitUrl": f"{hub.url}/{repo}/commit/{oid}", "commitOid": oid})
            return True

        def do_POST(self) -> None:
            path = urllib.parse.urlsplit(self.path).path
            hub.log.append(("POST", path, None))
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self._upload(urllib.parse.unquote(path), body):
                return
            form = urllib.parse.parse_qs(body.decode())
            prefix = f"/api/datasets/{hub.repo_id}/paths-info/"
            if not path.startswith(prefix):
                self._error("RepoNotFound")
            elif self._revision_ok(urllib.parse.unquote(path[len(prefix) :])):
                self._send(
                    200,
                    json.dumps(hub.paths_info(form.get("paths", []))).encode(),
                    {"Content-Type": "application/json"},
                )

    return Handler
