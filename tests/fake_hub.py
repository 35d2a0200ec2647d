"""A stand-in for the Hugging Face Hub on 127.0.0.1 (stdlib `http.server` in a thread), for tests that push and pull
without a network. It records every request and keeps model repos in memory: branches, commits, files.

Point a process at it with `HF_ENDPOINT=hub.url` and `HF_TOKEN=hub.token` in its environment (huggingface_hub reads
`HF_ENDPOINT` at import, so that is usually a subprocess). Routes, as huggingface_hub 2.x calls them:
  POST /api/repos/create                         create (409 if it exists); answers the repo's url
  POST /api/validate-yaml                        a card's YAML metadata: parses, and a subset of the Hub's checks
  POST /api/models/<repo>/preupload/<rev>        every file "regular" (contents inline in the commit, no LFS)
  POST /api/models/<repo>/commit/<rev>           NDJSON: header, base64 files, deletions → a new commit
  POST /api/models/<repo>/branch/<branch>        a branch from `startingPoint` (default main); 409 if it exists
  GET  /api/models/<repo>[/revision/<rev>]       repo info (sha, siblings)
  GET  /api/models/<repo>/tree/<rev>[/<path>]    the files and folders under a path (`recursive` honoured)
  GET|HEAD /<repo>/resolve/<rev>/<path>          a file, with ETag (git blob sha1) and X-Repo-Commit
  GET  /api/agent-harnesses                      huggingface_hub's telemetry registry (empty)
Writes need `Authorization: Bearer <token>` (401 otherwise), and so do reads of private repos; missing repos,
revisions and files answer 404 with the Hub's `X-Error-Code` (RepoNotFound, RevisionNotFound, EntryNotFound).
Unlike the Hub, a new repo starts with an empty commit (no `.gitattributes`), so a pushed repo holds exactly the
pushed files.
"""

import base64
import hashlib
import itertools
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml

__all__ = ["FakeHub", "HubRequest", "fake_hub_fixture", "git_blob_sha1"]

USER = "fake-user"
# the keyword after a repo id in /api/models/<repo>/<action>/…
ACTIONS = ("preupload", "commit", "branch", "revision", "tree")


def git_blob_sha1(content: bytes) -> str:
    """A file's git object id, which the Hub sends as a regular file's ETag and `oid`."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class HubRequest:
    """One request as the server received it (header names lower-cased)."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    @property
    def line(self) -> str:
        return f"{self.method} {self.path}"

    @property
    def token(self) -> str | None:
        scheme, _, value = self.headers.get("authorization", "").partition(" ")
        return value if scheme.lower() == "bearer" and value else None

    def json(self):
        return json.loads(self.body)

    def ndjson(self) -> list[dict]:
        return [json.loads(line) for line in self.body.splitlines() if line.strip()]


@dataclass
class Commit:
    oid: str
    message: str
    description: str
    parent: str | None
    files: dict[str, bytes]  # the whole tree after this commit


@dataclass
class Repo:
    repo_id: str
    private: bool
    branches: dict[str, list[Commit]] = field(default_factory=dict)  # history per branch, newest last

    def commit(self, revision: str) -> Commit | None:
        """The head of a branch, or a commit by its oid."""
        if revision in self.branches:
            return self.branches[revision][-1]
        return next((c for history in self.branches.values() for c in history if c.oid == revision), None)


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, **fields):
        super().__init__(message)
        self.status, self.message, self.code, self.fields = status, message, code, fields


def check_card_metadata(content: str) -> tuple[list[str], list[str]]:
    """(errors, warnings) for a card as the Hub's `validate-yaml` sees it: the front matter must parse as a mapping,
    and a subset of the Hub's metadata rules (string-or-list fields, model-index's required entries)."""
    if not content.startswith("---"):
        return [], ["empty or missing yaml metadata in repo card"]
    parts = content.split("\n---", 1)
    if len(parts) < 2:
        return ["YAML metadata is not closed by a '---' line"], []
    try:
        metadata = yaml.safe_load(parts[0].removeprefix("---"))
    except yaml.YAMLError as error:
        return [f"YAML metadata does not parse: {' '.join(str(error).split())}"], []
    if metadata is None:
        return [], ["empty or missing yaml metadata in repo card"]
    if not isinstance(metadata, dict):
        return [f"YAML metadata must be a mapping, not {type(metadata).__name__}"], []
    errors = []
    for key in ("license", "library_name", "pipeline_tag", "base_model"):
        if key in metadata and not isinstance(metadata[key], (str, list)):
            errors.append(f'"{key}" must be a string')
    for key in ("tags", "datasets", "language", "metrics"):
        value = metadata.get(key)
        if value is not None and not (isinstance(value, str) or all(isinstance(v, str) for v in value)):
            errors.append(f'"{key}" must be a string or a list of strings')
    if "model-index" in metadata:
        errors += _check_model_index(metadata["model-index"])
    return errors, []


def _check_model_index(model_index) -> list[str]:
    def required(value, where: str, keys: tuple[str, ...]) -> list[str]:
        if not isinstance(value, dict):
            return [f'"{where}" must be an object']
        return [f'"{where}.{key}" is required' for key in keys if value.get(key) in (None, "")]

    if not isinstance(model_index, list) or not model_index:
        return ['"model-index" must be a non-empty list']
    errors = []
    for i, entry in enumerate(model_index):
        errors += required(entry, f"model-index[{i}]", ("name", "results"))
        results = entry.get("results") if isinstance(entry, dict) else None
        for j, result in enumerate(results if isinstance(results, list) else []):
            where = f"model-index[{i}].results[{j}]"
            errors += required(result, where, ("task", "dataset", "metrics"))
            if not isinstance(result, dict):
                continue
            if "task" in result:
                errors += required(result["task"], f"{where}.task", ("type",))
            if "dataset" in result:
                errors += required(result["dataset"], f"{where}.dataset", ("type", "name"))
            metrics = result.get("metrics")
            if metrics is not None and not isinstance(metrics, list):
                errors.append(f'"{where}.metrics" must be a list')
            for k, metric in enumerate(metrics if isinstance(metrics, list) else []):
                errors += required(metric, f"{where}.metrics[{k}]", ("type", "value"))
    return errors


class FakeHub:
    """The server and its state. Use as a context manager (or the `fake_hub` fixture); `requests` lists what was
    received, `repos` what is stored."""

    def __init__(self, token: str = "hf_fake_write_token"):
        self.token = token
        self.requests: list[HubRequest] = []
        self.repos: dict[str, Repo] = {}
        self._lock = threading.Lock()
        self._oids = itertools.count()
        self._server: ThreadingHTTPServer | None = None

    # ---- lifecycle ------------------------------------------------------------------------------------------------
    def start(self) -> "FakeHub":
        hub = self

        class Handler(_Handler):
            fake_hub = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="fake-hub", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def env(self, token: bool = True) -> dict[str, str]:
        """Environment variables that point huggingface_hub at this server (and give it the token)."""
        return {"HF_ENDPOINT": self.url, **({"HF_TOKEN": self.token} if token else {})}

    # ---- what tests read ------------------------------------------------------------------------------------------
    def lines(self, ignore_telemetry: bool = True) -> list[str]:
        """`METHOD path` of every request, in order; without huggingface_hub's own registry fetches by default."""
        return [r.line for r in self.requests if not (ignore_telemetry and r.path == "/api/agent-harnesses")]

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        return dict(self.repos[repo_id].commit(revision).files)

    def history(self, repo_id: str, revision: str = "main") -> list[Commit]:
        return list(self.repos[repo_id].branches[revision])

    def add_repo(self, repo_id: str, private: bool = False) -> Repo:
        """A new repo whose main branch holds one empty commit (as `create` makes them; tests seed repos with it)."""
        repo = Repo(repo_id, private=private)
        repo.branches["main"] = [self._new_commit(repo_id, "initial commit", "", None, {})]
        self.repos[repo_id] = repo
        return repo

    # ---- request handling ------------------------------------------------------------------------------------------
    def handle(self, request: HubRequest) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body) for one request; records it first."""
        with self._lock:
            self.requests.append(request)
            try:
                return self._route(request)
            except HubError as error:
                headers = {"Content-Type": "application/json", "X-Error-Message": error.message}
                if error.code:
                    headers["X-Error-Code"] = error.code
                return error.status, headers, json.dumps({"error": error.message, **error.fields}).encode()

    def _route(self, request: HubRequest):
        method, parts = request.method, request.path.strip("/").split("/")
        if request.path == "/api/agent-harnesses" and method == "GET":
            return _json({"standardEnvVars": [], "harnesses": {}})
        if request.path == "/api/repos/create" and method == "POST":
            return self._create(request)
        if request.path == "/api/validate-yaml" and method == "POST":
            return self._validate_yaml(request)
        if parts[:2] == ["api", "models"] and len(parts) >= 3:
            repo_id, action, rest = _split_repo(parts[2:])
            repo = self._readable_repo(repo_id, request)
            if action is None and method == "GET":
                return self._info(repo, "main")
            if action == "revision" and method == "GET" and rest:
                return self._info(repo, unquote(rest[0]))
            if action == "tree" and method == "GET" and rest:
                return self._tree(request, repo, unquote(rest[0]), "/".join(map(unquote, rest[1:])))
            if action in ("preupload", "commit", "branch") and method == "POST" and len(rest) == 1:
                self._authorize(request)
                return getattr(self, f"_{action}")(request, repo, unquote(rest[0]))
        elif len(parts) >= 4 and method in ("GET", "HEAD"):
            repo_id, action, rest = _split_repo(parts)
            if action == "resolve" and len(rest) >= 2:
                repo = self._readable_repo(repo_id, request)
                return self._resolve(request, repo, unquote(rest[0]), "/".join(map(unquote, rest[1:])))
        raise HubError(404, f"the fake Hub has no route for {request.line}")

    def _authorize(self, request: HubRequest) -> None:
        if request.token is None:
            raise HubError(401, "Invalid credentials in Authorization header: no token was sent.")
        if request.token != self.token:
            raise HubError(401, "Invalid credentials in Authorization header: unknown token.")

    def _readable_repo(self, repo_id: str, request: HubRequest) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and request.token != self.token):
            raise HubError(404 if repo is None else 401, f"Repository Not Found for {repo_id}.", "RepoNotFound")
        return repo

    def _new_commit(self, repo_id: str, message: str, description: str, parent: Commit | None, files) -> Commit:
        oid = hashlib.sha1(f"{next(self._oids)} {repo_id} {message}".encode()).hexdigest()
        return Commit(oid, message, description, parent.oid if parent else None, files)

    def _create(self, request: HubRequest):
        self._authorize(request)
        payload = request.json()
        if payload.get("type", "model") != "model":
            raise HubError(400, "the fake Hub only holds model repos")
        repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
        if repo_id in self.repos:  # the Hub's answer names the existing repo's url
            raise HubError(409, "You already created this model repo", url=f"{self.url}/{repo_id}")
        self.add_repo(repo_id, private=payload.get("visibility") == "private")
        return _json({"url": f"{self.url}/{repo_id}", "name": repo_id, "id": repo_id})

    def _validate_yaml(self, request: HubRequest):
        errors, warnings = check_card_metadata(request.json().get("content", ""))
        if "text/plain" in request.headers.get("accept", ""):
            text = "".join(f"Error: {e}\n" for e in errors) or "".join(f"Warning: {w}\n" for w in warnings)
            return 400 if errors else 200, {"Content-Type": "text/plain"}, text.encode()
        body = {"errors": [{"message": e} for e in errors], "warnings": [{"message": w} for w in warnings]}
        return (400 if errors else 200), {"Content-Type": "application/json"}, json.dumps(body).encode()

    def _head(self, repo: Repo, revision: str) -> Commit:
        commit = repo.commit(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def _preupload(self, request: HubRequest, repo: Repo, revision: str):
        files = self._head(repo, revision).files
        answer = [
            {
                "path": f["path"],
                "uploadMode": "regular",
                "shouldIgnore": False,
                "oid": git_blob_sha1(files[f["path"]]) if f["path"] in files else None,
            }
            for f in request.json()["files"]
        ]
        return _json({"files": answer, "commitOid": self._head(repo, revision).oid})

    def _commit(self, request: HubRequest, repo: Repo, revision: str):
        if revision not in repo.branches:
            raise HubError(404, f"Invalid rev id: {revision} is not a branch", "RevisionNotFound")
        parent = repo.branches[revision][-1]
        lines = request.ndjson()
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "the commit payload must start with a header line")
        header = lines[0]["value"]
        if header.get("parentCommit") not in (None, parent.oid):
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(parent.files)
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            if key == "file" and value.get("encoding") == "base64":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {p: c for p, c in files.items() if not p.startswith(prefix)}
            else:
                raise HubError(400, f"the fake Hub takes regular base64 files and deletions, not {key!r}")
        commit = self._new_commit(repo.repo_id, header["summary"], header.get("description", ""), parent, files)
        repo.branches[revision].append(commit)
        url = f"{self.url}/{repo.repo_id}/commit/{commit.oid}"
        return _json({"success": True, "commitOid": commit.oid, "commitUrl": url, "pullRequestUrl": None})

    def _branch(self, request: HubRequest, repo: Repo, branch: str):
        if branch in repo.branches:
            raise HubError(409, f"Reference already exists: refs/heads/{branch}")
        if branch.startswith("refs/"):
            raise HubError(400, f"Invalid reference for a branch: {branch}")
        start = self._head(repo, (request.json() if request.body else {}).get("startingPoint") or "main")
        repo.branches[branch] = [start]
        return _json({})

    def _info(self, repo: Repo, revision: str):
        commit = self._head(repo, revision)
        return _json(
            {
                "id": repo.repo_id,
                "modelId": repo.repo_id,
                "sha": commit.oid,
                "private": repo.private,
                "siblings": [{"rfilename": path} for path in sorted(commit.files)],
                "tags": [],
            }
        )

    def _tree(self, request: HubRequest, repo: Repo, revision: str, path: str):
        files = self._head(repo, revision).files
        prefix = f"{path.strip('/')}/" if path.strip("/") else ""
        below = {p[len(prefix) :]: c for p, c in files.items() if p.startswith(prefix)}
        if prefix and not below:
            raise HubError(404, f"{path} does not exist on {revision}", "EntryNotFound")
        recursive = request.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        entries = {}
        for relative, content in sorted(below.items()):
            folders = relative.split("/")[:-1]
            for depth in range(1, len(folders) + 1 if recursive else min(len(folders), 1) + 1):
                name = prefix + "/".join(folders[:depth])
                entries.setdefault(name, {"type": "directory", "oid": git_blob_sha1(name.encode()), "size": 0})
            if recursive or not folders:
                entries[prefix + relative] = {"type": "file", "oid": git_blob_sha1(content), "size": len(content)}
        return _json([{**entry, "path": name} for name, entry in entries.items()])

    def _resolve(self, request: HubRequest, repo: Repo, revision: str, path: str):
        commit = self._head(repo, revision)
        if path not in commit.files:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        content = commit.files[path]
        headers = {
            "Content-Type": "application/octet-stream",
            "ETag": f'"{git_blob_sha1(content)}"',
            "X-Repo-Commit": commit.oid,
        }
        return 200, headers, content


def _json(value) -> tuple[int, dict[str, str], bytes]:
    return 200, {"Content-Type": "application/json"}, json.dumps(value).encode()


def _split_repo(parts: list[str]) -> tuple[str, str | None, list[str]]:
    """(repo id, action, the rest) from path segments after /api/models/ (or after / for resolve): repo ids are
    `namespace/name` unless the second segment is already an action."""
    keywords = (*ACTIONS, "resolve")
    if len(parts) >= 2 and parts[1] in keywords and (len(parts) < 3 or parts[2] not in keywords):
        return parts[0], parts[1], parts[2:]
    return "/".join(parts[:2]), parts[2] if len(parts) > 2 else None, parts[3:]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects; every answer carries Content-Length
    fake_hub: FakeHub

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _serve(self) -> None:
        url = urlsplit(self.path)
        request = HubRequest(
            method=self.command,
            path=url.path,
            query=parse_qs(url.query),
            headers={name.lower(): value for name, value in self.headers.items()},
            body=self._read_body(),
        )
        status, headers, body = self.fake_hub.handle(request)
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _serve

    def log_message(self, format, *args) -> None:
        pass


@pytest.fixture(name="fake_hub")
def fake_hub_fixture():
    """A running `FakeHub` for one test. Import `fake_hub_fixture` into a test module to use `fake_hub`."""
    with FakeHub() as hub:
        yield hub
