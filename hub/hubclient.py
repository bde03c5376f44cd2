"""A small client for the course's hub, for root's tools (tests/hub, hub/capacity.py): the hub's REST API with
the admin service's token (ROOT/state/admin_token), a person's server's REST API with a token made for that
person, and code run in a kernel of that person's server (over the kernel's websocket, as a browser does).

Standard library plus tornado (in the course environment); never goes through an HTTP proxy."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


DIRECT_NO_REDIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}), NoRedirect)


def request(url: str, token: str | None = None, method: str = "GET", body=None, timeout: float = 30,
            follow: bool = True) -> tuple[int, object]:
    """(status, decoded JSON or text) of one HTTP request; an HTTP error status is returned, not raised."""
    headers = {"Authorization": f"token {token}"} if token else {}
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, method=method, headers=headers, data=data)
    opener = DIRECT if follow else DIRECT_NO_REDIRECT
    try:
        with opener.open(req, timeout=timeout) as answer:
            status, text = answer.status, answer.read()
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read()
    try:
        return status, json.loads(text) if text else None
    except ValueError:
        return status, text.decode(errors="replace")


class Hub:
    def __init__(self, url: str, root: Path):
        self.url = url.rstrip("/")
        self.root = Path(root)
        self.admin = (self.root / "state" / "admin_token").read_text().strip()
        self.tokens: dict[str, str] = {}

    def api(self, path: str, method: str = "GET", body=None, timeout: float = 30):
        return request(f"{self.url}/hub/api/{path}", self.admin, method, body, timeout)

    def token(self, user: str) -> str:
        """A token of ``user``'s own (their permissions, no more), made with the admin service's."""
        if user not in self.tokens:
            status, answer = self.api(f"users/{user}/tokens", "POST", {"note": "vislib hub tools", "expires_in": 7200})
            assert status in (200, 201), (status, answer)
            self.tokens[user] = answer["token"]
        return self.tokens[user]

    def start_server(self, user: str) -> None:
        status, answer = self.api(f"users/{user}/server", "POST")
        assert status in (201, 202, 400), (status, answer)  # 400: already running

    def wait_ready(self, user: str, seconds: float = 300) -> float:
        """Until ``user``'s server is ready; the seconds waited."""
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            status, answer = self.api(f"users/{user}")
            server = (answer or {}).get("servers", {}).get("") if status == 200 else None
            if server and server.get("ready"):
                return time.monotonic() - start
            time.sleep(0.5)
        raise TimeoutError(f"{user}'s server was not ready after {seconds} s")

    def server_pid(self, user: str) -> int | None:
        status, answer = self.api(f"users/{user}")
        server = (answer or {}).get("servers", {}).get("") or {}
        return (server.get("state") or {}).get("pid")

    def server_port(self, user: str) -> int | None:
        """The port of ``user``'s server, from the proxy's routing table (as the hub knows it)."""
        settings = json.loads((self.root / "state" / "settings.json").read_text())
        proxy_token = (self.root / "state" / "proxy_token").read_text().strip()
        status, routes = request(f"http://127.0.0.1:{settings['proxy_api_port']}/api/routes", proxy_token)
        target = (routes or {}).get(f"/user/{user}", {}).get("target", "")
        return int(target.rsplit(":", 1)[1].split("/")[0]) if target else None

    def user_api(self, user: str, path: str, method: str = "GET", body=None, timeout: float = 60):
        return request(f"{self.url}/user/{user}/api/{path}", self.token(user), method, body, timeout)

    def run(self, user: str, code: str, timeout: float = 300, kernel: str = "python3", keep: str | None = None):
        """Run ``code`` in a kernel of ``user``'s server: (text printed, error name or None, kernel id).
        ``keep``: the id of a kernel to reuse; otherwise a new one is started (and left running)."""
        if keep is None:
            status, answer = self.user_api(user, "kernels", "POST", {"name": kernel})
            assert status in (200, 201), (status, answer)
            keep = answer["id"]
        ws_url = self.url.replace("http", "ws", 1) + f"/user/{user}/api/kernels/{keep}/channels"
        # in a thread of its own: the caller may be inside an event loop (Playwright's sync API runs one)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            printed, error = pool.submit(asyncio.run, _execute(ws_url, self.token(user), code, timeout)).result()
        return printed, error, keep

    def stop_server(self, user: str) -> None:
        self.api(f"users/{user}/server", "DELETE")


async def _execute(ws_url: str, token: str, code: str, timeout: float) -> tuple[str, str | None]:
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    connection = await websocket_connect(HTTPRequest(ws_url, headers={"Authorization": f"token {token}"},
                                                     request_timeout=timeout), max_message_size=64 * 2**20)
    msg_id = uuid.uuid4().hex
    message = {"header": {"msg_id": msg_id, "username": "hub-tools", "session": uuid.uuid4().hex,
                          "msg_type": "execute_request", "version": "5.3"},
               "parent_header": {}, "metadata": {}, "channel": "shell",
               "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                           "allow_stdin": False, "stop_on_error": True}}
    await connection.write_message(json.dumps(message))
    printed, error, deadline = [], None, time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the code did not finish within {timeout} s")
            raw = await asyncio.wait_for(connection.read_message(), left)
            if raw is None:
                raise ConnectionError("the kernel's websocket closed")
            reply = json.loads(raw)
            if reply.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = reply["header"]["msg_type"], reply["content"]
            if kind == "stream":
                printed.append(content["text"])
            elif kind in ("execute_result", "display_data"):
                printed.append(content.get("data", {}).get("text/plain", ""))
            elif kind == "error":
                error = content["ename"]
                printed.append(f"{content['ename']}: {content['evalue']}")
            elif kind == "status" and content["execution_state"] == "idle":
                break
    finally:
        connection.close()
    return "".join(printed), error
