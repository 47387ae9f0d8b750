"""A fleet on one machine: N real device engines, a power cut, and what the server sees.

``devicelink-sim fleet --devices N [--json]`` answers the question a manufacturer
sizes their identity provider by: when every unit loses power together and comes
back at once, does the fleet hammer the server?

What runs is not a model. Each device is the daemon's own engine
(``devicelink.engine.Device``: discovery, pairing, the refresh schedule, the
encrypted state file with its atomic writes, the restart spread), each with its
own state directory and key, against the development server itself (the Flask
app, Authlib grants and state of ``devicelink-sim server``), called in-process
(inprocess.py) because a socket per request would measure the kernel, not the
fleet. With ``identity`` each unit also makes its own key, registers itself and signs
its requests, built by ``daemon.assemble`` exactly as ``devicelink run`` builds it. All of it runs on virtual time (timetravel.py): token lifetimes are
real-sized numbers of virtual seconds, and a run through several of them takes
minutes of wall time.

The scenario (:func:`run_fleet`):

1. every device starts unpaired and shows a code; its owner approves it at a
   random moment within ``approve_within`` seconds (owners do not all press at once);
2. the fleet runs ``before`` lifetimes;
3. the power goes: every engine stops where it is and saves nothing (``Device.halt``);
4. ``outage`` seconds later the power comes back: every unit boots within
   ``boot_within`` seconds, without a synchronised clock (no RTC), and NTP sets it
   ``ntp_after`` seconds after boot (``None``: never);
5. the fleet runs ``after`` lifetimes from the moment the power came back.

The report counts the server's requests per virtual second by kind, and from the
moment the power came back: the peak and mean rate, how long until every device
held a valid access token again (``recovered_s``), errors, and grants lost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx

from . import timetravel

EPOCH = 1_790_000_000.0  # the virtual wall clock's start (2026)
#: The peak is the highest rate held for this many seconds. A fleet whose units refresh
#: independently (as they must: nothing coordinates them) has 1-second counts that scatter
#: around the mean by chance alone (about 3 square roots of it at the top), whatever its
#: jitter; what an identity provider must be sized for is the rate it is asked to hold.
#: ``peak_1s_rps`` reports the single busiest second too.
PEAK_WINDOW = 10


@dataclass
class FleetOptions:
    devices: int = 500
    lifetime: int = 600  # access-token lifetime, seconds (virtual)
    before: float = 2.0  # lifetimes run between the last pairing and the power cut
    outage: float | None = None  # seconds without power; default: two lifetimes (every token expired)
    after: float = 3.0  # lifetimes run after the power comes back
    approve_within: float = 120.0  # owners approve within this many seconds of their code
    boot_within: float = 15.0  # every unit boots within this many seconds of the power
    ntp_after: tuple[float, float] | None = (5.0, 30.0)  # NTP sets the clock this long after boot
    seed: int = 1
    state_root: Path | None = None  # default: a temporary directory (tmpfs when there is one)
    #: Each unit makes its own key, registers itself (RFC 7591) and authenticates with
    #: private_key_jwt (RFC 7523), as a unit from a factory line does (docs/identity.md).
    identity: bool = False
    dpop: bool = False  # tokens bound to the unit's key (RFC 9449)

    def client(self) -> str:
        """How the units authenticate, for the report."""
        auth = "private_key_jwt, registered (RFC 7591)" if self.identity else "public client (none)"
        return auth + (", DPoP-bound tokens" if self.dpop else "")

    def outage_s(self) -> float:
        return 2.0 * self.lifetime if self.outage is None else self.outage


@dataclass
class FleetReport:
    devices: int
    token_lifetime_s: int
    server: str
    client: str
    outage_s: float
    peak_rps: float  # the highest PEAK_WINDOW-second average
    peak_1s_rps: int
    mean_rps: float
    peak_over_mean: float
    recovered_s: float | None
    errors: int
    grants_lost: int
    requests_per_device_hour: float  # after the power came back: the spread fleet's steady load
    requests_after_cut: dict[str, int]
    rss_mib: float
    cpu_s: float
    wall_s: float
    #: What the server checked of the units' identity, over the whole run: registrations (RFC 7591),
    #: the distinct keys and serials they registered, the client assertions and DPoP proofs that
    #: passed its checks (one per signed request: the server keeps each, which adds to rss_mib).
    registrations: int = 0
    registered_keys: int = 0
    registered_serials: int = 0
    assertions_checked: int = 0
    dpop_proofs_checked: int = 0
    timeline: list[dict[str, int]] = field(repr=False, default_factory=list)  # per second, from the power's return


class RequestLog(httpx.AsyncBaseTransport):
    """Counts what reaches the server, per virtual second and kind, and its errors."""

    def __init__(self, inner: httpx.AsyncBaseTransport, clock: Any) -> None:
        self.inner, self.clock = inner, clock
        self.per_second: dict[int, Counter[str]] = defaultdict(Counter)
        self.errors: Counter[str] = Counter()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        kind = _kind(request)
        self.per_second[int(self.clock())][kind] += 1
        try:
            response = await self.inner.handle_async_request(request)
        except Exception:
            self.errors["exception"] += 1
            raise
        if response.status_code >= 500 or (response.status_code >= 400 and kind in ("refresh", "revocation")):
            self.errors[f"{kind} {response.status_code}"] += 1
        return response


def _kind(request: httpx.Request) -> str:
    path = request.url.path
    if path.startswith("/.well-known/"):
        return "discovery"
    if path.endswith("/device_authorization"):
        return "device_authorization"
    if path.endswith("/revoke"):
        return "revocation"
    if path.endswith("/register"):
        return "registration"
    if path.endswith("/token"):
        grant_type = parse_qs(request.content.decode()).get("grant_type", [""])[0]
        return "refresh" if grant_type == "refresh_token" else "device_token"
    return "other"


class Unit:
    """One device of the fleet: its state directory and key survive the power cut; its
    engine (and everything in memory) does not."""

    def __init__(self, index: int, state_dir: Path, rng: random.Random) -> None:
        self.index, self.state_dir, self.rng = index, state_dir, rng
        self.key = os.urandom(32)  # state.key: on the card, so it survives
        self.device: Any = None
        self.ntp_at: float | None = None  # when this boot's clock gets synchronised (virtual)
        self.valid_at: float | None = None  # when it held a valid access token after the power came back

    def synced(self) -> bool:
        return self.ntp_at is not None and asyncio.get_running_loop().time() >= self.ntp_at


async def run_fleet(options: FleetOptions, progress: Any = None) -> FleetReport:
    from devicelink.config import Config, PairingConfig, ProviderConfig, RefreshConfig, StorageConfig
    from devicelink.daemon import assemble
    from devicelink.identity.registration_settings import RegistrationConfig
    from devicelink.identity.settings import IdentityConfig
    from devicelink.lifecycle import HOLDS_GRANT
    from devicelink.tokens.store import EncryptedFileStore, ensure_private_dir

    from .authserver import DevServer

    say = progress or (lambda text: None)
    loop = asyncio.get_running_loop()
    started_wall, started_cpu = time.perf_counter(), time.process_time()
    rng = random.Random(options.seed)

    def wall() -> float:
        return EPOCH + loop.time()

    # The server checks assertions and proofs against the same virtual wall clock.
    server = DevServer(access_token_lifetime=options.lifetime, interval=5, clock=loop.time, wall_clock=wall,
                       registration=options.identity)
    log = RequestLog(server.serve_in_process(), loop.time)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    client = httpx.AsyncClient(transport=log, limits=limits)
    root = options.state_root or Path(tempfile.mkdtemp(prefix="devicelink-fleet-", dir=_scratch()))
    units = [Unit(i, root / f"unit-{i:05d}", random.Random(rng.random())) for i in range(options.devices)]

    def engine(unit: Unit) -> Any:
        """The unit's engine, as the daemon assembles it (daemon.assemble), on virtual time."""
        cfg = Config(
            provider=ProviderConfig(issuer=server.issuer, client_id=server.client_id, scope="openid offline_access",
                                    allow_insecure_http=True, dpop=options.dpop,
                                    client_auth="private_key_jwt" if options.identity else "none"),
            storage=StorageConfig(state_dir=unit.state_dir), pairing=PairingConfig(restart_on_expiry=10),
            refresh=RefreshConfig(min_interval=30.0), identity=IdentityConfig(serial=f"FLEET-{unit.index:05d}"),
            registration=RegistrationConfig(client_name="devicelink fleet unit") if options.identity else None)
        return assemble(cfg, EncryptedFileStore(unit.state_dir, unit.key), unit.key, key_source="file",
                        client=client, clock=loop.time, wall_clock=wall, rng=unit.rng, clock_synced=unit.synced)

    async def owner(unit: Unit) -> None:
        """Sees the code on the unit's screen, and approves it on their phone some time later."""
        await asyncio.sleep(unit.rng.uniform(0, options.approve_within))
        while unit.device.state.value != "paired":
            code = unit.device.pairing
            if code is not None:
                try:
                    server.approve(code.user_code, subject=f"owner-{unit.index}")
                except KeyError:
                    pass  # that code just expired: the next one
            await asyncio.sleep(5)

    try:
        # 1. pairing
        say(f"pairing {options.devices} devices")
        for unit in units:
            ensure_private_dir(unit.state_dir)
            unit.ntp_at = 0.0  # they were set up with the network up
            unit.device = engine(unit)
        await asyncio.gather(*(u.device.start() for u in units))
        await asyncio.gather(*(owner(u) for u in units))
        paired_at = loop.time()

        # 2. steady running
        say(f"all paired at t={paired_at:.0f} s; running {options.before:g} lifetimes")
        await asyncio.sleep(options.before * options.lifetime)

        # 3. the power cut
        cut_at = loop.time()
        say(f"power cut at t={cut_at:.0f} s")
        await asyncio.gather(*(u.device.halt() for u in units))
        loop.executor.shutdown(wait=True)  # writes under way when the power went land whole, or not at all
        loop.executor = timetravel.executor(4)
        loop.set_default_executor(loop.executor)

        # 4. the outage, and the return
        await asyncio.sleep(options.outage_s())
        back_at = loop.time()
        say(f"power back at t={back_at:.0f} s after {options.outage_s():.0f} s")

        async def boot(unit: Unit) -> None:
            await asyncio.sleep(unit.rng.uniform(0, options.boot_within))
            unit.ntp_at = (None if options.ntp_after is None else
                           loop.time() + unit.rng.uniform(*options.ntp_after))
            unit.device = engine(unit)
            await unit.device.start()

        await asyncio.gather(*(boot(u) for u in units))

        # 5. running on, watching for every unit to hold a valid token again
        end_at = back_at + options.after * options.lifetime
        pending = list(units)
        while loop.time() < end_at:
            now = loop.time()
            still = []
            for unit in pending:
                tokens = unit.device.tokens
                if tokens is not None and tokens.valid_for(0, now):
                    unit.valid_at = now
                else:
                    still.append(unit)
            pending = still
            await asyncio.sleep(1.0)
        say("done")
        for unit in units:
            await unit.device.halt()

        lost = sum(1 for u in units if u.device.tokens is None or u.device.state not in HOLDS_GRANT)
        per_second = [log.per_second.get(t, Counter()) for t in range(int(back_at), int(end_at))]
        totals = [sum(c.values()) for c in per_second]
        windows = [sum(totals[i:i + PEAK_WINDOW]) / PEAK_WINDOW for i in range(max(1, len(totals) - PEAK_WINDOW + 1))]
        peak = max(windows, default=0.0)
        mean = sum(totals) / max(1, len(totals))
        after = Counter()
        for c in per_second:
            after.update(c)
        recovered = None if pending else max(u.valid_at for u in units) - back_at
        usage = resource.getrusage(resource.RUSAGE_SELF)
        registered = server.registered_clients()
        return FleetReport(
            devices=options.devices, token_lifetime_s=options.lifetime,
            server="the development server (devicelink-sim server's app, in-process, on virtual time)",
            client=options.client(),
            outage_s=options.outage_s(), peak_rps=round(peak, 2), peak_1s_rps=max(totals, default=0),
            mean_rps=round(mean, 2),
            peak_over_mean=round(peak / mean, 2) if mean else 0.0,
            recovered_s=None if recovered is None else round(recovered, 1),
            errors=sum(log.errors.values()), grants_lost=lost,
            requests_per_device_hour=round(mean * 3600 / options.devices, 2),
            requests_after_cut=dict(sorted(after.items())),
            rss_mib=round(usage.ru_maxrss / 1024, 1), cpu_s=round(time.process_time() - started_cpu, 1),
            wall_s=round(time.perf_counter() - started_wall, 1),
            registrations=server.registrations, registered_keys=len({k for c in registered for k in c["kids"]}),
            registered_serials=len({c["device_serial"] for c in registered}),
            assertions_checked=len(server.assertions), dpop_proofs_checked=len(server.dpop_proofs),
            timeline=[{"t": t - int(back_at), **c} for t, c in zip(range(int(back_at), int(end_at)), per_second)])
    finally:
        await client.aclose()
        if options.state_root is None:
            shutil.rmtree(root, ignore_errors=True)


def _scratch() -> str | None:
    """tmpfs when there is one: ten thousand state files fsynced on an SD card or SSD would
    measure the disk. The engine's writes are the same either way."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


class _Counted(logging.Handler):
    """The engines' own log, counted by level instead of printed ten thousand times over."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[str] = Counter()
        self.first: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[record.levelname] += 1
        self.first.setdefault(record.levelname, record.getMessage())


def main(argv: list[str] | None = None) -> int:
    from .cli import _Help

    parser = argparse.ArgumentParser(
        prog="devicelink-sim fleet",
        description="Run N real device engines against the development server on virtual time: "
                    "pairing, a fleet-wide power cut, and the server's load as the fleet comes back.",
        formatter_class=_Help)
    parser.add_argument("--devices", type=_positive_int, default=FleetOptions.devices, help="how many devices")
    parser.add_argument("--lifetime", type=_positive_int, default=FleetOptions.lifetime,
                        help="access-token lifetime in (virtual) seconds")
    parser.add_argument("--outage", type=float, default=None,
                        help="seconds without power (default: two lifetimes, so every stored token has expired)")
    parser.add_argument("--before", type=float, default=FleetOptions.before,
                        help="lifetimes run between pairing and the power cut")
    parser.add_argument("--after", type=float, default=FleetOptions.after,
                        help="lifetimes run after the power comes back")
    parser.add_argument("--no-ntp", action="store_true", help="the clocks are never synchronised after the cut")
    parser.add_argument("--identity", action="store_true",
                        help="each unit makes its own key, registers itself (RFC 7591) and authenticates with "
                             "private_key_jwt, as a unit from a factory line does")
    parser.add_argument("--dpop", action="store_true", help="tokens bound to each unit's key (RFC 9449)")
    parser.add_argument("--seed", type=int, default=FleetOptions.seed, help="the run's random seed")
    parser.add_argument("--json", action="store_true", help="print one JSON object (with a per-second timeline)")
    args = parser.parse_args(argv)
    if args.outage is not None and not args.outage >= 0:
        parser.error("--outage must be 0 or more seconds")
    options = FleetOptions(devices=args.devices, lifetime=args.lifetime, outage=args.outage, before=args.before,
                           after=args.after, seed=args.seed, ntp_after=None if args.no_ntp else (5.0, 30.0),
                           identity=args.identity, dpop=args.dpop)
    counted = _Counted()
    engine_log = logging.getLogger("devicelink")
    engine_log.addHandler(counted)
    engine_log.propagate, engine_log.level = False, logging.WARNING
    logging.getLogger("devicelink_sim").setLevel(logging.ERROR)
    progress = None if args.json else (lambda text: print(f"fleet: {text}", file=sys.stderr, flush=True))
    report = timetravel.run(run_fleet(options, progress))
    if args.json:
        out = asdict(report)
        out["engine_log"] = dict(counted.counts)
        print(json.dumps(out))
        return 0
    _print(report, counted)
    return 0


def _print(r: FleetReport, counted: _Counted) -> None:
    print(f"{r.devices} devices, access tokens of {r.token_lifetime_s} s, a {r.outage_s:.0f} s power cut; "
          f"server: {r.server}; clients: {r.client}")
    print("after the power came back, requests per second (10 s rows; --json has every second):")
    rows = [r.timeline[i:i + 10] for i in range(0, len(r.timeline), 10)]
    for i, row in enumerate(rows):
        kinds: Counter[str] = Counter()
        for second in row:
            kinds.update({k: v for k, v in second.items() if k != "t"})
        top = max((sum(v for k, v in s.items() if k != "t") for s in row), default=0)
        if kinds:
            detail = " ".join(f"{k}={v}" for k, v in sorted(kinds.items()))
            print(f"  +{i * 10:>5} s  peak {top:>5}/s  {detail}")
    print(f"peak {r.peak_rps}/s (the busiest {PEAK_WINDOW} s; the busiest second: {r.peak_1s_rps}), "
          f"mean {r.mean_rps}/s: peak/mean {r.peak_over_mean}")
    print(f"every device valid again after: {'never' if r.recovered_s is None else f'{r.recovered_s} s'}")
    print(f"steady state: {r.requests_per_device_hour} requests per device per hour")
    print(f"errors {r.errors}, grants lost {r.grants_lost}, engine warnings {counted.counts.get('WARNING', 0)}, "
          f"errors logged {counted.counts.get('ERROR', 0)}")
    if r.registrations:
        print(f"identity: {r.registrations} registrations ({r.registered_keys} keys, {r.registered_serials} serials); "
              f"the server checked {r.assertions_checked} client assertions and {r.dpop_proofs_checked} DPoP proofs")
    elif r.dpop_proofs_checked:
        print(f"identity: the server checked {r.dpop_proofs_checked} DPoP proofs")
    print(f"simulator: {r.rss_mib} MiB peak RSS, {r.cpu_s} s CPU, {r.wall_s} s wall")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value
