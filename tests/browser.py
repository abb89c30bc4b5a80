"""A real browser for the tests: Debian's headless Chromium driven over the DevTools protocol on a pipe.

No driver package and no browser download: Chromium's ``--remote-debugging-pipe`` reads
commands as NUL-terminated JSON on fd 3 and answers on fd 4.  WebGL runs in software
(SwiftShader), as on a machine without a GPU.  :meth:`Browser.problems` collects what a
broken object shows first: uncaught exceptions, ``console.error``, failed loads and what a
React error boundary reports (OHIF's "Something went wrong" panel logs at debug level).

A test that needs it calls :func:`need_chromium`: it skips with the install command as its
reason, and fails under ``CI=true`` (``make test`` installs ``chromium``).
Imported as ``browser`` (pytest puts ``tests/`` on ``sys.path``), like ``peers``.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/lib/chromium/chromium")  # the binary; /usr/bin/chromium is Debian's wrapper script


def need_chromium() -> Path:
    """The Chromium binary; skip (or, under CI=true, fail) naming the package when it is missing."""
    if CHROMIUM.is_file():
        return CHROMIUM
    reason = f"needs {CHROMIUM}: apt-get install -y chromium"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (under CI=true a browser test must not skip; .ci/run installs it)", pytrace=False)
    pytest.skip(reason)


def _above_four(fd: int) -> int:
    """``fd`` moved to a number above 9, so putting the pipe ends on 3 and 4 cannot overwrite one of them."""
    import fcntl

    moved = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return moved


class Browser:
    """One headless Chromium page of ``width`` x ``height`` CSS pixels (device scale 1)."""

    def __init__(self, *, width: int = 1200, height: int = 800, timeout: float = 30.0) -> None:
        binary = need_chromium()
        self.profile = Path(tempfile.mkdtemp(prefix="cxr-chromium-"))
        commands_r, self._commands = os.pipe()
        self._answers, answers_w = os.pipe()
        commands_r, answers_w = _above_four(commands_r), _above_four(answers_w)
        flags = ["--headless=new", "--no-sandbox", "--remote-debugging-pipe", "--use-angle=swiftshader",
                 "--enable-unsafe-swiftshader", "--no-first-run", "--no-default-browser-check",
                 "--disable-dev-shm-usage", "--disable-background-networking", "--disable-component-update",
                 f"--window-size={width},{height}", f"--user-data-dir={self.profile}", "about:blank"]
        # bash puts the pipe ends on fds 3 and 4, then becomes Chromium (no preexec_fn in a threaded process;
        # dash takes single-digit fds only).
        script = f'exec "$0" "$@" 3<&{commands_r} 4>&{answers_w} {commands_r}<&- {answers_w}>&-'
        with open(self.profile / "chromium.log", "wb") as log:
            self.process = subprocess.Popen(["/bin/bash", "-c", script, str(binary), *flags],
                                            pass_fds=(commands_r, answers_w), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        os.close(commands_r)
        os.close(answers_w)
        self._next_id = 0
        self._lock = threading.Lock()
        self._arrived = threading.Condition()
        self._answered: dict[int, dict] = {}
        self.events: list[dict] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            target = next(t for t in self.call("Target.getTargets", timeout=timeout)["targetInfos"] if t["type"] == "page")
            self.session = self.call("Target.attachToTarget", targetId=target["targetId"], flatten=True)["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                self.page(f"{domain}.enable")
            self.page("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        except Exception as exc:
            log = (self.profile / "chromium.log").read_text(errors="replace")[-500:].strip()
            self.close()  # no browser or profile left behind
            raise RuntimeError(f"Chromium did not start ({exc}); its log: {log or 'empty'}") from exc

    def _read(self) -> None:
        pending = b""
        while chunk := os.read(self._answers, 1 << 20):
            pending += chunk
            *messages, pending = pending.split(b"\0")
            with self._arrived:
                for message in messages:
                    data = json.loads(message)
                    if "id" in data:
                        self._answered[data["id"]] = data
                    else:
                        self.events.append(data)
                self._arrived.notify_all()

    def call(self, method: str, *, session: str | None = None, timeout: float = 60.0, **params) -> dict:
        """One DevTools command; its result, or RuntimeError with the browser's error."""
        with self._lock:
            self._next_id += 1
            number = self._next_id
            message = {"id": number, "method": method, "params": params} | ({"sessionId": session} if session else {})
            os.write(self._commands, json.dumps(message).encode() + b"\0")
        with self._arrived:
            if not self._arrived.wait_for(lambda: number in self._answered, timeout):
                raise TimeoutError(f"{method}: no answer from Chromium in {timeout:.0f} s")
            answer = self._answered.pop(number)
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    def page(self, method: str, **params) -> dict:
        return self.call(method, session=self.session, **params)

    def goto(self, url: str) -> None:
        self.page("Page.navigate", url=url)

    def eval(self, expression: str, *, timeout: float = 60.0):
        """The JSON value of ``expression`` in the page (promises awaited)."""
        answer = self.call("Runtime.evaluate", session=self.session, timeout=timeout, expression=expression,
                           awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in answer:
            details = answer["exceptionDetails"]
            raise RuntimeError(f"{expression[:80]}...: {details.get('exception', {}).get('description') or details}")
        return answer["result"].get("value")

    def wait(self, expression: str, *, timeout: float = 60.0, every: float = 0.25):
        """Poll ``expression`` until it is truthy; its value, or TimeoutError naming it and the page's problems."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value, error = self.eval(expression), None
            except RuntimeError as exc:  # the page is between documents, or not there yet
                value, error = None, exc
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{timeout:.0f} s without {expression!r} (last: {error}); "
                                   f"page problems: {self.problems()[:3]}")
            time.sleep(every)

    def click_text(self, text: str, *, selector: str = "button", double: bool = False) -> bool:
        """Click (or double-click) the first ``selector`` element whose text is ``text``; whether one was there."""
        kind = "dblclick" if double else "click"
        return self.eval(
            f"""(() => {{ const el = [...document.querySelectorAll({json.dumps(selector)})]
                 .find(e => e.textContent.trim() === {json.dumps(text)});
               if (!el) return false;
               el.dispatchEvent(new MouseEvent({json.dumps(kind)}, {{bubbles: true, cancelable: true, view: window}}));
               return true; }})()""")

    def screenshot(self) -> bytes:
        return base64.b64decode(self.page("Page.captureScreenshot", format="png")["data"])

    def problems(self, since: int = 0) -> list[str]:
        """Uncaught exceptions, console errors, failed loads and error boundaries reported since event ``since``
        (``len(browser.events)`` taken before a step)."""
        found = []
        for event in list(self.events)[since:]:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                found.append(details.get("exception", {}).get("description") or details.get("text", "exception"))
            elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                found.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params["args"]))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(f"{params['entry']['text']} {params['entry'].get('url', '')}".strip())
            elif method == "Runtime.consoleAPICalled":
                # A React error boundary (OHIF's "Something went wrong" panel) logs below error level.
                text = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
                if "Error Boundary" in text:
                    found.append(text)
        return found

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        os.close(self._commands)
        self._reader.join(5)  # Chromium is gone: its end of the pipe closed, the reader saw EOF
        if not self._reader.is_alive():
            os.close(self._answers)
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
