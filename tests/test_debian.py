"""What the Debian package is built from agrees with the project (docs/debian.md).

The package itself is built and tested by .ci/deb (a clean Bookworm root under
systemd); these are the quick checks that catch drift in the suite.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from devicelink import cli, config, paths

ROOT = Path(__file__).resolve().parent.parent


def test_the_changelog_is_at_the_project_version():
    """scripts/build-deb refuses to build otherwise: bump both together."""
    top = (ROOT / "debian/changelog").read_text().splitlines()[0]
    match = re.match(r"devicelink \(([^)]+)\) ", top)
    assert match, top
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert re.split(r"[-~+]", match.group(1))[0] == project


def test_the_example_config_is_valid():
    example = ROOT / "docs/examples/config.toml"
    cfg = config.parse(config.read_toml(example), Path(paths.CONFIG_PATH))
    assert cfg.provider.client_id and str(cfg.storage.state_dir) == "/var/lib/devicelink"


def test_the_units_wait_for_the_default_config():
    """Nothing starts, and nothing fails, on a device whose config is not written yet."""
    for unit in ("devicelink.service", "devicelink.socket"):
        lines = (ROOT / "systemd" / unit).read_text().splitlines()
        assert f"ConditionPathExists={paths.CONFIG_PATH}" in lines, unit


def complete(script: str, *words: str, cwd: Path = ROOT) -> list[str]:
    """What bash offers for ``devicelink WORDS...`` (the last word is the one being completed)."""
    quoted = " ".join("'" + w.replace("'", "'\\''") + "'" for w in ("devicelink", *words))
    run = f'{script}\nCOMP_WORDS=({quoted}); COMP_CWORD={len(words)}; _devicelink; printf "%s\\n" "${{COMPREPLY[@]}}"'
    out = subprocess.run(["bash", "-c", run], check=True, capture_output=True, text=True, cwd=cwd).stdout
    return [line for line in out.splitlines() if line]


def test_the_bash_completion_knows_every_command_option_and_choice(tmp_path):
    script = subprocess.run([sys.executable, str(ROOT / "scripts/completion")], check=True, capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")}).stdout
    commands = next(a for a in cli.build_parser()._actions if a.__class__.__name__ == "_SubParsersAction").choices
    assert complete(script, "") == list(commands)  # every command, factory included
    assert complete(script, "--config", "/etc/x.toml", "re") == ["rekey"]  # an option's value is skipped
    assert complete(script, "rekey", "--to", "") == ["file", "credential"]
    assert complete(script, "rekey", "--seal", "host") == ["host", "host+tpm2"]
    assert complete(script, "token", "--") == ["--config", "--device", "--help", "--min-ttl", "--resource", "--scope"]
    assert complete(script, "token", "--scope", "") == []  # a free value: nothing to offer
    assert complete(script, "factory", "") == ["keygen", "template", "sign", "verify", "export"]
    assert complete(script, "factory", "keygen", "--format", "") == ["jwk", "pem"]  # the same option,
    assert complete(script, "factory", "export", "--format", "") == ["csv", "json"]  # each command's choices
    (tmp_path / "fleet key.jwk").write_text("{}")
    assert complete(script, "factory", "sign", "--key", "fle", cwd=tmp_path) == ["fleet key.jwk"]  # paths
    assert complete(script, "factory", "verify", "fl", cwd=tmp_path) == ["fleet key.jwk"]  # positional paths
    assert complete(script, "--config", "fl", cwd=tmp_path) == ["fleet key.jwk"]


def test_the_man_page_has_every_command():
    page = subprocess.run([sys.executable, str(ROOT / "scripts/manpage")], check=True, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src"), "SOURCE_DATE_EPOCH": "0"}).stdout
    assert page.startswith('.TH DEVICELINK 8 "1970-01-01"')
    commands = next(a for a in cli.build_parser()._actions if a.__class__.__name__ == "_SubParsersAction").choices
    for name in commands:
        assert f'.SS "{name}"' in page, name
    assert "\\fB\\-\\-min\\-ttl\\fR" in page
