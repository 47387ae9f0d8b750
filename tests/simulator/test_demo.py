"""`devicelink-sim demo` end to end: the real dev server, the virtual device (the real daemon on a png
screen and mock pins), the scripted phone on the verification page, curl and the CLI, as a person runs it."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import zxingcpp
from PIL import Image

from devicelink.tokens.keys import load_key
from devicelink.tokens.store import EncryptedFileStore


def run_demo(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.Popen([sys.executable, "-m", "devicelink_sim.cli", "demo", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the demo stops its daemon on SIGTERM
        out, _ = proc.communicate(timeout=30)
        pytest.fail(f"the demo did not finish within {timeout} s; output:\n{out}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, None)


def find(record, key: str):
    """``record[...][key]`` wherever it is nested in the state record."""
    if isinstance(record, dict):
        if key in record:
            return record[key]
        for value in record.values():
            if (found := find(value, key)) is not None:
                return found
    return None


def decode_qr(path: Path) -> str | None:
    """The QR code on a frame the png driver wrote, decoded (None if it has none)."""
    img = Image.open(path).convert("L")
    found = zxingcpp.read_barcodes(img.resize((img.width * 4, img.height * 4), Image.Resampling.NEAREST))
    return found[0].text if len(found) == 1 else None


def test_demo_pairs_the_real_daemon_and_never_prints_a_whole_token():
    result = run_demo("--approve-after", "0", "--keep")
    out = result.stdout
    kept = re.search(r"kept (/tmp/dlsim-\S+?)[ ;\n]", out)
    try:
        assert result.returncode == 0, out
        assert kept, out

        # The page's address for whoever wants to watch, then the code; the virtual screen's
        # frames (kept) carry a QR code of the address the scripted phone opened.
        assert re.search(r"Watch it and click it: http://127\.0\.0\.1:\d+/\n", out), out
        code = re.search(r"The device shows code ([A-Z]{4}-[A-Z]{4}) and a QR code for (\S+)\n", out)
        uri = code.group(2)
        code = code.group(1)
        assert uri.endswith(f"/device?user_code={code}")
        assert f"A scripted phone scans the QR code, opens {uri} and approves as Alice Example" in out
        frames = sorted((Path(kept.group(1)) / "screen").glob("frame-*.png"))
        assert uri in {decode_qr(frame) for frame in frames}
        assert "its screen says Paired as Alice Example; its LED is on" in out

        # The grant the daemon stored (encrypted) is what curl and the CLI were given.
        state_dir = Path(kept.group(1)) / "state"
        key, _ = load_key("file", state_dir)
        record = EncryptedFileStore(state_dir, key).load()
        access, refresh = find(record, "access_token"), find(record, "refresh_token")
        assert len(access) >= 20 and refresh
        if shutil.which("curl"):
            assert f"curl got a Bearer token ({len(access)} chars, expires in " in out
            assert re.search(rf"curl got a Bearer token .*: {re.escape(access[:6])}…\n", out)
        assert f"devicelink token printed a token ({len(access)} chars): {access[:6]}…\n" in out
        assert "state: paired" in out and "account: Alice Example" in out

        # Never a whole token, nor a long piece of one.
        for secret in (access, refresh):
            assert secret[:12] not in out, "the demo printed (part of) a token"
    finally:
        if kept:
            shutil.rmtree(kept.group(1), ignore_errors=True)


def test_demo_removes_its_temp_dir_and_stops_its_daemon():
    result = run_demo("--approve-after", "0")
    assert result.returncode == 0, result.stdout
    removed = re.search(r"removed (/tmp/dlsim-\S+)\n", result.stdout)
    assert removed, result.stdout
    assert not Path(removed.group(1)).exists()
    running = subprocess.run(["pgrep", "-f", removed.group(1)], capture_output=True, text=True)
    assert running.stdout == "", "a process of the demo outlived it"


def test_demo_refuses_a_negative_delay():
    result = subprocess.run([sys.executable, "-m", "devicelink_sim.cli", "demo", "--approve-after", "-1"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "--approve-after" in result.stderr


def test_server_command_runs_the_dev_server_until_sigterm():
    proc = subprocess.Popen([sys.executable, "-m", "devicelink_sim.cli", "server", "--interval", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        first = proc.stdout.readline()
        assert re.fullmatch(r"issuer http://127\.0\.0\.1:\d+\n", first), first
        import httpx

        meta = httpx.get(first.split()[1] + "/.well-known/oauth-authorization-server", timeout=10).json()
        assert meta["device_authorization_endpoint"].endswith("/device_authorization")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_help_lists_the_commands():
    result = subprocess.run([sys.executable, "-m", "devicelink_sim.cli", "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for command in ("demo", "device", "faults", "server", "fleet"):
        assert command in result.stdout
