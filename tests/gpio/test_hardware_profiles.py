"""Every profile in hardware/ is a config snippet the daemon accepts, with the documented values.

For each ``hardware/*/profile.toml``: merged with a minimal ``[provider]`` it passes
``config.parse`` and ``config.load``; its values are the ones this file expects (the
documented ones); its README shows exactly that snippet; and the README's wiring
table agrees with the Raspberry Pi header, the snippet's pins and the bus it names.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from devicelink import config

HARDWARE = Path(__file__).resolve().parents[2] / "hardware"
PROFILES = sorted(p.parent.name for p in HARDWARE.glob("*/profile.toml"))

PROVIDER = """\
[provider]
issuer = "https://id.example.com"
client_id = "devicelink-test"
"""

GPIO = {"led": 17, "button": 27, "hold_seconds": 10.0}

#: The documented values: what each profile's README promises.
EXPECTED = {
    "zero2w-ssd1306-i2c": {
        "display": {"driver": "ssd1306", "width": 128, "height": 64, "i2c_port": 1, "i2c_address": 0x3C},
        "gpio": GPIO,
        "config_txt": ["dtparam=i2c_arm=on"],
        "groups": {"i2c", "gpio"},
        "bus": {"SDA": 2, "SCL": 3},
    },
    "pi-hdmi-tv": {
        "display": {"driver": "framebuffer", "framebuffer": Path("/dev/fb0")},
        "gpio": GPIO,
        "config_txt": ["hdmi_force_hotplug=1", "dtoverlay=vc4-kms-v3d"],
        "groups": {"video", "gpio"},
        "bus": {},
    },
    "sh1106-spi": {
        # D/C 24 and reset 25 are luma's defaults, which the display driver keeps.
        "display": {"driver": "sh1106", "width": 128, "height": 64, "spi_port": 0, "spi_device": 0},
        "gpio": GPIO,
        "config_txt": ["dtparam=spi=on"],
        "groups": {"spi", "gpio"},
        "bus": {"MOSI": 10, "SCLK": 11, "CS": 8, "DC": 24, "RST": 25},
    },
}

#: The 40-pin header: physical pin -> BCM GPIO number, or the power rail.
HEADER: dict[int, int | str] = {
    1: "3V3", 2: "5V", 3: 2, 4: "5V", 5: 3, 6: "GND", 7: 4, 8: 14, 9: "GND", 10: 15,
    11: 17, 12: 18, 13: 27, 14: "GND", 15: 22, 16: 23, 17: "3V3", 18: 24, 19: 10, 20: "GND",
    21: 9, 22: 25, 23: 11, 24: 8, 25: "GND", 26: 7, 27: 0, 28: 1, 29: 5, 30: "GND",
    31: 6, 32: 12, 33: 13, 34: "GND", 35: 19, 36: 16, 37: 26, 38: 20, 39: "GND", 40: 21,
}


def read_profile(name: str) -> tuple[str, dict]:
    text = (HARDWARE / name / "profile.toml").read_text()
    return text, tomllib.loads(text)


def wiring(name: str) -> list[dict[str, str]]:
    """The rows of the README's wiring table, keyed by its header cells."""
    lines = (HARDWARE / name / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| Signal |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (c.strip() for c in line.strip("|").split("|")))))
    return rows


def test_every_profile_is_expected_and_listed():
    assert PROFILES == sorted(EXPECTED)
    index = (HARDWARE / "README.md").read_text()
    for name in PROFILES:
        assert f"]({name}/)" in index, f"hardware/README.md does not link {name}"


@pytest.mark.parametrize("name", PROFILES)
def test_profile_parses_with_the_documented_values(name):
    _, raw = read_profile(name)
    assert set(raw) == {"display", "gpio"}, "a profile holds the [display] and [gpio] sections only"
    cfg = config.parse({**tomllib.loads(PROVIDER), **raw}, HARDWARE / name / "config.toml")
    expected = EXPECTED[name]
    defaults = config.DisplayConfig()
    for key in vars(defaults):
        want = expected["display"].get(key, getattr(defaults, key))
        assert getattr(cfg.display, key) == want, f"[display] {key}"
    assert cfg.gpio == config.GpioConfig(**expected["gpio"])


@pytest.mark.parametrize("name", PROFILES)
def test_profile_loads_as_a_config_file(name, tmp_path):
    text, raw = read_profile(name)
    path = tmp_path / "config.toml"
    path.write_text(PROVIDER + "\n" + text)
    loaded = config.load(path)
    parsed = config.parse({**tomllib.loads(PROVIDER), **raw}, path)
    assert loaded == parsed


@pytest.mark.parametrize("name", PROFILES)
def test_readme_shows_exactly_the_snippet(name):
    text, _ = read_profile(name)
    readme = (HARDWARE / name / "README.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", readme, re.S)
    assert text in blocks, f"{name}/README.md must show profile.toml verbatim in a ```toml block"


@pytest.mark.parametrize("name", PROFILES)
def test_readme_names_config_txt_lines_and_groups(name):
    readme = (HARDWARE / name / "README.md").read_text()
    for line in EXPECTED[name]["config_txt"]:
        assert re.search(rf"^{re.escape(line)}$", readme, re.M), f"config.txt line {line!r}"
    groups = set(re.search(r"SupplementaryGroups=([a-z0-9 ]+)", readme).group(1).split())
    assert groups == EXPECTED[name]["groups"]
    assert f"usermod -aG {','.join(sorted(groups, key=lambda g: g == 'gpio'))}" in readme


@pytest.mark.parametrize("name", PROFILES)
def test_wiring_table_matches_the_header_and_the_snippet(name):
    rows = wiring(name)
    _, raw = read_profile(name)
    by_signal = {row["Signal"]: row for row in rows}
    used: dict[int, str] = {}
    for row in rows:
        physical, bcm = int(row["Pi pin (physical)"]), row["BCM"]
        rail = HEADER[physical]
        if bcm == "—":
            assert isinstance(rail, str), f"{row['Signal']}: pin {physical} is GPIO{rail}, not a power pin"
            assert rail == ("GND" if "GND" in row["Signal"] else "3V3"), \
                f"{row['Signal']} on pin {physical} ({rail}): modules run on 3.3 V, grounds go to GND"
        else:
            assert rail == int(bcm), f"{row['Signal']}: physical pin {physical} is {rail}, not BCM {bcm}"
        if isinstance(rail, int):
            assert physical not in used, f"pin {physical} wired twice ({used.get(physical)}, {row['Signal']})"
            used[physical] = row["Signal"]
    assert int(by_signal["LED"]["BCM"]) == raw["gpio"]["led"]
    assert int(by_signal["Button"]["BCM"]) == raw["gpio"]["button"]
    assert HEADER[int(by_signal["LED GND"]["Pi pin (physical)"])] == "GND"
    assert HEADER[int(by_signal["Button GND"]["Pi pin (physical)"])] == "GND"
    for signal, bcm in EXPECTED[name]["bus"].items():
        assert int(by_signal[signal]["BCM"]) == bcm, signal
    # The LED and button stay off every pin the screen's bus needs.
    assert not {raw["gpio"]["led"], raw["gpio"]["button"]} & set(EXPECTED[name]["bus"].values())
