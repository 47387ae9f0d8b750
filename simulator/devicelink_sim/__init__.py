"""devicelink simulator: a development authorization server and friends.

`devicelink_sim.authserver.DevServer` is an RFC 8628 authorization server built
on Authlib that runs on 127.0.0.1, for tests, demos and CI. Nothing in this
package is meant for production use.

    authserver.py   DevServer: its thread, port and lifecycle; what the phone and the tests do
    app.py          the Flask app: routes, the verification page (pages.py, asking.py), /sim/*
    grants.py       Authlib's grants and endpoints, filled in (RFC 8628, 6749 §6, 7009, 8707)
    signing.py      the RS256 key, ID tokens, the JWKS
    state.py        the in-memory store, refresh-token rotation and reuse detection (records.py)
    settings.py     clients, scopes, resources, acr values
    faults.py       fault rules, switches and the request log; fault_layer.py applies them;
                    faultcli.py is ``devicelink-sim faults``
    device/         the virtual device: the real daemon on a png screen and mock pins, and its page
    cli.py          ``devicelink-sim demo`` (demo.py), ``device``, ``faults``, ``server``, ``fleet``
    devconfig.py    the daemon config that tests, benchmarks and the demo write
"""
