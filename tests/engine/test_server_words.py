"""Issue 10 item 13, "the server's words": an authorization server's ``error_description``
reaches ``last_error`` (and so ``devicelink status``, and the errors ``token`` and ``pair``
print), quoted, as one clean line of at most 200 characters, with any secret we sent blanked.

The engine against the fake server (tests/support/fake_server.py) through the real
``OAuthHttp``: what the driver knows of the request it sent is part of what is tested.
"""

from __future__ import annotations

import unicodedata

from devicelink.ipc.routes import ApiError, TokenQuery
from devicelink.lifecycle import State
from tests.engine.test_engine_fake import Bench, refused, run
from tests.helpers import shaped

REFUSAL = {"error": "unauthorized_client", "error_description": "device_code is not allowed for this client"}


def test_a_refused_pairing_says_what_the_server_said(tmp_path):
    async def main():
        bench = Bench(tmp_path)
        bench.fake.fail_next(1, 400, at="device_authorization", body=REFUSAL)
        device = bench.device()
        await device.start()
        await bench.states.wait(State.UNPAIRED)
        status = shaped(device.status())
        assert status["last_error"] == ('the authorization server refused the device authorization request: '
                                        'unauthorized_client ("device_code is not allowed for this client")')
        assert await refused(device.token(TokenQuery())) == "not_paired"
        await bench.close(device)

    run(main())


def test_a_hostile_description_is_one_clean_capped_line_in_last_error(tmp_path):
    """Line breaks (a forged log line), ESC (a terminal's screen), bidi, 10 KB."""
    async def main():
        bench = Bench(tmp_path)
        hostile = "bad\r\nFORGED devicelink: paired as admin\x1b[2J\u202e" + "A" * 10_240
        bench.fake.fail_next(1, 403, at="device_authorization", body={"error": "access_denied",
                                                                       "error_description": hostile})
        device = bench.device()
        await device.start()
        await bench.states.wait(State.UNPAIRED)
        last_error = shaped(device.status())["last_error"]
        assert all(unicodedata.category(c)[0] != "C" for c in last_error)  # no line break, ESC or bidi
        assert last_error.startswith('the authorization server refused the device authorization request: '
                                     'access_denied ("bad FORGED devicelink: paired as admin[2JAAA')
        assert len(last_error) < 300 and last_error.endswith('A…")')
        await bench.close(device)

    run(main())


def test_a_refused_refresh_names_the_reason_and_blanks_the_token_it_echoes(tmp_path):
    """Spring Security's "Invalid refresh token: <the token>": the token is blanked before it
    reaches last_error, the log, or the error `devicelink token` prints."""
    async def main():
        bench = Bench(tmp_path)
        device = await bench.paired()
        rt = device.tokens.refresh_token
        bench.fake.fail_next(1, 400, at="refresh", body={"error": "invalid_grant",
                                                         "error_description": f"Invalid refresh token: {rt}"})
        await device.refresh()
        assert device.state is State.REAUTH_REQUIRED
        last_error = shaped(device.status())["last_error"]
        assert last_error == ('the authorization server rejected the refresh token: '
                              'invalid_grant ("Invalid refresh token: [redacted]"); pair again')
        try:
            await device.token(TokenQuery())
        except Exception as exc:  # what the socket answers, and `devicelink token` prints
            answer = ApiError.of(exc)
        assert answer.code == "reauth_required" and 'invalid_grant ("Invalid refresh token: [redacted]")' \
            in answer.description and rt not in answer.description
        await bench.close(device)

    run(main())
