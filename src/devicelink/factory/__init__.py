"""``devicelink factory …``: the manufacturer's tools, run on a workstation or the factory line.

- ``keys.py``: the fleet's signing key (EC P-256 or RSA, as a private JWK or PEM): made,
  read, signing and verifying JWS;
- ``statements.py``: software statements (RFC 7591 §2.3): the template, signing, reading;
- ``fleet.py``: checking a device's registration (``devicelink provision``'s output) and
  exporting serial -> client_id -> key thumbprint for a directory of them;
- ``cli.py``: the subcommands (imported by ``devicelink``'s parser; everything else only
  when a factory command runs, so ``devicelink token`` never loads any of it).

Nothing here runs on the devices; the daemon never imports it.
"""
