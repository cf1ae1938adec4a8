"""A Hugging Face Hub stand-in on 127.0.0.1 that serves files to the real `hf_hub_download`.

It answers what `hf_hub_download` asks of `{endpoint}/{repo_id}/resolve/{revision}/{filename}`:
a HEAD for the metadata (X-Repo-Commit, ETag, Content-Length) and a GET for the bytes, with
`Range: bytes=N-` answered by 206 so that an interrupted transfer resumes; a file may answer its
first GETs with 429 (Too Many Requests), which huggingface_hub retries. Errors carry the
Hub's X-Error-Code header so that huggingface_hub raises its specific exceptions. It never
sends Xet headers, so the plain HTTP path is used.
"""

from __future__ import annotations

import hashlib
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<filename>.+)$")
_RANGE = re.compile(r"^bytes=(\d+)-$")


@dataclass
class HubFile:
    """A served file; the first GET sends only `interrupt_after` bytes, then drops the connection.

    The first `rate_limited` GETs of it are answered 429 (Too Many Requests) without a Retry-After.
    """

    content: bytes
    interrupt_after: int | None = None
    rate_limited: int = 0

    @property
    def sha256(self) -> str:
        """The hex sha256 of the content, served as the ETag like the Hub does for LFS files."""
        return hashlib.sha256(self.content).hexdigest()


@dataclass(frozen=True)
class Request:
    """One request received by the stand-in (header names lower-cased)."""

    method: str
    path: str
    headers: dict[str, str]


@dataclass
class HubStandin:
    """Serve `files` of one repo at one commit; `requests` records every request received."""

    repo_id: str
    revision: str
    files: dict[str, HubFile]
    requests: list[Request] = field(default_factory=list)
    _interrupted: set[str] = field(default_factory=set)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        """The endpoint to set as HF_ENDPOINT."""
        assert self._server is not None, "call start() first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubStandin:
        """Listen on an ephemeral port in a daemon thread."""
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def gets(self, filename: str) -> list[Request]:
        """The GET requests received for `filename`."""
        return [r for r in self.requests if r.method == "GET" and r.path.endswith(f"/{filename}")]


def _make_handler(hub: HubStandin) -> type[BaseHTTPRequestHandler]:
    """Build a request handler class bound to `hub`."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
            """Keep test output quiet."""

        def do_HEAD(self) -> None:
            """Answer a metadata request."""
            self._answer(send_body=False)

        def do_GET(self) -> None:
            """Answer a download request, honouring `Range: bytes=N-`."""
            self._answer(send_body=True)

        def _answer(self, send_body: bool) -> None:
            hub.requests.append(Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
            match = _RESOLVE.match(unquote(self.path))
            if match is None or match["repo"] != hub.repo_id:
                return self._error(404, "RepoNotFound")
            if match["revision"] != hub.revision:
                return self._error(404, "RevisionNotFound")
            served = hub.files.get(match["filename"])
            if served is None:
                return self._error(404, "EntryNotFound", commit=hub.revision)
            if send_body and served.rate_limited > 0:
                served.rate_limited -= 1
                return self._error(429, "TooManyRequests")
            start = self._range_start()
            total = len(served.content)
            body = served.content[start:]
            self.send_response(206 if start else 200)
            self.send_header("X-Repo-Commit", hub.revision)
            self.send_header("ETag", f'"{served.sha256}"')
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(body)))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{total - 1}/{total}")
            self.end_headers()
            if not send_body:
                return None
            if served.interrupt_after is not None and match["filename"] not in hub._interrupted:
                hub._interrupted.add(match["filename"])
                self.wfile.write(body[: served.interrupt_after])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return None
            self.wfile.write(body)
            return None

        def _range_start(self) -> int:
            match = _RANGE.match(self.headers.get("Range", ""))
            return int(match[1]) if match else 0

        def _error(self, status: int, code: str, commit: str | None = None) -> None:
            body = code.encode()
            self.send_response(status)
            self.send_header("X-Error-Code", code)
            if commit is not None:
                self.send_header("X-Repo-Commit", commit)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

    return Handler
