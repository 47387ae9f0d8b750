"""Crash consistency, proven by killing the real daemon (issue 4, item 1).

The daemon process (``devicelink run``) refreshes against the development server
with 2-second access tokens, so it refreshes and saves about once a second (half
the lifetime, and ``MIN_REFRESH_SPACING``). The harness SIGKILLs it at random
instants of that cycle, restarts it, and checks what a user would notice:

- it comes back with the grant (``restored the grant``), never asks to pair again;
- ``devicelink token`` exits 0 and the token works at the server's ``/userinfo``;
- the server never saw reuse: ``reuse_detections == 0``. The development server
  revokes the whole grant (RFC 9700 §4.14.2) when a refresh token comes back whose
  successor was already used, so a rotated refresh token lost to a crash, or a
  fall back to a stale generation of the state file, shows here. A token presented
  again because the crash fell between the server's rotation and the save is
  allowed (the server's grace rule) and counted as ``grace_reuses``.

Two checks look closer. After every kill, before the restart, the harness reads the
state file the way the daemon will and asks the server how the refresh token on disk
stands: it must be the grant's current token, or (the crash fell between the rotation
and the save) the one just before it. And after every restart, the refresh token
that came with the access token ``devicelink token`` printed is on disk (or a later
one is): saved before served.

Where the kill lands is random (``random.Random`` with a fixed seed): about two in
three right after the daemon logs ``-> refreshing``, spread over the time a
refresh-and-save takes (measured as it runs); the rest anywhere in the cycle. Sleeps
place the kills; no assertion depends on timing. Several devices (lanes), each with
its own server, daemon and grant, run side by side so 200 kills fit in the suite.

``bench/kill_bench.py`` runs the same harness for longer. Environment:
``DEVICELINK_KILLS`` (200), ``DEVICELINK_KILL_LANES`` (3), ``DEVICELINK_KILL_SEED``.
``tests/e2e/test_kill_dpop.py`` runs these kills against a strict server (oidc-provider, no
grace), with DPoP-bound refresh tokens it does not rotate.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import re
import shutil
import signal
import statistics
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import Daemon, write_config

KILLS = int(os.environ.get("DEVICELINK_KILLS", "200"))
LANES = int(os.environ.get("DEVICELINK_KILL_LANES", "3"))
SEED = int(os.environ.get("DEVICELINK_KILL_SEED", "4"))

ACCESS_TOKEN_LIFETIME = 2  # s: the daemon refreshes at half of it, at most once a second
CYCLE = 1.0  # s between refreshes, roughly
IN_WINDOW = 0.65  # share of kills aimed at the refresh-and-save window

REFRESH_STARTED = re.compile(r"state \w+ -> refreshing")
REFRESH_ENDED = re.compile(r"state refreshing -> \w+")
REFRESH_OK = re.compile(r"state refreshing -> paired")
FELL_BACK_MISSING = re.compile(r"state\.bin: missing .*using the previous generation")
FELL_BACK_UNREADABLE = re.compile(r"state\.bin: (?!missing).*using the previous generation")

# Where a kill landed, judged after it from the dead daemon's log, the files it left and
# the server's records (in this order of the cycle).
IDLE = "idle, between refreshes"
BEFORE_ROTATION = "refresh in flight, before the server rotated"
NOT_SAVED = "server rotated, response not yet saved"
MID_SAVE_TEMP = "server rotated, mid-save: temp file open or written, not renamed"
MID_SAVE_RENAMES = "server rotated, mid-save: between the two renames"
SAVED_NOT_LOGGED = "new token saved, refresh not yet reported"
OTHER = "other"
PHASES = [IDLE, BEFORE_ROTATION, NOT_SAVED, MID_SAVE_TEMP, MID_SAVE_RENAMES, SAVED_NOT_LOGGED, OTHER]
LAGGING = {NOT_SAVED, MID_SAVE_TEMP, MID_SAVE_RENAMES}  # the disk holds the token just rotated away


class TimedDaemon(Daemon):
    """:class:`tests.conftest.Daemon` that also notes when each log line arrived."""

    def __init__(self, config: Path) -> None:
        super().__init__(config)
        self.times: list[float] = []
        self.spawned = self.spawned_wall = 0.0

    def start(self) -> "TimedDaemon":
        self.spawned, self.spawned_wall = time.monotonic(), time.time()
        super().start()
        return self

    def _read_stderr(self) -> None:
        assert self.proc and self.proc.stderr
        for line in self.proc.stderr:
            with self._changed:
                self.times.append(time.monotonic())
                self.log.append(line)
                self._changed.notify_all()
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def wait_next(self, pattern: re.Pattern, timeout: float = 20.0) -> float:
        """When the next line matching ``pattern`` arrived, among lines logged from now on."""
        with self._changed:
            self._cursor = len(self.log)
        self.wait_for(pattern.pattern, timeout)
        with self._changed:
            return self.times[self._cursor - 1]

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        with self._changed:  # the whole log, up to the kill
            while not self._closed:
                self._changed.wait(5)
        self._out.join(timeout=5)

    def refresh_durations(self) -> list[float]:
        """From each ``-> refreshing`` line to the line that ended that refresh."""
        durations, started = [], None
        for at, line in zip(self.times, self.log):
            if REFRESH_STARTED.search(line):
                started = at
            elif REFRESH_ENDED.search(line) and started is not None:
                durations.append(at - started)
                started = None
        return durations


@dataclass
class Results:
    kills: int = 0
    restarts: int = 0
    refreshes: int = 0  # refresh requests the servers answered
    grace_reuses: int = 0
    reuse_detections: int = 0
    fell_back_missing: int = 0  # restarts that found state.bin missing (a save cut off between its renames)
    fell_back_unreadable: int = 0  # restarts that found state.bin unreadable
    phases: Counter = field(default_factory=Counter)
    aims: Counter = field(default_factory=Counter)
    durations: list[float] = field(default_factory=list)
    elapsed: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def report(self) -> str:
        lines = [
            f"kills {self.kills}, restarts {self.restarts} in {self.elapsed:.1f} s "
            f"({self.elapsed / max(1, self.kills):.2f} s a kill)",
            f"aimed: {self.aims['window']} in the refresh-and-save window, {self.aims['anywhere']} anywhere",
            f"refreshes answered by the servers {self.refreshes}, grace reuses {self.grace_reuses}, "
            f"reuse detections {self.reuse_detections}",
            f"generation fallbacks: {self.fell_back_missing} newest missing (save cut off between renames), "
            f"{self.fell_back_unreadable} newest unreadable",
        ]
        if self.durations:
            q = statistics.quantiles(self.durations, n=10)
            lines.append(f"refresh-and-save as logged: median {statistics.median(self.durations) * 1000:.1f} ms, "
                         f"p90 {q[-1] * 1000:.1f} ms ({len(self.durations)} refreshes)")
        lines.append("kills by phase:")
        lines += [f"  {self.phases[p]:5d}  {p}" for p in PHASES if p != OTHER]
        lines += [f"  {n:5d}  {p}" for p, n in self.phases.items() if p.startswith(OTHER)]
        return "\n".join(lines)


class ServerClock:
    """A lane server's clock: ``time.monotonic`` plus ``skew`` (a test adds to it to stand in
    for a harness thread the machine did not run for a while), or ``held`` at one instant
    while :meth:`at` lasts."""

    def __init__(self) -> None:
        self.skew = 0.0
        self.held: float | None = None

    def __call__(self) -> float:
        held = self.held
        return time.monotonic() + self.skew if held is None else held

    @contextlib.contextmanager
    def at(self, instant: float):
        self.held = instant
        try:
            yield
        finally:
            self.held = None


class Lane:
    """One device: its own development server, state directory, daemon and grant."""

    def __init__(self, root: Path, rng: random.Random, results: Results) -> None:
        from devicelink_sim.authserver import DevServer

        root.mkdir(parents=True, exist_ok=True)
        self.rng, self.results = rng, results
        self.clock = ServerClock()
        #: Runs between ``devicelink token`` and the check of its token at the server.
        self.after_serving = lambda: None
        self.srv = DevServer(interval=1, access_token_lifetime=ACCESS_TOKEN_LIFETIME, clock=self.clock).start()
        self.cfg = write_config(root, self.srv.issuer, self.srv.client_id)
        self.state_dir = root / "state"
        self.daemon: TimedDaemon | None = None
        self.durations: list[float] = []

    def pair(self) -> None:
        d = self.daemon = TimedDaemon(self.cfg).start()
        self.srv.approve(d.wait_for(r"pairing: enter code (\S+)").group(1))
        d.wait_for(r"state pairing -> paired")

    def kill_and_restart(self) -> None:
        d = self.daemon
        assert d is not None
        aim = self._aim(d)
        d.kill()
        files = {name: (self.state_dir / name).exists() for name in ("state.bin", "state.prev.bin")}
        try:  # written by this daemon, not left over from an earlier kill
            files["temp"] = any(p.stat().st_mtime >= d.spawned_wall for p in self.state_dir.glob(".state.bin.*.tmp"))
        except FileNotFoundError:
            files["temp"] = False
        self._server_done_with_the_dead()
        on_disk = self._refresh_token_on_disk()
        standing = self.srv._state.refresh_token_standing(on_disk) if on_disk else "no grant on disk"
        self.durations += d.refresh_durations()
        phase = self._phase(d, standing, files)
        assert standing in ("current", "grace"), (
            f"after a kill ({phase}) the refresh token on disk is {standing} at the server: a rotated refresh "
            f"token was lost, or the store went back too far; files {files}; log:\n" + "".join(d.log[-20:]))
        assert (standing == "grace") == (phase in LAGGING), (
            f"the disk lags the server ({standing}) but the kill landed at {phase!r}: a refresh was reported "
            "done (and its token served) before the new refresh token was on disk; log:\n" + "".join(d.log[-20:]))

        new = self.daemon = TimedDaemon(self.cfg).start()
        fallbacks = self._check_restart(new)
        with self.results.lock:
            self.results.kills += 1
            self.results.restarts += 1
            self.results.aims[aim] += 1
            self.results.phases[phase] += 1
            self.results.fell_back_missing += fallbacks[0]
            self.results.fell_back_unreadable += fallbacks[1]

    def _aim(self, d: TimedDaemon) -> str:
        if self.rng.random() < IN_WINDOW:
            # as long as one of the refreshes seen so far took (as logged), and a little more
            recent = self.durations[-50:]
            window = 1.2 * self.rng.choice(recent) if len(recent) >= 5 else 0.05
            target = d.wait_next(REFRESH_STARTED) + self.rng.uniform(0, window)
            aim = "window"
        else:
            target = time.monotonic() + self.rng.uniform(0, 1.25 * CYCLE)
            aim = "anywhere"
        time.sleep(max(0.0, target - time.monotonic()))
        return aim

    def _server_done_with_the_dead(self, timeout: float = 10.0) -> None:
        """Wait until this lane's server has answered everything the killed daemon sent (its
        request threads end when they read the closed connections), so what the server says
        next is what it says about the instant of the kill."""
        httpd = self.srv._httpd

        def serving() -> bool:
            for thread in threading.enumerate():
                target = getattr(thread, "_target", None)  # socketserver.ThreadingMixIn's request threads
                if getattr(target, "__self__", None) is httpd and target.__name__ == "process_request_thread":
                    return True
            return False

        deadline = time.monotonic() + timeout
        while serving():
            assert time.monotonic() < deadline, "the server is still busy with the killed daemon's requests"
            time.sleep(0.002)

    def _refresh_token_on_disk(self) -> str | None:
        """The refresh token a restart will load (the store picks the generation, as it will then)."""
        from devicelink.tokens.store import EncryptedFileStore

        # The key file as it is: keys.load_key would take the state_dir lock for this process.
        key = (self.state_dir / "state.key").read_bytes()
        record = EncryptedFileStore(self.state_dir, key).load()
        return record["tokens"]["refresh_token"] if record else None

    def _phase(self, d: TimedDaemon, standing: str, files: dict[str, bool]) -> str:
        started = sum(bool(REFRESH_STARTED.search(line)) for line in d.log)
        ended = sum(bool(REFRESH_ENDED.search(line)) for line in d.log)
        ended_ok = sum(bool(REFRESH_OK.search(line)) for line in d.log)
        # Refreshes the server granted this daemon (all its requests are answered by now).
        rotated = sum(1 for e in self.srv.stats.token_log
                      if e.grant_type == "refresh_token" and e.outcome == "ok" and e.at >= d.spawned)
        other = f"{OTHER}: {started} refreshes started, {ended} ended ({ended_ok} ok), {rotated} granted, " \
                f"token on disk {standing}"
        if started == ended:
            return IDLE if rotated == ended_ok and standing == "current" else other
        if started != ended + 1:
            return other
        if rotated == ended_ok:
            return BEFORE_ROTATION if standing == "current" else other
        if rotated != ended_ok + 1:
            return other
        if standing == "current":
            return SAVED_NOT_LOGGED
        if not files["state.bin"]:
            return MID_SAVE_RENAMES  # (the temp file is still there too)
        if files["temp"]:
            return MID_SAVE_TEMP
        return NOT_SAVED

    def _check_restart(self, d: TimedDaemon) -> tuple[int, int]:
        came_up = d.wait_for(r"restored the grant|enter code|starting unpaired", timeout=20).group(0)
        assert came_up == "restored the grant", "the restarted daemon lost the grant; log:\n" + "".join(d.log)
        out = d.cli("token")
        served = self.clock()  # the server's clock once the token was printed
        assert out.returncode == 0, f"devicelink token: {out.returncode} {out.stderr}; log:\n" + "".join(d.log)
        access_token = out.stdout.strip()
        self.after_serving()
        self._assert_accepted(access_token, served)
        # Saved before served: the refresh token that came with the access token just served
        # is on disk (or a later one is, from a refresh since).
        issued_with = self.srv._state.refresh_token_issued_with(access_token)
        on_disk = self._refresh_token_on_disk()
        assert issued_with and on_disk and self.srv._state.same_or_later(on_disk, than=issued_with), (
            "the daemon served an access token before the refresh token that came with it was on disk; log:\n"
            + "".join(d.log[-20:]))
        stats = self.srv.stats
        assert stats.reuse_detections == 0, "the server saw a rotated-away refresh token come back"
        assert stats.device_authorizations == 1, "the daemon asked to pair again"
        return (sum(bool(FELL_BACK_MISSING.search(line)) for line in d.log),
                sum(bool(FELL_BACK_UNREADABLE.search(line)) for line in d.log))

    def _assert_accepted(self, access_token: str, served: float) -> None:
        """The server's ``/userinfo`` accepts the token served at ``served`` (its clock). With
        2-second tokens, a loaded machine can let the token expire between ``devicelink
        token`` and this check (issue 10, item 19): then, and only then, the same request is
        judged again as of the instant it was served. Every other refusal (unknown token,
        revoked grant, reuse) is refused at any instant and fails here."""
        url, headers = f"{self.srv.issuer}/userinfo", {"Authorization": f"Bearer {access_token}"}
        answer = httpx.get(url, headers=headers)
        if answer.status_code == 401:
            with self.srv._state.lock:
                record = self.srv._state.access_tokens.get(access_token)
                expired_since = record is not None and record.expires_at <= self.clock()
            if expired_since:
                with self.clock.at(served):
                    answer = httpx.get(url, headers=headers)
        assert answer.status_code == 200, answer.text

    def close(self) -> None:
        try:
            if self.daemon is not None:
                self.daemon.stop()
        finally:
            stats = self.srv.stats
            with self.results.lock:
                self.results.refreshes += stats.token_requests.get("refresh_token", 0)
                self.results.grace_reuses += stats.grace_reuses
                self.results.reuse_detections += stats.reuse_detections
                self.results.durations += self.durations
            self.srv.stop()


def run_kills(kills: int, lanes: int = LANES, seed: int = SEED, root: Path | None = None,
              progress=None, lane_factory=None, results: Results | None = None) -> Results:
    """``kills`` SIGKILLs spread over ``lanes`` devices running side by side. ``lane_factory(index,
    root, rng, results)`` makes a lane other than :class:`Lane` (``tests/e2e/test_kill_dpop.py``:
    against oidc-provider); ``results`` then is its kind of :class:`Results`."""
    results = results if results is not None else Results()
    lane_factory = lane_factory or (lambda index, lane_root, rng, res: Lane(lane_root, rng, res))
    tickets = itertools.count()
    stop = threading.Event()
    own_root = root is None
    root = root or Path(tempfile.mkdtemp(prefix="dl-kill-", dir="/tmp"))

    def lane_main(index: int) -> None:
        lane = lane_factory(index, root / f"l{index}", random.Random(seed * 1000 + index), results)
        try:
            lane.pair()
            while not stop.is_set() and next(tickets) < kills:
                lane.kill_and_restart()
                if progress:
                    progress(results)
        except BaseException:
            stop.set()
            raise
        finally:
            lane.close()

    started = time.monotonic()
    try:
        with ThreadPoolExecutor(lanes, thread_name_prefix="kill-lane") as pool:
            futures = [pool.submit(lane_main, i) for i in range(lanes)]
            errors = [f.exception() for f in futures]
        for error in errors:
            if error is not None:
                raise error
    finally:
        results.elapsed = time.monotonic() - started
        if own_root:
            shutil.rmtree(root, ignore_errors=True)
    return results


# -- the tests -------------------------------------------------------------------------


def test_sigkill_at_random_instants_never_loses_the_grant(short_tmp):
    results = run_kills(KILLS, root=short_tmp)
    print("\n" + results.report())
    assert results.kills == results.restarts == KILLS
    assert KILLS >= 200 or "DEVICELINK_KILLS" in os.environ
    assert results.reuse_detections == 0
    assert results.fell_back_unreadable == 0  # SIGKILL never tears a file that rename made whole
    # The harness reached what it is for: kills between the server's rotation and the save,
    # after which the restarted daemon presented the old token again under the grace rule.
    assert sum(results.phases[p] for p in LAGGING) >= 1
    assert results.grace_reuses >= 1


def _paired_and_refreshed(short_tmp, srv) -> TimedDaemon:
    d = TimedDaemon(write_config(short_tmp, srv.issuer, srv.client_id)).start()
    try:
        srv.approve(d.wait_for(r"pairing: enter code (\S+)").group(1))
        d.wait_for(r"state pairing -> paired")
        for _ in range(2):
            d.wait_for(REFRESH_OK.pattern)
    finally:
        assert d.stop() == 0
    assert (d.state_dir / "state.prev.bin").exists()
    return d


def test_torn_newest_generation_falls_back_to_the_previous(short_tmp):
    """A power cut that tore ``state.bin`` (here: cut in half): the daemon says so in one
    line, restores the previous generation, and refreshes with its token, which the
    server accepts because its successor (in the torn file) was never used."""
    from devicelink_sim.authserver import DevServer

    with DevServer(interval=1, access_token_lifetime=ACCESS_TOKEN_LIFETIME) as srv:
        d = _paired_and_refreshed(short_tmp, srv)
        newest = d.state_dir / "state.bin"
        newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
        d2 = TimedDaemon(d.config).start()
        try:
            line = d2.wait_for(r".*using the previous generation.*").group(0)
            assert "state.bin: cannot be decrypted" in line
            d2.wait_for(r"restored the grant")
            d2.wait_for(REFRESH_OK.pattern)
            assert srv.stats.grace_reuses == 1 and srv.stats.reuse_detections == 0
            out = d2.cli("token")
            assert out.returncode == 0, out.stderr
            assert httpx.get(f"{srv.issuer}/userinfo",
                             headers={"Authorization": f"Bearer {out.stdout.strip()}"}).status_code == 200
            assert srv.stats.device_authorizations == 1
            assert sum("previous generation" in line for line in d2.log) == 1
            assert not [t for t in srv.issued_secrets() if any(t in line for line in d2.log)]
        finally:
            d2.stop()


def test_both_generations_unreadable_starts_unpaired_with_one_line(short_tmp):
    from devicelink_sim.authserver import DevServer

    with DevServer(interval=1, access_token_lifetime=ACCESS_TOKEN_LIFETIME) as srv:
        d = _paired_and_refreshed(short_tmp, srv)
        for name in ("state.bin", "state.prev.bin"):
            path = d.state_dir / name
            blob = bytearray(path.read_bytes())
            blob[-1] ^= 1  # one bit: the GCM tag no longer matches
            path.write_bytes(bytes(blob))
        d2 = TimedDaemon(d.config).start()
        try:
            d2.wait_for(r"pairing: enter code")
            errors = [line for line in d2.log if "state.bin" in line]
            assert len(errors) == 1 and "ERROR" in errors[0], errors
            assert "cannot be decrypted" in errors[0] and "previous generation is unreadable too" in errors[0]
            assert "starting unpaired" in errors[0]
            assert srv.stats.reuse_detections == 0
        finally:
            d2.stop()


def test_a_token_that_expires_after_it_was_served_is_judged_as_served(short_tmp):
    """Issue 10, item 19: the harness thread is not run for 3 s (longer than the 2 s token
    lives) between ``devicelink token`` and the check at ``/userinfo``, as on a loaded
    2-core machine; stood in for by moving the server's clock on. The check judges the token
    as of when it was served, so this passes; a revoked grant still fails it."""
    results = Results()
    lane = Lane(short_tmp / "l0", random.Random(SEED), results)
    try:
        lane.pair()

        def descheduled() -> None:
            lane.clock.skew += 1.5 * ACCESS_TOKEN_LIFETIME

        lane.after_serving = descheduled
        lane.kill_and_restart()
        assert results.restarts == 1

        def revoked() -> None:
            lane.srv._state.revoke_all()

        lane.after_serving = revoked
        with pytest.raises(AssertionError, match="invalid_token|401|revoked|reuse|lost"):
            lane.kill_and_restart()
    finally:
        lane.close()
