"""A small Hub-compatible HTTP server for tests (stdlib only).

The real ``huggingface_hub`` client talks plain HTTP to it: create a repo, commit files (every file is
answered ``uploadMode: "regular"``, so content travels base64 inside the commit, no LFS and no Xet),
read repo info, list trees and download by branch or commit sha. It follows
``docs/hub-test-server.md``: 40-hex commit ids, ``X-Error-Code`` on every error, 4xx (never 5xx) when
the handler itself fails, so a bug shows as an error instead of a client retrying for 20 s.

Example:
    >>> server, url = start_hub_server(tokens={"hf_alice": "alice"})
    >>> HfApi(endpoint=url, token="hf_alice").create_repo("alice/pack")
    >>> server.state.commit_log[-1]["files"]
    ['.gitattributes']
    >>> stop_hub_server(server)
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_sha1(content: bytes) -> str:
    """The git blob id of ``content``, as the Hub reports it in ``oid`` and ``ETag``."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class HubError(Exception):
    """An error answer: HTTP status, ``X-Error-Code`` header (may be empty) and message."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


@dataclass
class Repo:
    """One repository: commits are full snapshots ``{path: bytes}``, branches map names to shas."""

    repo_type: str
    repo_id: str
    owner: str
    private: bool
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    num_prs: int = 0

    def resolve(self, revision: str) -> str:
        """The commit sha for a branch name or a full commit sha; ``RevisionNotFound`` otherwise."""
        if revision in self.branches:
            return self.branches[revision]
        if revision in self.commits:
            return revision
        raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")


@dataclass
class Fault:
    """A misbehaviour injected for requests whose path contains ``path_contains`` (and of ``method``, if set).

    ``action``: ``"status"`` answers ``status`` with ``X-Error-Code: code`` (may be empty); ``"hang"``
    accepts the request and never answers (until the server stops); ``"drip"`` answers normally but sends
    the body one byte every ``drip_interval_s`` seconds.
    """

    path_contains: str
    action: str = "status"
    status: int = 500
    code: str = ""
    method: str | None = None
    drip_interval_s: float = 0.05

    def matches(self, method: str, path: str) -> bool:
        return self.path_contains in path and (self.method is None or self.method == method)


@dataclass
class HubState:
    """Everything the server holds; tests read ``commit_log`` and ``requests`` and may add ``faults``."""

    tokens: dict[str, str]
    repos: dict[tuple[str, str], Repo] = field(default_factory=dict)
    commit_log: list[dict[str, Any]] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    lock: threading.RLock = field(default_factory=threading.RLock)
    counter: int = 0

    def new_commit(self, repo: Repo, parent: str | None, files: dict[str, bytes], summary: str) -> str:
        """Store a snapshot as a new commit and log it; returns its 40-hex sha."""
        self.counter += 1
        digest = hashlib.sha1()
        digest.update(f"{repo.repo_type}/{repo.repo_id}\0{parent}\0{summary}\0{self.counter}".encode())
        for path in sorted(files):
            digest.update(path.encode() + b"\0" + git_blob_sha1(files[path]).encode())
        sha = digest.hexdigest()
        repo.commits[sha] = dict(files)
        self.commit_log.append(
            {
                "repo_id": repo.repo_id,
                "repo_type": repo.repo_type,
                "sha": sha,
                "parent": parent,
                "summary": summary,
                "files": sorted(files),
            }
        )
        return sha


class HubHandler(BaseHTTPRequestHandler):
    """Routes the requests ``huggingface_hub`` sends; see ``docs/hub-test-server.md`` for the list."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # http.server writes headers and body apart: avoid Nagle + delayed ACK
    server: HubServer

    # -- plumbing ---------------------------------------------------------------------------------------
    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the state keeps a request log instead

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        state = self.server.state
        split = urlsplit(self.path)
        with state.lock:
            state.requests.append((method, split.path))
            fault = next((f for f in state.faults if f.matches(method, split.path)), None)
        self._drip: Fault | None = None
        if fault is not None and fault.action == "hang":
            state.stopping.wait()  # accepted, never answered: released when the server stops
            self.close_connection = True
            return
        if fault is not None and fault.action == "status":
            self._read_body()
            self._send_json(fault.status, {"error": f"injected HTTP {fault.status}"}, code=fault.code)
            return
        if fault is not None and fault.action == "drip":
            self._drip = fault
        try:
            body = self._read_body()
            query = {k: v[-1] for k, v in parse_qs(split.query).items()}
            # split the raw path first, then unquote each segment: revisions arrive quoted with safe=""
            segments = [unquote(s) for s in split.path.split("/")[1:]]
            with state.lock:
                self._route(method, segments, query, body)
        except HubError as err:
            self._send_json(err.status, {"error": err.message}, code=err.code, headers=err.headers)
        except Exception as err:  # noqa: BLE001 (a server bug must answer 4xx: the client retries 5xx)
            self._send_json(400, {"error": f"test hub server error: {type(err).__name__}: {err}"})

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes, headers: dict[str, str], *, head: bool = False) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if head:
            return
        drip = getattr(self, "_drip", None)
        if drip is None:
            self.wfile.write(body)
            return
        for index in range(len(body)):  # slow drip: every read gets a byte, the whole body takes forever
            if self.server.state.stopping.is_set():
                self.close_connection = True
                return
            self.wfile.write(body[index : index + 1])
            self.wfile.flush()
            time.sleep(drip.drip_interval_s)

    def _send_json(
        self, status: int, payload: Any, *, code: str = "", headers: dict[str, str] | None = None
    ) -> None:
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        if code:
            all_headers["X-Error-Code"] = code
        self._send(status, json.dumps(payload).encode(), all_headers, head=self.command == "HEAD")

    @property
    def base_url(self) -> str:
        return self.server.url

    # -- auth -------------------------------------------------------------------------------------------
    def _user(self) -> str | None:
        """The user of the bearer token; an unknown token is a 401 as on the Hub."""
        auth = self.headers.get("Authorization", "")
        if not auth.lower().startswith("bearer "):
            return None
        token = auth[7:].strip()
        user = self.server.state.tokens.get(token)
        if user is None:
            raise HubError(401, "", "Invalid credentials in Authorization header")
        return user

    def _repo(self, repo_type: str, repo_id: str, *, write: bool = False) -> Repo:
        """The repo if the caller may read it (or write it); hidden repos look missing, as on the Hub."""
        repo = self.server.state.repos.get((repo_type, repo_id))
        try:
            user = self._user()
        except HubError:
            user = None
        if repo is None or (repo.private and user != repo.owner):
            status = 401 if user is None else 404
            raise HubError(status, "RepoNotFound", f"Repository Not Found for {repo_type} {repo_id!r}")
        if write and user != repo.owner:
            who = f"user {user!r}" if user else "an anonymous caller"
            raise HubError(403 if user else 401, "", f"{who} has no write access to {repo_id!r}")
        return repo

    # -- routing ----------------------------------------------------------------------------------------
    def _route(self, method: str, seg: list[str], query: dict[str, str], body: bytes) -> None:
        if seg[:1] == ["api"]:
            rest = seg[1:]
            if method == "POST" and rest == ["repos", "create"]:
                return self._create_repo(json.loads(body or b"{}"))
            if method == "POST" and rest == ["validate-yaml"]:
                return self._send_json(200, {"errors": [], "warnings": []})
            if method == "GET" and rest == ["whoami-v2"]:
                user = self._user()
                if user is None:
                    raise HubError(401, "", "Invalid username or password.")
                return self._send_json(200, {"type": "user", "name": user, "orgs": [], "auth": {}})
            if len(rest) >= 3 and rest[0] in REPO_TYPES:
                repo_type, repo_id, tail = REPO_TYPES[rest[0]], f"{rest[1]}/{rest[2]}", rest[3:]
                return self._repo_api(method, repo_type, repo_id, tail, query, body)
            raise HubError(404, "", f"no such endpoint: {self.path}")
        if method in ("GET", "HEAD"):
            repo_type = "model"
            if seg and seg[0] in ("datasets", "spaces"):
                repo_type, seg = REPO_TYPES[seg[0]], seg[1:]
            if len(seg) >= 5 and seg[2] == "resolve":
                return self._resolve(repo_type, f"{seg[0]}/{seg[1]}", seg[3], "/".join(seg[4:]))
        raise HubError(404, "", f"no such endpoint: {method} {self.path}")

    def _repo_api(
        self, method: str, repo_type: str, repo_id: str, tail: list[str], query: dict[str, str], body: bytes
    ) -> None:
        if method == "GET" and not tail:
            return self._info(repo_type, repo_id, "main")
        if method == "GET" and len(tail) == 2 and tail[0] == "revision":
            return self._info(repo_type, repo_id, tail[1])
        if method == "GET" and len(tail) >= 2 and tail[0] == "tree":
            recursive = query.get("recursive", "false").lower() == "true"
            return self._tree(repo_type, repo_id, tail[1], "/".join(tail[2:]), recursive)
        if method == "POST" and len(tail) == 2 and tail[0] == "preupload":
            return self._preupload(repo_type, repo_id, tail[1], json.loads(body))
        if method == "POST" and len(tail) == 2 and tail[0] == "branch":
            return self._create_branch(repo_type, repo_id, tail[1], json.loads(body or b"{}"))
        if method == "POST" and len(tail) == 2 and tail[0] == "commit":
            return self._commit(repo_type, repo_id, tail[1], body, create_pr=query.get("create_pr") == "1")
        raise HubError(404, "", f"no such endpoint: {method} {self.path}")

    # -- endpoints --------------------------------------------------------------------------------------
    def _create_repo(self, payload: dict[str, Any]) -> None:
        user = self._user()
        if user is None:
            raise HubError(401, "", "You must be authenticated to create a repo")
        namespace = payload.get("organization") or user
        repo_type = payload.get("type") or "model"
        repo_id = f"{namespace}/{payload['name']}"
        url = f"{self.base_url}/{URL_PREFIX[repo_type]}{repo_id}"
        state = self.server.state
        if (repo_type, repo_id) in state.repos:
            return self._send_json(409, {"error": "You already created this repo", "url": url})
        if namespace != user:
            raise HubError(
                403,
                "",
                f"You don't have the rights to create a {repo_type} under the namespace {namespace!r}",
            )
        repo = Repo(repo_type, repo_id, owner=user, private=payload.get("visibility") == "private")
        repo.branches["main"] = state.new_commit(
            repo, None, {".gitattributes": GITATTRIBUTES}, "initial commit"
        )
        state.repos[(repo_type, repo_id)] = repo
        self._send_json(200, {"url": url, "name": repo_id, "id": repo_id})

    def _info(self, repo_type: str, repo_id: str, revision: str) -> None:
        repo = self._repo(repo_type, repo_id)
        sha = repo.resolve(revision)
        files = repo.commits[sha]
        self._send_json(
            200,
            {
                "id": repo_id,
                "modelId": repo_id,
                "author": repo.owner,
                "sha": sha,
                "private": repo.private,
                "gated": False,
                "disabled": False,
                "tags": [],
                "downloads": 0,
                "likes": 0,
                "lastModified": "2025-01-01T00:00:00.000Z",
                "siblings": [{"rfilename": p} for p in sorted(files)],
            },
        )

    def _tree(self, repo_type: str, repo_id: str, revision: str, prefix: str, recursive: bool) -> None:
        repo = self._repo(repo_type, repo_id)
        files = repo.commits[repo.resolve(revision)]
        base = f"{prefix.rstrip('/')}/" if prefix else ""
        entries: dict[str, dict[str, Any]] = {}
        for path, content in sorted(files.items()):
            if not path.startswith(base):
                continue
            parts = path[len(base) :].split("/")
            if recursive:  # every parent directory below the prefix, then the file
                for depth in range(1, len(parts)):
                    folder = base + "/".join(parts[:depth])
                    entries.setdefault(folder, {"type": "directory", "path": folder, "oid": "0" * 40})
            elif len(parts) > 1:
                folder = base + parts[0]
                entries.setdefault(folder, {"type": "directory", "path": folder, "oid": "0" * 40})
                continue
            entries[path] = {
                "type": "file",
                "path": path,
                "size": len(content),
                "oid": git_blob_sha1(content),
            }
        if prefix and not entries:
            raise HubError(404, "EntryNotFound", f"{prefix} does not exist on {revision!r}")
        self._send_json(200, list(entries.values()))

    def _preupload(self, repo_type: str, repo_id: str, revision: str, payload: dict[str, Any]) -> None:
        repo = self._repo(repo_type, repo_id, write=True)
        current = repo.commits[repo.resolve(revision)]
        answer = []
        for item in payload.get("files", []):
            old = current.get(item["path"])
            answer.append(
                {
                    "path": item["path"],
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": git_blob_sha1(old) if old is not None else None,
                }
            )
        self._send_json(200, {"files": answer})

    def _create_branch(self, repo_type: str, repo_id: str, branch: str, payload: dict[str, Any]) -> None:
        repo = self._repo(repo_type, repo_id, write=True)
        if branch in repo.branches:
            raise HubError(409, "", f"Reference already exists: {branch}")
        repo.branches[branch] = repo.resolve(payload.get("startingPoint") or "main")
        self._send_json(200, {})

    def _commit(self, repo_type: str, repo_id: str, revision: str, body: bytes, *, create_pr: bool) -> None:
        repo = self._repo(repo_type, repo_id, write=True)
        state = self.server.state
        head = repo.resolve(revision)
        if not create_pr and revision not in repo.branches:
            raise HubError(400, "", f"cannot commit to {revision!r}: not a branch")
        files = dict(repo.commits[head])
        summary = ""
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                summary = value.get("summary", "")
                parent = value.get("parentCommit")
                if parent and parent != head:
                    raise HubError(412, "", f"parentCommit {parent} is not the head of {revision!r} ({head})")
            elif key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise HubError(400, "", f"unsupported encoding {value.get('encoding')!r}")
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                if value["path"] not in files:
                    raise HubError(404, "EntryNotFound", f"{value['path']} does not exist")
                del files[value["path"]]
            elif key == "deletedFolder":
                folder = value["path"].rstrip("/") + "/"
                files = {p: c for p, c in files.items() if not p.startswith(folder)}
            else:  # lfsFile and friends: this server answers "regular" to every preupload
                raise HubError(
                    400, "", f"unsupported commit operation {key!r} (this server stores regular files only)"
                )
        sha = state.new_commit(repo, head, files, summary)
        pr_url = None
        if create_pr:
            repo.num_prs += 1
            repo.branches[f"refs/pr/{repo.num_prs}"] = sha
            pr_url = f"{self.base_url}/{URL_PREFIX[repo_type]}{repo_id}/discussions/{repo.num_prs}"
        else:
            repo.branches[revision] = sha
        commit_url = f"{self.base_url}/{URL_PREFIX[repo_type]}{repo_id}/commit/{sha}"
        self._send_json(200, {"commitOid": sha, "commitUrl": commit_url, "pullRequestUrl": pr_url})

    def _resolve(self, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        repo = self._repo(repo_type, repo_id)
        sha = repo.resolve(revision)
        content = repo.commits[sha].get(path)
        if content is None:
            # with X-Repo-Commit, the client caches the miss under .no_exist/<sha>/
            raise HubError(
                404, "EntryNotFound", f"{path} does not exist on {revision!r}", {"X-Repo-Commit": sha}
            )
        headers = {
            "X-Repo-Commit": sha,
            "ETag": f'"{git_blob_sha1(content)}"',
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
        }
        status, payload = 200, content
        rng = self.headers.get("Range", "")
        if rng.startswith("bytes="):
            start_text, _, end_text = rng[6:].partition("-")
            start = int(start_text or 0)
            end = int(end_text) if end_text else len(content) - 1
            status, payload = 206, content[start : end + 1]
            headers["Content-Range"] = f"bytes {start}-{start + len(payload) - 1}/{len(content)}"
        headers["Content-Length"] = str(len(payload))
        self._send(status, payload, headers, head=self.command == "HEAD")


class HubServer(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` carrying the hub state and its own base URL."""

    daemon_threads = True
    state: HubState
    url: str


def start_hub_server(tokens: dict[str, str] | None = None) -> tuple[HubServer, str]:
    """Start a server on ``127.0.0.1`` (a free port) in a daemon thread.

    Args:
        tokens: ``{token: user}``; a user may create and write repos in its own namespace only.

    Returns:
        ``(server, url)``: ``server.state`` holds repos, ``commit_log`` and ``requests``; ``url`` is the
        endpoint to pass as ``endpoint=``. Stop it with :func:`stop_hub_server`.
    """
    server = HubServer(("127.0.0.1", 0), HubHandler)
    server.state = HubState(tokens=dict(tokens or {}))
    host, port = server.server_address[:2]
    server.url = f"http://{host}:{port}"
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, name=f"hub-server-{port}", daemon=True
    )
    thread.start()
    return server, server.url


def stop_hub_server(server: HubServer) -> None:
    """Stop serving (releasing hanging and dripping answers) and close the listening socket."""
    server.state.stopping.set()
    server.shutdown()
    server.server_close()
