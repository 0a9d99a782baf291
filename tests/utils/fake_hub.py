"""A local stand-in for the Hugging Face Hub: just the HTTP API that `create_repo` and `upload_folder` use.

Routes, as huggingface_hub 2.4 calls them (`hf_api.py`, `_commit_api.py`, `lfs.py`):

| method and path | client call |
| --- | --- |
| `GET /api/whoami-v2` | `HfApi.whoami` |
| `POST /api/repos/create` | `create_repo` (JSON `name`, `organization`, `visibility`, `type`; 409 if it exists) |
| `POST /api/validate-yaml` | README.md metadata check before any upload |
| `POST /api/{type}s/{repo}/preupload/{rev}` | `_fetch_upload_modes`: "regular" or "lfs" per file |
| `POST /{repo}.git/info/lfs/objects/batch` | `post_lfs_batch_info` (legacy LFS path, i.e. `HF_HUB_DISABLE_XET=1`) |
| `PUT /_lfs/{oid}`, `POST /_lfs/{oid}/verify` | `lfs_upload`: single-part upload, then verify |
| `GET /api/{type}s/{repo}[/revision/{rev}]` | `repo_info` (`create_repo` calls it after a 403 with `exist_ok`) |
| `POST /api/{type}s/{repo}/commit/{rev}` | `_send_commit`: NDJSON header, `file` (base64), `lfsFile` (sha256) |

Files whose names look binary (`.safetensors`, `.png`, ...) or that are over 10 MiB get upload mode "lfs", as on the
Hub, unless the hub is made with `lfs=False`. Xet storage is not implemented: with `hf_xet` installed the client only
reaches it for "lfs" files, so run it with `HF_HUB_DISABLE_XET=1`, or use `lfs=False`. The server listens on
127.0.0.1 on a free port, reads at most `max_body` bytes per request and never connects anywhere.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".onnx", ".msgpack", ".png", ".jpg", ".npz")
LFS_SIZE = 10 * 1024 * 1024
REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"
TYPE = r"(?P<type>model|dataset|space)s"


@dataclass
class FakeRepo:
    repo_id: str
    repo_type: str
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    lfs_files: set[str] = field(default_factory=set)  # paths committed as LFS pointers
    commits: list[dict[str, Any]] = field(default_factory=list)


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, body: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.body = status, message, code, body


class FakeHub:
    """The server and what it received: `repos`, `requests` (method, path) and `unhandled` requests.

    Example:
    ```python
    with FakeHub() as hub:
        env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": hub.token}
    ```
    """

    def __init__(
        self,
        token: str = "hf_fake_write_token",
        user: str = "oto-tester",
        lfs: bool = True,
        max_body: int = 64 * 1024 * 1024,
    ):
        self.token, self.user, self.lfs, self.max_body = token, user, lfs, max_body
        self.repos: dict[str, FakeRepo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.unhandled: list[tuple[str, str]] = []
        self.validated_readmes: list[str] = []
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- life cycle
    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeHub is not started.")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        handler = type("Handler", (_Handler,), {"hub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ---- routes
    def handle(self, method: str, path: str, headers: Any, body: bytes) -> tuple[int, dict[str, str], bytes]:
        with self.lock:
            self.requests.append((method, path))
        routes = [
            ("GET", r"/api/whoami-v2", self.whoami),
            ("POST", r"/api/repos/create", self.create_repo),
            ("POST", r"/api/validate-yaml", self.validate_yaml),
            ("POST", rf"/api/{TYPE}/{REPO}/preupload/(?P<rev>[^/]+)", self.preupload),
            ("POST", rf"/api/{TYPE}/{REPO}/commit/(?P<rev>[^/]+)", self.commit),
            ("POST", rf"/(?:(?P<type>dataset|space)s/)?{REPO}\.git/info/lfs/objects/batch", self.lfs_batch),
            ("GET", rf"/api/{TYPE}/{REPO}(?:/revision/(?P<rev>[^/]+))?", self.repo_info),
            ("PUT", r"/_lfs/(?P<oid>[0-9a-f]{64})", self.lfs_put),
            ("POST", r"/_lfs/(?P<oid>[0-9a-f]{64})/verify", self.lfs_verify),
        ]
        route = urlsplit(path).path
        for verb, pattern, function in routes:
            match = re.fullmatch(pattern, route)
            if verb == method and match:
                try:
                    with self.lock:
                        return _json(200, function(headers, body, **match.groupdict()))
                except HubError as error:
                    extra = {"X-Error-Message": error.message, **({"X-Error-Code": error.code} if error.code else {})}
                    status, response_headers, payload = _json(error.status, error.body or {"error": error.message})
                    return status, {**response_headers, **extra}, payload
        with self.lock:
            self.unhandled.append((method, path))
        return _json(404, {"error": f"FakeHub does not implement {method} {route}"})

    def _auth(self, headers: Any) -> str:
        if headers.get("Authorization") != f"Bearer {self.token}":
            raise HubError(401, "Invalid credentials in Authorization header")
        return self.user

    def _repo(self, repo_type: str | None, repo_id: str) -> FakeRepo:
        repo = self.repos.get(f"{repo_type or 'model'}:{repo_id}")
        if repo is None:
            raise HubError(404, "Repository not found", code="RepoNotFound")
        return repo

    def whoami(self, headers: Any, body: bytes) -> dict:
        user = self._auth(headers)
        return {
            "type": "user",
            "name": user,
            "orgs": [],
            "auth": {"type": "access_token", "accessToken": {"role": "write"}},
        }

    def create_repo(self, headers: Any, body: bytes) -> dict:
        user = self._auth(headers)
        payload = json.loads(body)
        namespace = payload.get("organization") or user
        if namespace != user:
            raise HubError(403, f"You don't have the rights to create a repo under the namespace {namespace!r}")
        repo_type = payload.get("type") or "model"
        repo_id = f"{namespace}/{payload['name']}"
        url = f"{self.url}/{repo_id}" if repo_type == "model" else f"{self.url}/{repo_type}s/{repo_id}"
        key = f"{repo_type}:{repo_id}"
        if key in self.repos:
            raise HubError(409, f"You already created this {repo_type} repo", body={"error": "exists", "url": url})
        private = payload.get("visibility") == "private" or payload.get("private") is True
        self.repos[key] = FakeRepo(repo_id, repo_type, private)
        return {"url": url, "name": repo_id, "id": repo_id}

    def validate_yaml(self, headers: Any, body: bytes) -> dict:
        content = json.loads(body)["content"]
        self.validated_readmes.append(content)
        match = re.match(r"^\s*---\s*\n(.*?)\n---\s*\n", content, re.DOTALL)
        try:
            metadata = yaml.safe_load(match.group(1)) if match else {}
        except yaml.YAMLError as error:
            raise HubError(400, "Invalid YAML", body={"errors": [{"message": str(error)}]}) from error
        if not isinstance(metadata, (dict, type(None))):
            raise HubError(400, "Invalid YAML", body={"errors": [{"message": "metadata must be a mapping"}]})
        return {"errors": [], "warnings": []}

    def repo_info(self, headers: Any, body: bytes, type: str, repo: str, rev: str | None = None) -> dict:
        target = self._repo(type, repo)
        if target.private and headers.get("Authorization") != f"Bearer {self.token}":
            raise HubError(404, "Repository not found", code="RepoNotFound")
        sha = target.commits[-1]["oid"] if target.commits else None
        return {
            "id": target.repo_id,
            "sha": sha,
            "private": target.private,
            "siblings": [{"rfilename": name} for name in sorted(target.files)],
        }

    def preupload(self, headers: Any, body: bytes, type: str, repo: str, rev: str) -> dict:
        self._auth(headers)
        self._repo(type, repo)
        files = json.loads(body)["files"]
        modes = [
            {"path": f["path"], "uploadMode": self._mode(f["path"], f["size"]), "shouldIgnore": False, "oid": None}
            for f in files
        ]
        return {"files": modes, "commitOid": None}

    def _mode(self, path: str, size: int) -> str:
        return "lfs" if self.lfs and (path.lower().endswith(LFS_SUFFIXES) or size >= LFS_SIZE) else "regular"

    def lfs_batch(self, headers: Any, body: bytes, repo: str, type: str | None = None) -> dict:
        self._auth(headers)
        self._repo(type, repo)
        payload = json.loads(body)
        if payload.get("operation") != "upload":
            raise HubError(400, "Only uploads are implemented")
        objects = []
        for item in payload["objects"]:
            entry = {"oid": item["oid"], "size": item["size"], "authenticated": True}
            if item["oid"] not in self.lfs_objects:
                entry["actions"] = {
                    "upload": {"href": f"{self.url}/_lfs/{item['oid']}"},
                    "verify": {"href": f"{self.url}/_lfs/{item['oid']}/verify"},
                }
            objects.append(entry)
        return {"transfer": "basic", "objects": objects}

    def lfs_put(self, headers: Any, body: bytes, oid: str) -> dict:
        if hashlib.sha256(body).hexdigest() != oid:
            raise HubError(400, f"Uploaded content does not match sha256 {oid}")
        self.lfs_objects[oid] = body
        return {}

    def lfs_verify(self, headers: Any, body: bytes, oid: str) -> dict:
        self._auth(headers)
        payload = json.loads(body)
        stored = self.lfs_objects.get(oid)
        if payload.get("oid") != oid or stored is None or len(stored) != payload.get("size"):
            raise HubError(404, f"LFS object {oid} was not uploaded")
        return {}

    def commit(self, headers: Any, body: bytes, type: str, repo: str, rev: str) -> dict:
        self._auth(headers)
        target = self._repo(type, repo)
        if unquote(rev) != "main":
            raise HubError(404, f"Revision {rev} not found", code="RevisionNotFound")
        lines = [json.loads(line) for line in body.decode("utf-8").splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "A commit starts with a header line")
        header = lines[0]["value"]
        files, lfs_files, deleted = {}, set(), []
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            if key == "file":
                if value.get("encoding") != "base64":
                    raise HubError(400, "Only base64 file content is implemented")
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "lfsFile":
                content = self.lfs_objects.get(value["oid"])
                if content is None or len(content) != value.get("size", len(content)):
                    raise HubError(422, f"LFS file {value['path']} was committed before its upload")
                files[value["path"]] = content
                lfs_files.add(value["path"])
            elif key in ("deletedFile", "deletedFolder"):
                deleted.append(value["path"])
            else:
                raise HubError(400, f"Unknown commit operation {key!r}")
        for path in deleted:
            for name in [n for n in target.files if n == path or n.startswith(path.rstrip("/") + "/")]:
                del target.files[name]
                target.lfs_files.discard(name)
        target.files.update(files)
        target.lfs_files = (target.lfs_files - set(files)) | lfs_files
        parent = target.commits[-1]["oid"] if target.commits else ""
        oid = hashlib.sha1((parent + json.dumps(lines, sort_keys=True)).encode()).hexdigest()
        target.commits.append(
            {
                "oid": oid,
                "summary": header.get("summary"),
                "description": header.get("description"),
                "files": sorted(files),
                "lfs_files": sorted(lfs_files),
                "deleted": deleted,
            }
        )
        prefix = "" if target.repo_type == "model" else f"{target.repo_type}s/"
        return {
            "success": True,
            "commitOid": oid,
            "commitUrl": f"{self.url}/{prefix}{repo}/commit/{oid}",
            "hookOutput": "",
            "pullRequestUrl": None,
        }


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"  # keep-alive, as the client expects; every answer has a Content-Length
    timeout = 10  # seconds a connection may stay silent

    def _serve(self) -> None:
        try:
            body = self._read_body()
        except ValueError as error:
            self.close_connection = True
            status, headers, payload = _json(413, {"error": str(error)})
        else:
            status, headers, payload = self.hub.handle(self.command, self.path, self.headers, body)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = _serve

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks, total = [], 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                total += size
                if total > self.hub.max_body:
                    raise ValueError(f"Request body over {self.hub.max_body} bytes")
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        if length > self.hub.max_body:
            raise ValueError(f"Request body over {self.hub.max_body} bytes")
        return self.rfile.read(length)

    def log_message(self, format: str, *args: Any) -> None:  # quiet: requests are recorded in `hub.requests`
        pass


def _json(status: int, data: Any) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps(data).encode("utf-8")
