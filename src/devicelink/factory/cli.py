"""``devicelink factory COMMAND``: keygen, template, sign, verify, export (docs/identity.md).

Only the parser is built here when ``devicelink`` starts (``devicelink token`` does
not even do that); what a command needs is imported when it runs. Exit codes: 0
done; 1 a check failed (``verify``) or a file is unusable; 2 usage; 6 the server
could not be asked (``verify --registration-access-token-file``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

EXIT_FAILED, EXIT_UPSTREAM = 1, 6


def add_factory_command(sub: Any, formatter: type) -> None:
    factory = sub.add_parser("factory", help="the manufacturer's tools: fleet key, software statements, verify, export",
                             formatter_class=formatter,
                             description="Tools for the manufacturer, run at the factory, not on the devices: make "
                             "the fleet's signing key and a software-statement template, sign statements, check a "
                             "device's registration, export the fleet's identities (docs/identity.md).")
    tools = factory.add_subparsers(dest="tool", required=True, metavar="TOOL")

    keygen = tools.add_parser("keygen", formatter_class=formatter, help="make the fleet's signing key",
                              description="Make the fleet's signing key at KEY_FILE (mode 0600, never over an "
                              "existing file) and print its public JWKS, for the authorization server.")
    keygen.add_argument("key_file", type=Path, metavar="KEY_FILE")
    keygen.add_argument("--alg", choices=("ES256", "RS256"), default="ES256", help="EC P-256 or RSA 2048")
    keygen.add_argument("--format", choices=("jwk", "pem"), default="jwk", help="how the private key is written")

    template = tools.add_parser("template", formatter_class=formatter, help="print a software-statement template",
                                description="Print a software-statement template (JSON client metadata) to edit "
                                "and sign: software_id, software_version, client_name, grant_types, "
                                "token_endpoint_auth_method, scope, no redirect URIs.")
    template.add_argument("--software-id", help="keep one per model for its whole life (default: a new UUID)")
    template.add_argument("--software-version", default="1.0.0")
    template.add_argument("--client-name", default="devicelink device")
    template.add_argument("--scope", default="openid profile offline_access", help="'' for none")
    template.add_argument("--iss", help="the manufacturer (the statement's issuer), e.g. https://acme.example")
    template.add_argument("--client-credentials", action="store_true",
                          help="allow client_credentials too (device-level tokens)")

    sign = tools.add_parser("sign", formatter_class=formatter, help="sign a software statement",
                            description="Sign TEMPLATE with the fleet key and print the software statement (a "
                            "JWT: the template's claims with iss, iat, jti and, with --expires-in, exp).")
    sign.add_argument("template", type=Path, metavar="TEMPLATE")
    sign.add_argument("--key", type=Path, required=True, metavar="KEY_FILE", help="the fleet's private key")
    sign.add_argument("--iss", help="the manufacturer (default: the template's iss)")
    sign.add_argument("--expires-in", type=_days, metavar="DAYS", help="set exp this many days ahead")
    sign.add_argument("--device", type=Path, metavar="PROVISION_JSON",
                      help="bind the statement to one unit: its serial and key thumbprint (cnf.jkt)")

    verify = tools.add_parser("verify", formatter_class=formatter, help="check a device's registration",
                              description="Check one device's `devicelink provision` output: key and thumbprint "
                              "agree, it is registered (at --issuer), its proof is signed by its own key; with "
                              "--statement (and --fleet-key), that the statement verifies and names the "
                              "software_id it registered with; with a registration access token, that the server "
                              "still knows the client and holds its key (RFC 7592).")
    verify.add_argument("device", type=Path, metavar="PROVISION_JSON")
    verify.add_argument("--issuer", help="the authorization server it must be registered at")
    verify.add_argument("--statement", type=Path, metavar="JWT_FILE", help="the software statement in its image")
    verify.add_argument("--fleet-key", type=Path, metavar="KEY_FILE",
                        help="the fleet's public (or private) key, a JWK, JWKS or PEM")
    verify.add_argument("--registration-access-token-file", type=Path, metavar="FILE",
                        help="a registration access token for the client: ask the server (RFC 7592 read)")
    verify.add_argument("--allow-insecure-http", action="store_true", help="http:// to a loopback server")
    verify.add_argument("--json", action="store_true", help="print the checks as a JSON list")

    export = tools.add_parser("export", formatter_class=formatter, help="list serial -> client_id -> key thumbprint",
                              description="Read every *.json in DIRECTORY (devices' `devicelink provision` "
                              "outputs) and print serial, client_id, key thumbprint (kid), issuer, software_id, "
                              "software_version, registered_at, registration_client_uri, file; sorted by serial. "
                              "Files that are not registered devices, and repeated serials, client_ids or keys, "
                              "are named on stderr (exit 1).")
    export.add_argument("directory", type=Path, metavar="DIRECTORY")
    export.add_argument("--format", choices=("csv", "json"), default="csv")
    export.add_argument("--out", type=Path, metavar="FILE", help="write there instead of stdout")


def _days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of days, got {text!r}") from None
    if not 0 < value <= 36500:
        raise argparse.ArgumentTypeError(f"expected 0 to 36500 days, got {text}")
    return value


def run(args: argparse.Namespace) -> int:
    import json

    from devicelink.factory import keys

    try:
        if args.tool == "keygen":
            key = keys.generate(args.alg)
            try:
                keys.write_new(key, args.key_file, args.format)
            except FileExistsError:
                return _fail(f"{args.key_file} exists: a fleet key is never replaced here (every statement "
                             "signed with it would stop verifying); choose another path", EXIT_FAILED)
            print(json.dumps({"keys": [{**key.public_jwk(), "kid": key.kid, "alg": key.alg, "use": "sig"}]},
                             indent=2))
            return 0
        if args.tool == "template":
            from devicelink.factory.statements import template

            print(json.dumps(template(software_id=args.software_id, software_version=args.software_version,
                                      client_name=args.client_name, scope=args.scope or None,
                                      client_credentials=args.client_credentials, issuer=args.iss), indent=2))
            return 0
        if args.tool == "sign":
            return _sign(args)
        if args.tool == "verify":
            return _verify(args)
        return _export(args)
    except (ValueError, OSError) as exc:
        return _fail(str(exc), EXIT_FAILED)


def _sign(args: argparse.Namespace) -> int:
    from devicelink.factory import keys, statements

    key = keys.load(args.key)
    claims = statements.check_template(statements.read_json(args.template), str(args.template))
    device = statements.read_json(args.device) if args.device else None
    lifetime = args.expires_in * 86400 if args.expires_in else None
    print(statements.sign(key, claims, issuer=args.iss, lifetime=lifetime, device=device))
    return 0


def _verify(args: argparse.Namespace) -> int:
    import json

    from devicelink.errors import DeviceLinkError
    from devicelink.factory import fleet, keys, statements

    device = statements.read_json(args.device)
    if not isinstance(device, dict):
        return _fail(f"{args.device}: not a devicelink provision output (a JSON object)", EXIT_FAILED)
    statement = args.statement.read_text().strip() if args.statement else None
    fleet_keys = keys.public_keys(args.fleet_key) if args.fleet_key else None
    server = None
    if args.registration_access_token_file:
        token = args.registration_access_token_file.read_text().strip()
        try:
            server = fleet.read_server(device, token, args.allow_insecure_http)
        except DeviceLinkError as exc:
            return _fail(f"cannot ask the server: {exc}", EXIT_UPSTREAM)
    checks = fleet.verify(device, issuer=args.issuer, statement=statement, fleet_keys=fleet_keys, server=server)
    if args.json:
        print(json.dumps([{"ok": c.ok, "check": c.what} for c in checks], indent=2))
    else:
        print("\n".join(c.line() for c in checks))
    return 0 if all(c.ok for c in checks) else EXIT_FAILED


def _export(args: argparse.Namespace) -> int:
    from devicelink.factory import fleet

    if not args.directory.is_dir():
        return _fail(f"{args.directory}: not a directory", EXIT_FAILED)
    found, problems = fleet.rows(args.directory)
    text = fleet.to_csv(found) if args.format == "csv" else fleet.to_json(found)
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    for problem in problems:
        sys.stderr.write(f"devicelink factory export: {problem}\n")
    return EXIT_FAILED if problems else 0


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"devicelink factory: {message}\n")
    return code
