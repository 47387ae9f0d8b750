"""What the registration tests share: a fleet key and its statement, and a device's config."""

from __future__ import annotations

from pathlib import Path

MANUFACTURER = "https://acme.example"
SOFTWARE_ID = "acme-tv"


def fleet(alg: str = "ES256"):
    """A fleet key and a software statement signed with it (devicelink.factory, as a manufacturer would)."""
    from devicelink.factory import keys, statements

    key = keys.generate(alg)
    return key, statements.sign(key, statements.template(software_id=SOFTWARE_ID, issuer=MANUFACTURER))


def fleet_keys(key) -> dict:
    """The public JWKS a server is configured with."""
    return {"keys": [{**key.public_jwk(), "kid": key.kid}]}


def device_config(directory: Path, issuer: str, statement: str | None, *, serial: str = "SN-0001",
                  extra: str = "", registration: str = "") -> Path:
    """A device's config for a loopback server, with ``[registration]``: no ``[provider] client_id``
    (the device gets its own), the statement in ``directory/statement.jwt``."""
    from devicelink_sim.devconfig import write_config

    directory.mkdir(parents=True, exist_ok=True)
    lines = ""
    if statement is not None:
        (directory / "statement.jwt").write_text(statement + "\n")
        lines = 'software_statement_file = "statement.jwt"\n'
    path = write_config(directory, issuer, "", scope="openid profile offline_access",
                        extra=f'client_auth = "private_key_jwt"\n{extra}\n[identity]\nserial = "{serial}"\n\n'
                              f"[registration]\n{lines}{registration}")
    path.write_text(path.read_text().replace('client_id = ""\n', ""))
    return path
