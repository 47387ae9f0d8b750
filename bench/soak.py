"""Soak: the real daemon for a while against a development server that keeps failing.

    .venv/bin/python bench/soak.py [--minutes 5] [--seed 1] [--lifetime 30] [--apps 3] [--rate 1.0]
                                   [--unpair-every 2] [--python /usr/bin/python3] [--json]

The development server (``devicelink_sim``, in this process, real time) issues
``--lifetime``-second access tokens with rotating refresh tokens. A fault
schedule drawn from a seeded RNG alternates healthy periods (10-30 s) with
fault periods (5-30 s) of one fault from docs/faults.md (5xx, 429 with
Retry-After, resets, closes, timeouts, malformed and oversized answers, 200
with an error body, slow_down, a flaky link, latency), aimed at the whole
server or the token endpoint alone; now and then the grant is revoked behind
the device's back. ``--apps`` threads ask the daemon's socket for a token
continuously (``--rate`` per second each), an "owner" asks for a new pairing
when the grant is gone and unpairs every ``--unpair-every`` minutes, and a
"phone" approves every code the daemon shows.

Printed at the end:

* requests the server saw, by kind (discovery, device, token = device-code
  polls, refresh, revocation), and how many a fault answered;
* refreshes that succeeded, and errors by kind (faults served; what the apps
  were told; the daemon's warnings);
* the longest time without a valid token while the server was healthy, from
  the apps' side: a token request that failed although the server had been
  healthy for longer than one backoff step (the step the daemon is in when
  the fault period ends: 5 s doubling per failed refresh in a row, which may
  have begun in an earlier period, capped at 300 s, or the Retry-After given;
  plus 5 s for the request itself) counts, until the next success. Latency periods count as healthy; the time from an unpair or a
  revoked grant to the next pairing does not count. Target: zero;
* the daemon's RSS (sampled every 10 s) at start (just after pairing), after a
  one-minute warm-up and at the end, and its growth rate fitted over the samples
  after the warm-up (target: under 1 MB an hour; a few minutes cannot resolve
  that, run ``--minutes 60`` to see it);
* whether the daemon exited cleanly and logged no traceback.

A benchmark, not a test: run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "simulator")]

from devicelink.ipc.client import Client, DaemonError, DaemonUnreachable  # noqa: E402
from devicelink_sim.authserver import DevServer  # noqa: E402
from devicelink_sim.devconfig import write_config  # noqa: E402
from devicelink_sim.faults import Fault  # noqa: E402

CAP = 300.0
REFRESH_BASE = 5.0
SLACK = 5.0  # a request's own time, the 1 s minimum spacing, thread scheduling
WARMUP = 60.0  # RSS growth is fitted after this: first refresh, first unpair, lazy imports

#: name -> (rules for one endpoint, retry_after the daemon is given, whether the server counts as healthy)
def fault_menu(rng: random.Random) -> dict[str, tuple[list[Fault], float, bool]]:
    retry = rng.randint(5, 30)
    return {
        "503": ([Fault("status", status=503, error="temporarily_unavailable", times=None)], 0, False),
        "500 html": ([Fault("status", status=500, times=None)], 0, False),
        "429 retry-after": ([Fault("rate_limit", retry_after=retry, times=None)], retry, False),
        "reset": ([Fault("reset", times=None)], 0, False),
        "close": ([Fault("close", times=None)], 0, False),
        "timeout": ([Fault("timeout", times=None)], 0, False),
        "malformed": ([Fault("malformed", times=None)], 0, False),
        "oversized": ([Fault("oversized", times=None)], 0, False),
        "200 error body": ([Fault("error_body", times=None)], 0, False),
        "slow_down": ([Fault("slow_down", times=None)], 0, False),
        "flaky (30% resets)": ([Fault("reset", probability=0.3, times=None)], 0, False),
        "latency": ([Fault("ok", delay=round(rng.uniform(0.5, 3.0), 1), times=None)], 0, True),
    }



def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


@dataclass
class Episode:
    kind: str
    target: str
    start: float
    end: float | None = None
    retry_after: float = 0.0
    healthy: bool = False
    failed_refreshes: int = 0  # failed refreshes in a row when it ended (backoff carries across episodes)

    def grace(self) -> float:
        """How long after healing the daemon may still be waiting out its backoff."""
        if self.healthy:
            return 0.0
        step = min(CAP, REFRESH_BASE * 2 ** (self.failed_refreshes - 1)) if self.failed_refreshes else 0.0
        return max(step, self.retry_after) + SLACK


@dataclass
class Timeline:
    """Fault episodes and the windows without a grant on purpose (unpair, revoked grant -> paired again)."""

    episodes: list[Episode] = field(default_factory=list)
    unpaired: list[list[float]] = field(default_factory=list)  # [start, end or inf]
    lock: threading.Lock = field(default_factory=threading.Lock)

    def excused(self, t: float) -> str | None:
        """Why an app's failure at ``t`` is not the daemon's fault, or None."""
        with self.lock:
            for start, end in self.unpaired:
                if start <= t <= end:
                    return "unpaired on purpose"
            last = None
            for ep in self.episodes:
                if ep.start <= t and (ep.end is None or t < ep.end):
                    if not ep.healthy:
                        return "server faulty"
                if ep.end is not None and ep.end <= t and not ep.healthy:
                    last = ep
            if last is not None and t - last.end <= last.grace():
                return "within one backoff step of healing"
        return None


class DaemonProcess:
    def __init__(self, python: list[str], config: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "PYTHONPATH")}
        env.update(DEVICELINK_LOG_LEVEL="INFO", PYTHONPATH=str(ROOT / "src"))
        self.proc = subprocess.Popen([*python, "-m", "devicelink", "--config", str(config), "run"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        self.tail: deque[str] = deque(maxlen=300)
        self.counts: Counter[str] = Counter()
        self.codes: deque[str] = deque()
        self.paired = threading.Event()
        self.ready = threading.Event()
        self.tracebacks = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.tail.append(line)
            if "devicelink ready on" in line:
                self.ready.set()
            if m := re.search(r"pairing: enter code (\S+) at", line):
                self.codes.append(m.group(1))
            if "-> paired" in line:
                self.paired.set()
            if "Traceback" in line or "unexpectedly" in line:
                self.tracebacks += 1
            if " WARNING " in line or " ERROR " in line:
                self.counts[_warning_kind(line)] += 1


def _warning_kind(line: str) -> str:
    for needle, kind in (("request budget", "budget refusal"), ("keeping the grant", "refresh failed"),
                         ("revocation failed", "revocation failed"), ("invalid_grant", "grant ended"),
                         ("pairing failed", "pairing failed"), ("request to", "request failed (http)"),
                         ("the code expired", "code expired")):
        if needle in line:
            return kind
    return "other: " + re.sub(r"^\S+ (WARNING|ERROR) ", "", line.strip())[:60]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--lifetime", type=int, default=30, help="access token lifetime, seconds (default 30)")
    parser.add_argument("--apps", type=int, default=3, help="threads asking for tokens (default 3)")
    parser.add_argument("--rate", type=float, default=1.0, help="requests per second per app (default 1)")
    parser.add_argument("--unpair-every", type=float, default=2.0, metavar="MINUTES",
                        help="the owner unpairs and pairs again this often (0: never; default 2)")
    parser.add_argument("--exclude", action="append", default=[], metavar="FAULT",
                        help="leave a fault out of the schedule, e.g. --exclude oversized (repeatable)")
    parser.add_argument("--python", default=sys.executable, help="the daemon's interpreter")
    parser.add_argument("--json", action="store_true", help="also print the numbers as JSON")
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="dl-soak-", dir="/tmp"))
    srv = DevServer(interval=1, access_token_lifetime=args.lifetime).start()
    srv.faults.seed(args.seed)
    daemon = DaemonProcess(args.python.split(), write_config(tmp, srv.issuer, srv.client_id))
    socket_path = str(tmp / "agent.sock")
    timeline = Timeline()
    stop = threading.Event()
    app_log: list[tuple[float, float, str]] = []  # (asked at, answered at, "ok" or an error code)
    app_lock = threading.Lock()
    rss: list[tuple[float, int]] = []
    result: dict = {}
    try:
        if not daemon.ready.wait(30):
            raise SystemExit("the daemon did not start:\n" + "".join(daemon.tail))

        def phone() -> None:
            while not stop.is_set():
                while daemon.codes:
                    code = daemon.codes.popleft()
                    time.sleep(0.5)
                    try:
                        srv.approve(code, subject="soak", name="Soak Tester")
                    except KeyError:
                        pass  # replaced or expired meanwhile
                time.sleep(0.1)

        threading.Thread(target=phone, daemon=True).start()
        if not daemon.paired.wait(60):
            raise SystemExit("the daemon did not pair:\n" + "".join(daemon.tail))
        t0 = time.monotonic()
        end = t0 + args.minutes * 60

        def owner() -> None:
            """Pairs again when the grant is gone; unpairs now and then. Each time without a
            grant, from the last time one was seen until one is held again, is a window the
            apps' failures are excused in (the grant losses themselves are counted apart)."""
            next_unpair = t0 + args.unpair_every * 60 if args.unpair_every > 0 else float("inf")
            last_held = time.monotonic()

            def open_window(at: float) -> None:
                with timeline.lock:
                    if not timeline.unpaired or timeline.unpaired[-1][1] != float("inf"):
                        timeline.unpaired.append([at, float("inf")])

            with Client(socket_path, timeout=70) as client:
                while not stop.is_set():
                    try:
                        state = client.status()["state"]
                        now = time.monotonic()
                        if state in ("paired", "offline", "refreshing"):
                            last_held = now
                            with timeline.lock:
                                if timeline.unpaired and timeline.unpaired[-1][1] == float("inf"):
                                    timeline.unpaired[-1][1] = now
                            if state == "paired" and now >= next_unpair and now < end - 20:
                                open_window(now)
                                client.unpair()
                                next_unpair = now + args.unpair_every * 60
                        else:
                            open_window(last_held)
                            if state in ("unpaired", "reauth_required"):
                                client.pair()
                    except (DaemonError, DaemonUnreachable):
                        pass
                    stop.wait(0.5)

        def faults() -> None:
            while not stop.is_set():
                if stop.wait(rng.uniform(10, 30)) or time.monotonic() > end - 10:
                    return
                if rng.random() < 0.06:  # a grant revoked behind the device's back
                    now = time.monotonic()
                    with timeline.lock:
                        timeline.episodes.append(Episode("grant revoked", "server", now, now, healthy=True))
                    srv.faults.revoke_grants()
                    continue
                menu = fault_menu(rng)
                kind = rng.choice(sorted(set(menu) - set(args.exclude)))
                rules, retry_after, healthy = menu[kind]
                target = "all" if rng.random() < 0.7 else "token"
                episode = Episode(kind, target, time.monotonic(), retry_after=retry_after, healthy=healthy)
                with timeline.lock:
                    timeline.episodes.append(episode)
                for name in (("token", "device", "revocation", "discovery") if target == "all" else ("token",)):
                    srv.faults.endpoint(name).add(*(Fault(**{**r.to_dict(), "used": 0}) for r in rules))
                stop.wait(rng.uniform(5, 30))
                srv.faults.clear()
                with timeline.lock:
                    episode.end = time.monotonic()

        def app(index: int) -> None:
            app_rng = random.Random(args.seed * 1000 + index)
            with Client(socket_path, timeout=70) as client:
                while not stop.is_set():
                    asked = time.monotonic()
                    try:
                        answer = client.token()
                        outcome = "ok" if answer.get("access_token") else "empty"
                    except DaemonError as exc:
                        outcome = exc.code
                    except DaemonUnreachable:
                        outcome = "unreachable"
                    with app_lock:
                        app_log.append((asked, time.monotonic(), outcome))
                    stop.wait(app_rng.expovariate(args.rate))

        def sampler() -> None:
            while not stop.is_set():
                try:
                    rss.append((time.monotonic(), rss_kib(daemon.proc.pid)))
                except (OSError, RuntimeError):
                    return
                stop.wait(10)

        threads = [threading.Thread(target=f, daemon=True) for f in (owner, faults, sampler)]
        threads += [threading.Thread(target=app, args=(i,), daemon=True) for i in range(args.apps)]
        for t in threads:
            t.start()
        while time.monotonic() < end and daemon.proc.poll() is None:
            remaining = end - time.monotonic()
            print(f"soak: {remaining / 60:5.1f} min left, {len(app_log)} token requests, "
                  f"{len(srv.faults.log)} server requests", file=sys.stderr, flush=True)
            time.sleep(min(60, max(0.1, remaining)))
        srv.faults.clear()
        stop.set()
        for t in threads:
            t.join(timeout=75)
        alive = daemon.proc.poll() is None
        if alive:
            rss.append((time.monotonic(), rss_kib(daemon.proc.pid)))
            daemon.proc.send_signal(signal.SIGTERM)
        exit_code = daemon.proc.wait(timeout=60)
        result = report(args, srv, daemon, timeline, app_log, rss, t0, alive, exit_code)
    finally:
        stop.set()
        if daemon.proc.poll() is None:
            daemon.proc.kill()
        srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=2))
    ok = (result.get("longest_without_token_while_healthy_s", 1) == 0 and result.get("crashed") is False
          and result.get("tracebacks") == 0 and result.get("unexpected_grant_losses") == 0)
    return 0 if ok else 1


def report(args, srv, daemon, timeline, app_log, rss, t0, alive, exit_code) -> dict:
    counts = srv.faults.counts()
    hits = list(srv.faults.log)
    refreshes = [h for h in hits if h.request == "refresh"]
    for episode in timeline.episodes:  # the backoff step the daemon was in when the server healed
        before = [h for h in refreshes if h.at < episode.end] if episode.end is not None else []
        while before and before[-1].outcome not in ("ok", "invalid_grant"):  # a new grant starts afresh
            episode.failed_refreshes += 1
            before.pop()
    refreshes_ok = sum(1 for h in hits if h.request == "refresh" and h.outcome == "ok")
    faults_served = Counter(f"{h.request}: {h.outcome}" for h in hits if h.fault and h.fault != "ok")
    app_outcomes = Counter(o for _, _, o in app_log)

    # the apps' side: failures while the server had been healthy for longer than a backoff step
    blamed, windows, open_at = [], [], None
    excuses: Counter[str] = Counter()
    for asked, answered, outcome in sorted(app_log):
        if outcome == "ok":
            if open_at is not None:
                windows.append(asked - open_at)
                open_at = None
            continue
        why = timeline.excused(asked)
        if why is None:
            blamed.append((asked - t0, outcome))
            open_at = asked if open_at is None else open_at
        else:
            excuses[why] += 1
    if open_at is not None:
        windows.append(app_log[-1][1] - open_at if app_log else 0.0)
    longest = max(windows, default=0.0)

    minutes = (rss[-1][0] - rss[0][0]) / 60 if len(rss) > 1 else 0.0
    settled = [(t, kib) for t, kib in rss if t >= t0 + WARMUP] or rss  # first refresh, unpair, lazy imports
    slope = _slope([(t / 3600, kib / 1000) for t, kib in settled]) if len(settled) > 2 else 0.0
    episodes = [e for e in timeline.episodes]
    revoked = sum(1 for e in episodes if e.kind == "grant revoked")
    unexpected_losses = max(0, daemon.counts["grant ended"] - revoked) + srv.stats.reuse_detections
    result = {
        "minutes": args.minutes,
        "seed": args.seed,
        "token_lifetime_s": args.lifetime,
        "server_requests_by_kind": counts["requests"],
        "server_requests_answered_by_a_fault": sum(faults_served.values()),
        "refreshes_ok": refreshes_ok,
        "fault_episodes": Counter(e.kind for e in episodes),
        "faults_served": dict(faults_served.most_common()),
        "app_requests": len(app_log),
        "app_outcomes": dict(app_outcomes.most_common()),
        "app_failures_excused": dict(excuses),
        "app_failures_while_healthy": len(blamed),
        "first_failures_while_healthy": blamed[:10],
        "longest_without_token_while_healthy_s": round(longest, 2),
        "daemon_warnings": dict(daemon.counts.most_common()),
        "reuse_detections": srv.stats.reuse_detections,
        "grants_revoked_by_the_server": revoked,
        "unexpected_grant_losses": unexpected_losses,
        "rss_start_kib": rss[0][1] if rss else None,
        "rss_after_warmup_kib": settled[0][1] if rss else None,
        "rss_end_kib": rss[-1][1] if rss else None,
        "rss_max_kib": max((k for _, k in rss), default=None),
        "rss_growth_mb_per_hour_fit": round(slope, 2),
        "rss_window_min": round(minutes, 1),
        "rss_samples_kib": [(round(t - t0), kib) for t, kib in rss],
        "episodes": [{"kind": e.kind, "target": e.target, "start": round(e.start - t0, 1),
                      "end": round(e.end - t0, 1) if e.end is not None else None,
                      "failed_refreshes": e.failed_refreshes, "grace": round(e.grace(), 1)} for e in episodes],
        "unpaired_windows": [(round(a - t0, 1), round(b - t0, 1) if b != float("inf") else None)
                             for a, b in timeline.unpaired],
        "refresh_log": [(round(h.at - t0, 1), h.outcome) for h in hits if h.request == "refresh"],
        "crashed": not alive,
        "exit_code": exit_code,
        "tracebacks": daemon.tracebacks,
    }
    w = print
    w(f"\nsoak: {args.minutes:g} min, seed {args.seed}, {args.lifetime} s tokens, {args.apps} apps at "
      f"{args.rate:g}/s, unpair every {args.unpair_every:g} min")
    w("requests the server saw:   " + ", ".join(f"{k} {v}" for k, v in sorted(counts["requests"].items()))
      + f"  ({result['server_requests_answered_by_a_fault']} answered by a fault)")
    w(f"refreshes that succeeded:  {refreshes_ok}")
    w("fault episodes:            " + ", ".join(f"{k} {v}" for k, v in sorted(result["fault_episodes"].items())))
    w("faults served:             " + ", ".join(f"{k} {v}" for k, v in faults_served.most_common()))
    w(f"app token requests:        {len(app_log)}: " + ", ".join(f"{k} {v}" for k, v in app_outcomes.most_common()))
    w("  failures excused:        " + (", ".join(f"{k} {v}" for k, v in excuses.most_common()) or "none"))
    w(f"  failures while healthy:  {len(blamed)}" + (f" (first: {blamed[:5]})" if blamed else ""))
    w(f"longest without a valid token while the server was healthy: {longest:.2f} s  (target 0)")
    w("daemon warnings:           " + (", ".join(f"{k} {v}" for k, v in daemon.counts.most_common()) or "none"))
    w(f"grant losses:              {daemon.counts['grant ended']} (revoked by the server on purpose: {revoked}; "
      f"unexpected: {unexpected_losses}; reuse detections: {srv.stats.reuse_detections})")
    if rss:
        w(f"RSS: start {rss[0][1] / 1024:.1f} MiB, after {WARMUP:.0f} s warm-up {settled[0][1] / 1024:.1f} MiB, "
          f"end {rss[-1][1] / 1024:.1f} MiB, max {result['rss_max_kib'] / 1024:.1f} MiB over {minutes:.1f} min; "
          f"growth fitted after the warm-up {slope:+.2f} MB/h (target < 1 MB/h; a few minutes cannot resolve it)")
        every = max(1, len(rss) // 12)
        w("RSS trace (min: MiB):      " + ", ".join(f"{(t - t0) / 60:.0f}: {kib / 1024:.1f}"
                                                   for t, kib in rss[::every]))
    w(f"daemon: {'crashed' if not alive else 'alive to the end'}, exit code {exit_code}, "
      f"{daemon.tracebacks} traceback(s)")
    return result


def _slope(points: list[tuple[float, float]]) -> float:
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / var if var else 0.0


if __name__ == "__main__":
    raise SystemExit(main())
