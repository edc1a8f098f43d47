"""A local HTTP server speaking the part of the Hugging Face hub protocol that `snapshot_download` uses.

huggingface_hub's real client code (listing, HEAD metadata, downloads into the cache, offline reuse) runs against
it through HF_ENDPOINT, so segue's download path is tested without internet.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

COMMIT = "1" * 40


class HubServer:
    """Serves `repos` {repo_id: folder}. Unknown repos get the hub's 404 with X-Error-Code: RepoNotFound."""

    def __init__(self, repos: dict[str, Path]):
        self.repos = repos
        self.requests: list[str] = []  # "METHOD path" of every request, for assertions
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_HEAD(self):
                server._handle(self, head=True)

            def do_GET(self):
                server._handle(self, head=False)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> "HubServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def downloaded(self) -> list[str]:
        return sorted({r.split("/resolve/", 1)[1].split("/", 1)[1] for r in self.requests
                       if r.startswith("GET ") and "/resolve/" in r})

    # -- protocol -----------------------------------------------------------------------------------------------------
    def _files(self, repo: str) -> dict[str, Path]:
        root = self.repos[repo]
        return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}

    def _reply(self, h, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if not head:
            h.wfile.write(body)

    def _json(self, h, obj, head: bool) -> None:
        self._reply(h, 200, json.dumps(obj).encode(), {"Content-Type": "application/json"}, head)

    def _handle(self, h, head: bool) -> None:
        path = unquote(urlparse(h.path).path)
        self.requests.append(f"{'HEAD' if head else 'GET'} {path}")
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"]:
            repo = "/".join(parts[2:4])
            rest = parts[4:]
        elif "resolve" in parts:
            i = parts.index("resolve")
            repo, rest = "/".join(parts[:i]), parts[i:]
        else:
            return self._reply(h, 404, b"not found", head=head)
        if repo not in self.repos:
            return self._reply(h, 404, b'{"error":"Repository not found"}',
                               {"X-Error-Code": "RepoNotFound", "Content-Type": "application/json"}, head)
        files = self._files(repo)
        if not rest or rest[0] == "revision":  # repo info
            return self._json(h, {"id": repo, "modelId": repo, "sha": COMMIT, "private": False,
                                  "siblings": [{"rfilename": f} for f in files]}, head)
        if rest[0] == "tree":
            return self._json(h, [{"type": "file", "path": f, "size": p.stat().st_size,
                                   "oid": hashlib.sha1(p.read_bytes()).hexdigest()} for f, p in files.items()], head)
        if rest[0] == "resolve":
            name = "/".join(rest[2:])
            if name not in files:
                return self._reply(h, 404, b"entry not found", {"X-Error-Code": "EntryNotFound"}, head)
            data = files[name].read_bytes()
            etag = hashlib.sha256(data).hexdigest()
            return self._reply(h, 200, data, {"X-Repo-Commit": COMMIT, "ETag": f'"{etag}"',
                                              "Content-Type": "application/octet-stream"}, head)
        return self._reply(h, 404, b"not found", head=head)
