"""DPoP's costs (issue 11, item 3): CPU per proof, memory and start-up, and ``POST /v1/dpop-proof``.

    .venv/bin/python bench/dpop_bench.py [cpu] [rss] [proofs] [--restarts 6] [--clients 8] [--seconds 5]
                                         [--python /usr/bin/python3]

- ``cpu``: CPU time (``time.process_time``) to build one DPoP proof (with and without ``ath``)
  and one ``private_key_jwt`` client assertion with the file signer, in this process.
- ``rss``: the real daemon (``rss_startup.one_run``) paired against the development server,
  without signing and with ``dpop = true``, restarted alternately: start -> ready and VmRSS;
  then ``python -X importtime`` of what ``dpop = true`` adds at start (the key and the proofs).
- ``proofs``: the daemon paired with ``dpop = true`` and ``--clients`` keep-alive connections,
  each sending ``POST /v1/dpop-proof`` (with the daemon's access token, so ``ath``) as soon as
  its previous answer arrived, for ``--seconds``: answers per second, p50 and p99; and
  ``GET /v1/token`` the same way, for comparison.

A benchmark, not a test: run it on an idle machine. The daemon runs under ``--python``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# bench/ (rss_startup), and this tree's src/ and simulator/, whatever the venv has installed
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "src"), str(ROOT / "simulator")]
import rss_startup  # noqa: E402


def cpu(n: int = 3000) -> None:
    from devicelink.identity import filekey
    from devicelink.oauth.auth.dpop import DPoP
    from devicelink.oauth.auth.private_key_jwt import PrivateKeyJwt

    with tempfile.TemporaryDirectory() as tmp:
        signer = filekey.create(Path(tmp) / "identity.jwk")
    dpop = DPoP(signer)
    assertion = PrivateKeyJwt("tv", signer, "https://id.example", ("issuer",), lambda: None, time.time)
    token = "x" * 43
    cases = {
        "DPoP proof": lambda: dpop.proof("POST", "https://id.example/token", nonce="n" * 22),
        "DPoP proof with ath (an app's)": lambda: dpop.proof("GET", "https://api.example/v1/x", access_token=token),
        "private_key_jwt assertion": lambda: assertion.assertion("https://id.example/token"),
    }
    print(f"CPU per operation, {n} each, best and median of 5 rounds (µs):")
    for name, make in cases.items():
        rounds = []
        for _ in range(5):
            start = time.process_time()
            for _ in range(n):
                make()
            rounds.append((time.process_time() - start) / n * 1e6)
        print(f"  {name:34} {min(rounds):7.1f} {statistics.median(rounds):7.1f}")


def rss(python: list[str], restarts: int) -> None:
    from devicelink_sim.authserver import DevServer

    src = ROOT / "src"
    setups = {"no signing (client_auth none)": "", "dpop = true": "dpop = true\n"}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in setups}
    with DevServer(interval=1) as srv, tempfile.TemporaryDirectory(prefix="dl-bench-", dir="/tmp") as tmp:
        configs = {}
        for i, (name, extra) in enumerate(setups.items()):
            (Path(tmp) / str(i)).mkdir()
            configs[name] = rss_startup.write_config(Path(tmp) / str(i), srv.issuer, srv.client_id, extra=extra)
            rss_startup.pair(python, configs[name], src, srv)
        for _ in range(restarts):
            for name in setups:
                runs[name].append(rss_startup.one_run(python, configs[name], src, 200))
    print(f"\nthe daemon, {restarts} restarts each, alternating (medians; min-max):")
    for key, label in [("startup_ms", "start -> ready (ms)"), ("rss_start_mib", "VmRSS after start (MiB)"),
                       ("rss_loaded_mib", "VmRSS after 200 tokens (MiB)")]:
        cells = []
        for name in setups:
            values = [r[key] for r in runs[name]]
            cells.append(f"{name}: {statistics.median(values):6.1f} ({min(values):.1f}-{max(values):.1f})")
        print(f"  {label:30} " + "   ".join(cells))

    probe = ("import sys; from devicelink import config, daemon; import devicelink.oauth.http, devicelink.engine;"
             "cfg = config.load(sys.argv[1]); import time; t = time.perf_counter();"
             "daemon.signing_params(cfg, lambda: None); print('SIGNING', (time.perf_counter() - t) * 1000)")
    with tempfile.TemporaryDirectory(prefix="dl-bench-", dir="/tmp") as tmp:
        cfg = rss_startup.write_config(Path(tmp), "https://id.example", "tv", extra="dpop = true\n")
        (Path(tmp) / "state").mkdir(mode=0o700)
        out = subprocess.run([*python, "-X", "importtime", "-c", probe, str(cfg)], capture_output=True, text=True,
                             env=rss_startup.daemon_env(src), check=True)
    # "import time: self [us] | cumulative | imported package", nested ones indented further
    rows = [line.split("|") for line in out.stderr.splitlines() if line.startswith("import time:") and "|" in line]
    rows = [(int(cum), name[1:]) for _, cum, name in rows if cum.strip().isdigit()]
    start = next(i for i, (_, name) in enumerate(rows) if name == "devicelink.engine") + 1
    top = [(cum, name) for cum, name in rows[start:] if not name.startswith(" ")]
    signing_ms = next(line for line in out.stdout.splitlines() if line.startswith("SIGNING")).split()[1]
    print(f"\n`dpop = true` at start: signing_params (imports, reading or making the key) took {float(signing_ms):.1f} ms;"
          " its top-level imports (cumulative µs):")
    for cum, name in top:
        print(f"  {cum:8d}  {name}")


def request(method: str, path: str, body: dict | None = None) -> bytes:
    data = json.dumps(body).encode() if body is not None else b""
    head = f"{method} {path} HTTP/1.1\r\nHost: devicelink\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
    return head.encode() + b"\r\n" + data


async def answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    return status, await reader.readexactly(length)


async def load(path: str, payload: bytes, clients: int, seconds: float) -> tuple[float, list[float]]:
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def one() -> None:
        reader, writer = await asyncio.open_unix_connection(path)
        try:
            while time.perf_counter() < stop:
                t = time.perf_counter()
                writer.write(payload)
                status, body = await answer(reader)
                latencies.append(time.perf_counter() - t)
                if status != 200:
                    raise RuntimeError(f"{status}: {body[:200]!r}")
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(clients)))
    return time.perf_counter() - start, latencies


def proofs(python: list[str], clients: int, seconds: float) -> None:
    from devicelink_sim.authserver import DevServer

    src = ROOT / "src"
    with DevServer(interval=1) as srv, tempfile.TemporaryDirectory(prefix="dl-bench-", dir="/tmp") as tmp:
        config = rss_startup.write_config(Path(tmp), srv.issuer, srv.client_id, extra="dpop = true\n")
        rss_startup.pair(python, config, src, srv)
        daemon = rss_startup.Daemon(python, config, src)
        daemon.spawn()
        try:
            status, sock = daemon.health()
            sock.close()
            assert status == 200, status

            async def main() -> None:
                reader, writer = await asyncio.open_unix_connection(daemon.socket)
                writer.write(request("GET", "/v1/token"))
                token = json.loads((await answer(reader))[1])
                writer.close()
                assert token["token_type"] == "DPoP", token
                proof = request("POST", "/v1/dpop-proof", {"htm": "GET", "htu": "https://api.example.com/v1/things",
                                                            "access_token": token["access_token"]})
                print(f"\n{clients} keep-alive clients, {seconds:g} s each, closed loop (answers/s, p50, p99):")
                for name, payload in (("POST /v1/dpop-proof", proof), ("GET /v1/token", request("GET", "/v1/token"))):
                    took, lat = await load(daemon.socket, payload, clients, seconds)
                    lat.sort()
                    print(f"  {name:22} {len(lat) / took:8.0f}/s  p50 {lat[len(lat) // 2] * 1e3:5.2f} ms"
                          f"  p99 {lat[int(len(lat) * 0.99)] * 1e3:5.2f} ms")

            asyncio.run(main())
        finally:
            daemon.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("parts", nargs="*", help="cpu, rss, proofs (default: all)")
    ap.add_argument("--python", default=str(rss_startup.VENV_PYTHON if rss_startup.VENV_PYTHON.exists()
                                             else sys.executable))
    ap.add_argument("--restarts", type=int, default=6)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    parts = args.parts or ["cpu", "rss", "proofs"]
    if set(parts) - {"cpu", "rss", "proofs"}:
        ap.error(f"unknown part(s): {' '.join(sorted(set(parts) - {'cpu', 'rss', 'proofs'}))}")
    python = args.python.split()
    python[0] = os.path.abspath(python[0])
    if "cpu" in parts:
        cpu()
    if "rss" in parts:
        rss(python, args.restarts)
    if "proofs" in parts:
        proofs(python, args.clients, args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
