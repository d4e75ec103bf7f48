"""Open a report in headless Chromium and check what it renders, over the DevTools protocol.

The browser is driven through ``--remote-debugging-pipe`` (NUL-separated JSON on fds 3/4), so no
websocket library or network port is needed. The check reports tables, images (decoded size), console
messages, uncaught exceptions, log errors and any non-inline request, and can save a screenshot."""
from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

_PAGE_PROBE = """JSON.stringify({
  title: document.title,
  tables: [...document.querySelectorAll('table')].map(t => ({
      rows: t.tBodies.length ? t.tBodies[0].rows.length : 0,
      cols: t.tHead ? t.tHead.rows[0].cells.length : 0,
      height: t.getBoundingClientRect().height,
      missing: [...t.querySelectorAll('td.missing')].length})),
  images: [...document.images].map(i => ({alt: i.alt, complete: i.complete,
      natural: [i.naturalWidth, i.naturalHeight], shown: [i.clientWidth, i.clientHeight],
      inline: i.src.startsWith('data:')})),
  text: document.body.innerText})"""


@dataclass
class PageCheck:
    title: str
    tables: list[dict[str, Any]]
    images: list[dict[str, Any]]
    text: str
    console: list[dict[str, str]] = field(default_factory=list)   # every console/log message
    errors: list[str] = field(default_factory=list)               # console errors, exceptions, log errors
    requests: list[str] = field(default_factory=list)             # URLs fetched besides the page itself
    screenshot: Path | None = None


def find_chromium() -> str | None:
    return next((p for p in map(shutil.which, CANDIDATES) if p), None)


class _Pipe:
    def __init__(self, proc: subprocess.Popen, to_browser: int, from_browser: int) -> None:
        self.proc, self.w, self.r = proc, to_browser, from_browser
        self.buf, self.next_id, self.events = b"", 0, []

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.r], [], [], left)[0]:
                raise TimeoutError("the browser did not answer in time")
            chunk = os.read(self.r, 1 << 20)
            if not chunk:
                raise RuntimeError(f"the browser exited (code {self.proc.poll()})")
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 30) -> dict[str, Any]:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        for ev in self.events:
            if ev.get("method") == method:
                return ev
        while True:
            ev = self._read(deadline)
            self.events.append(ev)
            if ev.get("method") == method:
                return ev


def check_page(html_path: str | os.PathLike, screenshot: str | os.PathLike | None = None,
               chromium: str | None = None, width: int = 1280, timeout: float = 60) -> PageCheck:
    """Load ``html_path`` in headless Chromium and return what rendered (see ``PageCheck``)."""
    exe = chromium or find_chromium()
    if exe is None:
        raise UserError("no Chromium found (apt-get install chromium)")
    url = Path(html_path).resolve().as_uri()
    cmd_r, cmd_w = os.pipe()
    out_r, out_w = os.pipe()

    def child_fds() -> None:  # the protocol's fixed descriptors: 3 = commands in, 4 = replies out
        # via close-on-exec high copies, so neither dup2 clobbers the other pipe's end; dup2 makes
        # 3 and 4 inheritable, every other descriptor of ours is close-on-exec (Python's default)
        high_r = fcntl.fcntl(cmd_r, fcntl.F_DUPFD_CLOEXEC, 10)
        high_w = fcntl.fcntl(out_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.dup2(high_r, 3)
        os.dup2(high_w, 4)

    with tempfile.TemporaryDirectory(prefix="jepa-eval-chromium-") as profile:
        args = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                "--remote-debugging-pipe", f"--user-data-dir={profile}", "about:blank"]
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, preexec_fn=child_fds, close_fds=False)
        os.close(cmd_r)
        os.close(out_w)
        pipe = _Pipe(proc, cmd_w, out_r)
        try:
            target = pipe.call("Target.createTarget", {"url": "about:blank"}, timeout=timeout)["targetId"]
            sid = pipe.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                pipe.call(f"{domain}.enable", session=sid)
            pipe.call("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False}, session=sid)
            pipe.call("Page.navigate", {"url": url}, session=sid)
            pipe.wait_event("Page.loadEventFired", timeout)
            probe = pipe.call("Runtime.evaluate", {"expression": _PAGE_PROBE, "returnByValue": True,
                                                   "awaitPromise": True}, session=sid)
            result = PageCheck(**json.loads(probe["result"]["value"]))
            if screenshot is not None:
                shot = pipe.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True},
                                 session=sid, timeout=timeout)
                result.screenshot = Path(screenshot)
                result.screenshot.parent.mkdir(parents=True, exist_ok=True)
                result.screenshot.write_bytes(base64.b64decode(shot["data"]))
            pipe.call("Browser.close")
        finally:
            os.close(cmd_w)
            os.close(out_r)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    _collect_events(pipe.events, url, result)
    return result


def _collect_events(events: list[dict[str, Any]], url: str, result: PageCheck) -> None:
    for ev in events:
        method, p = ev.get("method"), ev.get("params", {})
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
            result.console.append({"level": p.get("type", ""), "text": text})
            if p.get("type") in ("error", "assert"):
                result.errors.append(f"console.{p.get('type')}: {text}")
        elif method == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            result.errors.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
        elif method == "Log.entryAdded":
            e = p.get("entry", {})
            result.console.append({"level": e.get("level", ""), "text": e.get("text", "")})
            if e.get("level") == "error":
                result.errors.append(f"log: {e.get('text')} {e.get('url', '')}".strip())
        elif method == "Network.requestWillBeSent":
            req = p.get("request", {}).get("url", "")
            if req != url and not req.startswith("data:"):
                result.requests.append(req)
        elif method == "Network.loadingFailed":
            result.errors.append(f"network: {p.get('errorText')}")
