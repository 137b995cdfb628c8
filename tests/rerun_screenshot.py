"""What a person sees of an exported drive in Rerun's web viewer, as a screenshot.

Exports a recording to ``.rrd`` (`fusion.views.rerun.export_recording`), serves it with the web
viewer bundled in ``rerun-sdk`` (``rerun --serve-web``, loopback only, nothing downloaded), opens
that in headless Chromium (Debian's ``chromium``, software WebGL through SwiftShader) and drives
it over the DevTools protocol on a pipe (``--remote-debugging-pipe``: no port, no websocket
library): it takes a screenshot every `POLL_S` until the page shows a rendered viewer
(`rendered`: many distinct colours, and the camera panel photographic rather than flat) and
keeps the last one.

    python -m tests.rerun_screenshot recordings/city.mcap -o out/rerun/city.png

Chromium's ``--screenshot`` with ``--virtual-time-budget`` does not work here: the viewer's
WebAssembly and its data arrive over the network, which virtual time does not wait for.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from fusion.views import rerun as rerun_view
from fusion.views.cli import DISPLAY_MIN_SCORE

CHROMIUM = "/usr/bin/chromium"
WINDOW_PX = (1600, 1000)
#: Between screenshots while the viewer loads (s), and the longest wait for it (s).
POLL_S = 2.0
RENDER_TIMEOUT_S = 240.0
#: A rendered viewer has at least this many distinct colours (quantised to 5 bits a channel);
#: its loading screen has a few dozen.
MIN_DISTINCT_COLORS = 1500
#: The camera panel (left part of the top row in the default blueprint) is a picture: its pixels'
#: standard deviation is at least this (a flat panel is near 0).
MIN_CAMERA_PANEL_STD = 20.0
#: The 3D panel (right part of the top row) draws boxes, points and the grid: many colours.
MIN_3D_PANEL_COLORS = 200
#: Once rendered, screenshots keep coming until two in a row differ by less than this mean
#: absolute difference (the viewer settled), at most `SETTLE_SHOTS` more.
SETTLED_MEAN_ABS_DIFF = 2.0
SETTLE_SHOTS = 5
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--no-first-run",
    "--no-default-browser-check",
    "--hide-scrollbars",
    "--mute-audio",
    "--remote-debugging-pipe",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class DevTools:
    """The Chrome DevTools protocol over ``--remote-debugging-pipe``: JSON messages ending in a
    NUL byte, written to the browser's fd 3 and read from its fd 4."""

    def __init__(self, to_browser: int, from_browser: int) -> None:
        self._out = os.fdopen(to_browser, "wb", buffering=0)
        self._in = os.fdopen(from_browser, "rb", buffering=0)
        self._buffer = b""
        self._next_id = 0

    def call(self, method: str, session: str | None = None, **params: object) -> dict:
        self._next_id += 1
        request: dict[str, object] = {"id": self._next_id, "method": method, "params": params}
        if session is not None:
            request["sessionId"] = session
        self._out.write(json.dumps(request).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def _read(self) -> dict:
        while b"\0" not in self._buffer:
            data = self._in.read(1 << 16)
            if not data:
                raise RuntimeError("chromium closed its DevTools pipe")
            self._buffer += data
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def close(self) -> None:
        self._out.close()
        self._in.close()


def rendered(png: bytes) -> tuple[bool, str]:
    """Whether a screenshot shows a rendered viewer, and the numbers that say so."""
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        return False, "not a PNG"
    quantised = (image >> 3).reshape(-1, 3).astype(np.int32)
    colors = len(np.unique(quantised[:, 0] << 10 | quantised[:, 1] << 5 | quantised[:, 2]))
    h, w = image.shape[:2]
    camera_std = float(image[h // 10 : h // 2, w // 20 : w // 2].std())
    scene_3d = image[h // 10 : h * 7 // 10, w * 5 // 8 :].reshape(-1, 3)
    scene_colors = len(np.unique(scene_3d, axis=0))
    ok = (
        colors >= MIN_DISTINCT_COLORS
        and camera_std >= MIN_CAMERA_PANEL_STD
        and scene_colors >= MIN_3D_PANEL_COLORS
    )
    return ok, f"{colors} colours, camera panel std {camera_std:.0f}, 3D panel {scene_colors}"


def screenshot_url(url: str, out_png: Path, timeout_s: float = RENDER_TIMEOUT_S) -> str:
    """Open `url` in headless Chromium and save the first settled rendered screenshot to
    `out_png`; returns the numbers of the check. Raises RuntimeError (with the last screenshot
    saved) if nothing rendered within `timeout_s`."""
    profile = tempfile.mkdtemp(prefix="rerun-chromium-")
    to_browser_r, to_browser_w = os.pipe()
    from_browser_r, from_browser_w = os.pipe()

    def child_fds() -> None:
        # Copies above 4 first, so that neither dup2 overwrites the other's source; the pipes
        # are close-on-exec, the dup2 copies are not: exactly fds 3 and 4 reach chromium.
        read_end, write_end = os.dup(to_browser_r), os.dup(from_browser_w)
        os.dup2(read_end, 3)
        os.dup2(write_end, 4)

    browser = subprocess.Popen(
        [
            CHROMIUM,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={WINDOW_PX[0]},{WINDOW_PX[1]}",
            "about:blank",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=child_fds,
        close_fds=False,
    )
    os.close(to_browser_r)
    os.close(from_browser_w)
    tools = DevTools(to_browser_w, from_browser_r)
    try:
        target = tools.call("Target.createTarget", url="about:blank")["targetId"]
        session = tools.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        tools.call(
            "Emulation.setDeviceMetricsOverride",
            session,
            width=WINDOW_PX[0],
            height=WINDOW_PX[1],
            deviceScaleFactor=1,
            mobile=False,
        )
        tools.call("Page.navigate", session, url=url)
        deadline = time.monotonic() + timeout_s
        png, why, good = b"", "", 0
        previous: np.ndarray | None = None
        while time.monotonic() < deadline:
            time.sleep(POLL_S)
            shot = tools.call("Page.captureScreenshot", session, format="png")
            png = base64.b64decode(shot["data"])
            ok, why = rendered(png)
            if not ok:
                continue
            good += 1
            image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
            settled = previous is not None and (
                float(np.abs(image.astype(np.int16) - previous).mean()) < SETTLED_MEAN_ABS_DIFF
            )
            previous = image
            if settled or good > SETTLE_SHOTS:
                out_png.write_bytes(png)
                return why
        out_png.write_bytes(png)
        raise RuntimeError(f"the viewer did not render within {timeout_s:g} s ({why})")
    finally:
        tools.close()
        browser.terminate()
        try:
            browser.wait(10)
        except subprocess.TimeoutExpired:
            browser.kill()
            browser.wait()
        shutil.rmtree(profile, ignore_errors=True)


def screenshot_recording(recording: Path, out_png: Path, rrd: Path | None = None) -> str:
    """Export `recording`, serve it with Rerun's web viewer on loopback and screenshot it
    (see `screenshot_url`); the ``.rrd`` goes next to `out_png` unless `rrd` is given."""
    out_png.parent.mkdir(parents=True, exist_ok=True)
    rrd = rrd or out_png.with_suffix(".rrd")
    rerun_view.export_recording(recording, rrd, DISPLAY_MIN_SCORE)
    grpc_port, web_port = free_port(), free_port()
    server = subprocess.Popen(
        [
            rerun_view.rerun_program(),
            "--serve-web",
            "--bind",
            "127.0.0.1",
            "--port",
            f"{grpc_port}",
            "--web-viewer-port",
            f"{web_port}",
            str(rrd),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + rerun_view.WEB_VIEWER_START_S
        while not all(rerun_view.listening("127.0.0.1", p) for p in (web_port, grpc_port)):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"rerun --serve-web did not start (exit {server.poll()})")
            time.sleep(0.1)
        url = rerun_view.web_viewer_url(
            "127.0.0.1", web_port, rerun_view.grpc_url("127.0.0.1", grpc_port)
        )
        return screenshot_url(url, out_png)
    finally:
        server.terminate()
        server.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recording", type=Path, help="recording (.mcap) to export and show")
    parser.add_argument("-o", "--output", type=Path, default=Path("out/rerun/screenshot.png"))
    args = parser.parse_args(argv)
    why = screenshot_recording(args.recording, args.output)
    print(f"{args.output}: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
