"""`devicelink-sim demo` end to end: the real dev server, daemon, curl and CLI, as a person runs it."""

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

BLOCKS = {" ": (False, False), "▀": (True, False), "▄": (False, True), "█": (True, True)}
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


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


def decode_qr(out: str) -> str:
    """The one QR code drawn in ``out`` (half blocks, ink is dark), decoded."""
    lines = [line for line in ANSI.sub("", out).split("\n") if line and set(line) <= BLOCKS.keys()]
    assert len(lines) >= 15, "no QR code drawn"
    rows = [[BLOCKS[ch][half] for ch in line] for line in lines for half in (0, 1)]
    width = max(map(len, rows))
    img = Image.new("L", (width, len(rows)), 255)
    for y, row in enumerate(rows):
        for x, dark in enumerate(row):
            if dark:
                img.putpixel((x, y), 0)
    found = zxingcpp.read_barcodes(img.resize((width * 4, len(rows) * 4), Image.Resampling.NEAREST))
    assert len(found) == 1, found
    return found[0].text


def test_demo_pairs_the_real_daemon_and_never_prints_a_whole_token():
    result = run_demo("--approve-after", "0", "--keep")
    out = result.stdout
    kept = re.search(r"kept (/tmp/dlsim-\S+?)[ ;\n]", out)
    try:
        assert result.returncode == 0, out
        assert kept, out

        # The daemon drew its pairing screen here: the user code, and a QR code that carries it.
        code = re.search(r"Code:\s+([A-Z]{4}-[A-Z]{4})", out).group(1)
        assert f"A scripted phone approves code {code}" in out
        assert decode_qr(out).endswith(f"/device?user_code={code}")
        assert "Paired as Alice Example" in out

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


def test_help_lists_both_commands():
    result = subprocess.run([sys.executable, "-m", "devicelink_sim.cli", "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "demo" in result.stdout and "server" in result.stdout
