"""The virtual device without a browser: the real daemon on a png screen and wired mock pins, its page's
event stream and button. The page itself is driven in Chromium in tests/browser/."""

from __future__ import annotations

import base64
import io
import json
import signal
import subprocess
import sys
import threading

import httpx
import pytest
import zxingcpp
from PIL import Image

from devicelink_sim.device.hub import Hub
from devicelink_sim.device.run import Simulation


def qr_of(frame: dict) -> str | None:
    img = Image.open(io.BytesIO(base64.b64decode(frame["png"]))).convert("L")
    found = zxingcpp.read_barcodes(img.resize((img.width * 4, img.height * 4), Image.Resampling.NEAREST))
    return found[0].text if found else None


@pytest.fixture
def sim():
    with Simulation(hold_seconds=1.5, access_token_lifetime=300, interval=1) as simulation:
        yield simulation


def test_hub_gives_each_topic_then_only_the_newest_change():
    hub = Hub()
    hub.publish("a", 1)
    hub.publish("b", 2)
    stream = hub.stream(keep_alive=0.05)
    assert {next(stream), next(stream)} == {("a", 1), ("b", 2)}
    hub.publish("a", 3)
    hub.publish("a", 4)  # a slow reader skips 3
    hub.publish("b", 2)  # no change: nothing to send
    assert next(stream) == ("a", 4)
    assert next(stream) is None  # a keep-alive after a quiet spell
    hub.close()
    assert list(stream) == []


def test_the_device_pairs_and_its_screen_led_and_status_are_pushed(sim):
    device = sim.device
    status = device.wait_for_status(lambda s: s.get("pairing"), 30)
    uri = status["pairing"]["verification_uri_complete"]
    assert sim.hub.wait_for(lambda v: v.get("frame") and qr_of(v["frame"]) == uri, 10)  # the QR on the screen
    assert (sim.hub.get("led_pattern") or {}).get("pattern") == "pulse 1/1 s"  # breathing while pairing

    # The page's event stream: every topic at once, then changes.
    with httpx.Client(base_url=sim.url, timeout=10) as http:
        assert "devicelink virtual device" in http.get("/").text
        assert http.get("/screen.png").headers["content-type"] == "image/png"
        topics: dict[str, dict] = {}
        paired = threading.Event()
        with http.stream("GET", "/events") as events:
            assert events.headers["content-type"].startswith("text/event-stream")
            lines = events.iter_lines()
            event = None
            for line in lines:
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event:
                    topics[event] = json.loads(line[6:])
                    if {"frame", "led", "button", "status", "faults", "server", "device"} <= topics.keys():
                        break
            assert topics["status"]["state"] == "pairing" and topics["server"]["issuer"] == sim.issuer
            assert [k["kind"] for k in topics["faults"]["kinds"]][:3] == ["ok", "status", "reset"]

            sim.server.approve(status["pairing"]["user_code"], "bob", "Bob Example")
            for line in lines:  # pushed, not polled: the stream says paired
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "status" and json.loads(line[6:])["state"] == "paired":
                    paired.set()
                    break
        assert paired.is_set()
    status = device.wait_for_status(lambda s: s["state"] == "paired", 10)
    assert status["account"] == {"sub": "bob", "name": "Bob Example"}
    assert sim.hub.wait_for(lambda v: v["led"]["value"] == 1.0, 5)  # solid on: the mock pin said so
    assert sim.hub.wait_for(lambda v: qr_of(v["frame"]) is None, 5)  # the code is gone from the screen


def test_holding_the_button_on_the_page_resets_the_device(sim):
    device = sim.device
    first = device.wait_for_status(lambda s: s.get("pairing"), 30)["pairing"]["user_code"]
    sim.server.approve(first)
    device.wait_for_status(lambda s: s["state"] == "paired", 20)
    with httpx.Client(base_url=sim.url, timeout=10) as http:
        assert http.post("/button", json={"pressed": True}).status_code == 200
        assert sim.hub.wait_for(lambda v: v["button"]["level"] == 0, 5)  # the daemon's pin reads low
        status = device.wait_for_status(lambda s: s["state"] == "pairing" and s.get("pairing"), 20)
        assert http.post("/button", json={"pressed": False}).status_code == 200
        assert http.post("/button", json={"pressed": "yes"}).status_code == 400
    assert status["pairing"]["user_code"] != first  # a new code for the next owner
    assert "button held for 1.5 s: factory reset" in "\n".join(device.log_tail)
    assert sim.server.stats.token_log  # the grant was in use, and the reset revoked it at the server
    assert all(sim.server.revoked(token) for token in sim.server.issued_refresh_tokens())


def test_faults_from_the_page_are_the_servers(sim):
    with httpx.Client(base_url=sim.url, timeout=10) as http:
        answer = http.post("/faults", json={"switch": [{"endpoint": "token", "kind": "reset", "on": True}]})
        assert answer.status_code == 200 and sim.server.faults.switches()[0]["kind"] == "reset"
        assert sim.hub.wait_for(lambda v: v["faults"]["switches"], 5)
        assert http.post("/faults", json={"switch": [{"endpoint": "x", "kind": "reset"}]}).status_code == 400
        http.post("/faults", json={"clear": True})
        assert sim.hub.wait_for(lambda v: not v["faults"]["switches"], 5)


def test_devicelink_sim_device_prints_its_page_and_stops_on_sigterm():
    proc = subprocess.Popen([sys.executable, "-m", "devicelink_sim.cli", "device", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = proc.stdout.readline()
        assert first.startswith("devicelink-sim device: the real daemon on a virtual board"), first
        url = proc.stdout.readline().split()[1]
        assert url.startswith("http://127.0.0.1:")
        assert httpx.get(url, timeout=10).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        try:  # it takes well under a second; the margin is for a machine loaded by other suites
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            pytest.fail(f"devicelink-sim device still running 60 s after SIGTERM; its output:\n{out}")
    assert proc.returncode == 0, out
    assert "stopped the daemon (exit 0)" in out
