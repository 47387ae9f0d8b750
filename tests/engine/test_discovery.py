"""Issue 10 item 13: discovery is reused, not asked before every new code.

The engine against the fake server (tests/support/fake_server.py) on one FakeClock: the
document is kept for the process's life and in ``state_dir/discovery.json`` across
restarts while it is younger than its max age; an old one, another issuer's, or a file
that is not ours is fetched again; a kept one whose device authorization endpoint has
moved is fetched again once.
"""

from __future__ import annotations

import json
import logging
import os
import stat

import pytest

from devicelink.engine.discovery import FILE
from devicelink.lifecycle import State
from devicelink.oauth.metadata import KEPT, Discovered
from tests.engine.test_engine_fake import Bench, run
from tests.support.fake_server import ISSUER

DAY = 24 * 3600


def discoveries(bench: Bench) -> int:
    return len(bench.fake.requests("discovery"))


def kept(bench: Bench) -> dict:
    return json.loads((bench.state_dir / FILE).read_bytes())


async def restarted(bench: Bench, device, **provider):
    """``device`` stopped, and a new one on the same state directory showing a code."""
    await device.stop()
    for code in bench.fake.pending_user_codes():  # the old device's code is nobody's now
        bench.fake.expire(code)
    again, _ = await bench.showing_a_code(**provider)
    return again


def test_a_second_code_in_one_process_asks_no_discovery(tmp_path, caplog):
    async def main():
        bench = Bench(tmp_path)
        device, _ = await bench.showing_a_code()
        await device.pair()  # a new code now (the button; `devicelink pair`)
        assert device.pairing is not None and len(bench.fake.requests("device_authorization")) == 2
        assert discoveries(bench) == 1
        bench.fake.approve(device.pairing.user_code)
        await bench.next_poll()
        await bench.states.wait(State.PAIRED)
        await device.unpair()  # unpairing keeps the document: it is the server's, not the owner's
        await device.pair()
        assert device.pairing is not None and discoveries(bench) == 1
        await bench.close(device)

    with caplog.at_level(logging.INFO, logger="devicelink.engine.discovery"):
        run(main())
    assert "using discovery from 5 s ago" in caplog.messages


def test_a_restart_reuses_the_document_while_it_is_fresh(tmp_path, caplog):
    async def main():
        bench = Bench(tmp_path)
        device, _ = await bench.showing_a_code()
        fetched_at = bench.wall()
        record = kept(bench)
        assert record["issuer"] == ISSUER and record["fetched_at"] == fetched_at and record["max_age"] == DAY
        assert record["metadata"]["device_authorization_endpoint"] == f"{ISSUER}/device"
        assert stat.S_IMODE(os.stat(bench.state_dir / FILE).st_mode) == 0o600
        bench.clock.now += 5 * 3600
        again = await restarted(bench, device)
        assert discoveries(bench) == 1 and len(bench.fake.requests("device_authorization")) == 2
        assert again.endpoints.revocation_auth_methods == ("none",)  # carried for pairing's checks
        await bench.close(again)

    with caplog.at_level(logging.INFO, logger="devicelink.engine.discovery"):
        run(main())
    assert "using discovery from 5 h 0 min ago" in caplog.messages


def test_an_old_document_is_fetched_again_in_the_process_and_after_a_restart(tmp_path):
    async def main():
        bench = Bench(tmp_path)
        device, _ = await bench.showing_a_code()
        bench.clock.now += DAY + 1
        await device.pair()
        assert discoveries(bench) == 2 and kept(bench)["fetched_at"] == bench.wall()
        bench.clock.now += DAY + 1
        again = await restarted(bench, device)
        assert discoveries(bench) == 3 and kept(bench)["fetched_at"] == bench.wall()
        await bench.close(again)

    run(main())


@pytest.mark.parametrize(("cache_control", "reused_after", "fetched_after"), [
    ("public, max-age=7200", 7199, 7200),  # Google: honoured when shorter than a day
    ("max-age=15, stale-while-revalidate=15", 3599, 3600),  # Auth0: not more often than hourly
    ("no-cache, no-store", 3599, 3600),
    ('max-age="604800"', DAY - 1, DAY),  # never longer than a day
])
def test_cache_control_shortens_the_max_age_down_to_an_hour(tmp_path, cache_control, reused_after, fetched_after):
    async def main():
        bench = Bench(tmp_path)
        bench.fake.metadata_headers = {"cache-control": cache_control}
        device, _ = await bench.showing_a_code()
        bench.clock.now += reused_after
        await device.pair()
        assert discoveries(bench) == 1
        bench.clock.now += fetched_after - reused_after
        again = await restarted(bench, device)
        assert discoveries(bench) == 2
        await bench.close(again)

    run(main())


def test_a_wall_clock_set_back_fetches_again(tmp_path):
    """A board without an RTC boots at an older time: a document "from the future" is not trusted."""
    async def main():
        bench = Bench(tmp_path)
        device, _ = await bench.showing_a_code()
        record = kept(bench)
        (bench.state_dir / FILE).write_text(json.dumps({**record, "fetched_at": record["fetched_at"] + 60}))
        again = await restarted(bench, device)
        assert discoveries(bench) == 2
        await bench.close(again)

    run(main())


def test_another_issuers_document_is_not_used(tmp_path, caplog):
    async def main():
        bench = Bench(tmp_path)
        other = Discovered("https://other.example", {"device_authorization_endpoint": "https://other.example/device",
                                                     "token_endpoint": "https://other.example/token"}, bench.wall())
        (bench.state_dir / FILE).write_text(json.dumps(other.to_record()))
        os.chmod(bench.state_dir / FILE, 0o600)
        device, _ = await bench.showing_a_code()
        assert discoveries(bench) == 1 and device.endpoints.device_authorization_endpoint == f"{ISSUER}/device"
        assert kept(bench)["issuer"] == ISSUER  # replaced by this issuer's
        await bench.close(device)

    with caplog.at_level(logging.INFO, logger="devicelink.engine.discovery"):
        run(main())
    assert any("another issuer's document" in line for line in caplog.messages)


def test_endpoints_in_the_config_win_over_a_kept_document(tmp_path):
    async def main():
        bench = Bench(tmp_path)
        device, _ = await bench.showing_a_code()
        configured = f"{ISSUER}/token?configured"  # the fake server routes by path
        again = await restarted(bench, device, token_endpoint=configured)
        assert discoveries(bench) == 1 and again.endpoints.token_endpoint == configured
        bench.fake.approve(again.pairing.user_code)
        await bench.next_poll()
        await bench.states.wait(State.PAIRED)
        await bench.close(again)

    run(main())


def _valid_record(bench: Bench) -> bytes:
    """A fresh record of this issuer naming endpoints that are not the server's."""
    evil = Discovered(ISSUER, {"device_authorization_endpoint": f"{ISSUER}/evil-device",
                               "token_endpoint": f"{ISSUER}/evil-token"}, bench.wall())
    return json.dumps(evil.to_record()).encode()


def _symlink(bench: Bench) -> None:
    target = bench.state_dir.parent / f"{bench.state_dir.name}-elsewhere.json"
    target.write_bytes(_valid_record(bench))
    os.symlink(target, bench.state_dir / FILE)


def _writable_by_others(bench: Bench) -> None:
    (bench.state_dir / FILE).write_bytes(_valid_record(bench))
    os.chmod(bench.state_dir / FILE, 0o666)


def _garbage(bench: Bench) -> None:
    (bench.state_dir / FILE).write_bytes(b"\x00\xffnot json{")


def _not_a_record(bench: Bench) -> None:
    record = json.loads(_valid_record(bench))
    (bench.state_dir / FILE).write_text(json.dumps({**record, "metadata": {"token_endpoint": 42}}))


def _huge(bench: Bench) -> None:
    (bench.state_dir / FILE).write_bytes(b" " * (1 << 20) + _valid_record(bench))


def _a_directory(bench: Bench) -> None:
    (bench.state_dir / FILE).mkdir()


@pytest.mark.parametrize("plant", [_symlink, _writable_by_others, _garbage, _not_a_record, _huge, _a_directory])
def test_a_planted_or_broken_file_is_ignored_with_a_warning_and_discovery_asked(tmp_path, caplog, plant):
    async def main():
        bench = Bench(tmp_path / "state")
        bench.state_dir.mkdir()
        plant(bench)
        device, _ = await bench.showing_a_code()  # never fatal
        assert discoveries(bench) == 1 and device.endpoints.device_authorization_endpoint == f"{ISSUER}/device"
        if plant is not _a_directory:  # replaced by a file of our own; a symlink's target untouched
            assert not (bench.state_dir / FILE).is_symlink() and kept(bench)["metadata"] == {
                k: v for k, v in bench.fake.metadata().items() if k in KEPT}
        if plant is _symlink:
            assert b"evil-device" in (tmp_path / "state-elsewhere.json").read_bytes()
        await bench.close(device)

    with caplog.at_level(logging.WARNING, logger="devicelink.engine.discovery"):
        run(main())
    assert any(FILE in record.getMessage() for record in caplog.records if record.levelno == logging.WARNING)


def test_a_kept_document_whose_endpoint_moved_is_fetched_again_once(tmp_path):
    async def main():
        bench = Bench(tmp_path)
        device, _ = await bench.showing_a_code()
        bench.fake.move("device_authorization", "/v2/device")
        again = await restarted(bench, device)  # the kept document names /device: 404, then asked again
        assert discoveries(bench) == 2 and again.endpoints.device_authorization_endpoint == f"{ISSUER}/v2/device"
        assert [(s.kind, s.status) for s in bench.fake.seen if "device" in s.kind] == [
            ("device_authorization", 200), ("/device", 404), ("device_authorization", 200)]
        assert kept(bench)["metadata"]["device_authorization_endpoint"] == f"{ISSUER}/v2/device"

        bench.fake.fail_next(2, 404, at="device_authorization")  # gone even after asking again: no loop
        await again.pair()
        assert again.state is State.UNPAIRED and discoveries(bench) == 3
        assert "/v2/device answered 404" in again.last_error
        bench.fake.fail_next(1, 404, at="device_authorization")  # a document just fetched is not asked again
        bench.clock.now += DAY + 1
        await again.pair()
        assert again.state is State.UNPAIRED and discoveries(bench) == 4
        await bench.close(again)

    run(main())
