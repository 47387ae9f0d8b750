"""Cost of the pixel display drivers: per frame, per bus, and what loading them adds.

    .venv/bin/python bench/display_bench.py [--frames 30] [--json]
    /usr/bin/python3 bench/display_bench.py        (Bookworm's Pillow 9.4 / luma, see bench/bookworm)

Measures, with the real renderer (devicelink.display.render) and the real drivers:

* OLED (ssd1306 and sh1106, 128x64 and 128x32) over luma's real driver and a
  counting I2C bus (an smbus stand-in with ``write_i2c_block_data``, as luma's
  ``i2c(bus=...)`` takes): CPU ms per frame (render, push, both) and the bytes
  and I2C transactions per frame. The wire time at 100/400 kHz follows from the
  bytes (9 bit times per byte plus a start/address/control per transaction);
  it is printed, not measured. Target: <= 10 ms CPU for a 128x64 frame.
* framebuffer: 1920x1080 and 1280x720 at 16, 24 and 32 bpp into a regular
  file on tmpfs (/dev/shm) with fake sysfs geometry: wall and CPU ms per frame.
  Target: <= 60 ms for 1080p.
* png: 128x64 and 1280x720 into a folder.
* loading: in a fresh interpreter that has already imported what the daemon
  loads anyway (httpx, the socket server, the token store), the RSS (VmRSS from
  /proc/self/status) and wall time added by importing and opening the display
  stack, drawing the first frame and ten more, for an ssd1306 and for a 1080p
  framebuffer; and the ``-X importtime`` breakdown (the modules with the
  largest cumulative time). Target: <= 15 MB.

Every frame is a different second of the pairing countdown, so each show()
really renders and pushes (an unchanged frame is never pushed). A benchmark,
not a test: run it on an idle machine; it prints medians.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

COMPLETE = "https://example.com/device?user_code=WDJB-MJHT"
NOW = 400.0

TARGET_OLED_CPU_MS = 10.0
TARGET_FB_1080P_MS = 60.0
TARGET_RSS_MB = 15.0


class CountingBus:
    """An smbus stand-in for luma's ``i2c(bus=...)`` that counts what would go on the wire."""

    def __init__(self) -> None:
        self.transactions = 0
        self.data_bytes = 0
        self.command_bytes = 0

    def write_i2c_block_data(self, address: int, register: int, data: list[int]) -> None:
        self.transactions += 1
        if register == 0x40:
            self.data_bytes += len(data)
        else:
            self.command_bytes += len(data)

    def reset(self) -> None:
        self.transactions = self.data_bytes = self.command_bytes = 0

    def close(self) -> None:
        pass


def screen():
    from devicelink.display.base import Screen
    from devicelink.lifecycle import PairingCode, State

    return Screen(State.PAIRING, PairingCode("WDJB-MJHT", "https://example.com/device", COMPLETE, NOW + 600.5))


def time_frames(display, frames: int) -> dict[str, float]:
    """Median wall and CPU ms of show(), render and push, one new countdown second per frame."""
    from devicelink.display.render import render

    scr = screen()
    sink = display.sink
    display.show(scr, NOW + 0.1)  # warm-up: lazy imports, fonts, the QR
    walls, cpus, render_cpu, push_cpu = [], [], [], []
    for i in range(1, frames + 1):
        now = NOW + i + 0.1
        w0, c0 = time.perf_counter(), time.process_time()
        before = display.pushes
        display.show(scr, now)
        cpus.append((time.process_time() - c0) * 1e3)
        walls.append((time.perf_counter() - w0) * 1e3)
        assert display.pushes == before + 1, "the countdown did not change the frame"
        c0 = time.process_time()
        image = render(scr, sink.size, sink.mode, now)
        c1 = time.process_time()
        sink.push(image)
        c2 = time.process_time()
        render_cpu.append((c1 - c0) * 1e3)
        push_cpu.append((c2 - c1) * 1e3)
    med = statistics.median
    return {"wall_ms": med(walls), "cpu_ms": med(cpus), "render_cpu_ms": med(render_cpu),
            "push_cpu_ms": med(push_cpu)}


def bench_oled(frames: int) -> list[dict]:
    from devicelink.config import DisplayConfig
    from devicelink.display.oled import open_oled

    out = []
    for driver in ("ssd1306", "sh1106"):
        for height in (64, 32):
            bus = CountingBus()
            display = open_oled(DisplayConfig(driver=driver, height=height), bus=bus)
            bus.reset()
            display.show(screen(), NOW - 5.9)  # one frame, counted
            per_frame = {"data_bytes": bus.data_bytes, "command_bytes": bus.command_bytes,
                         "transactions": bus.transactions}
            wire = bus.data_bytes + bus.command_bytes + 2 * bus.transactions  # + address and control byte
            row = {"driver": driver, "size": f"128x{height}", **per_frame, **time_frames(display, frames),
                   "wire_ms_100khz": wire * 9 / 100e3 * 1e3, "wire_ms_400khz": wire * 9 / 400e3 * 1e3}
            display.close()
            out.append(row)
    return out


def make_fb(tmp: Path, width: int, height: int, bpp: int) -> tuple[Path, Path]:
    sysfs = tmp / "sys"
    (sysfs / "fb0").mkdir(parents=True)
    (sysfs / "fb0" / "virtual_size").write_text(f"{width},{height}\n")
    (sysfs / "fb0" / "bits_per_pixel").write_text(f"{bpp}\n")
    (sysfs / "fb0" / "stride").write_text(f"{width * bpp // 8}\n")
    dev = tmp / "fb0"
    dev.write_bytes(bytes(width * height * bpp // 8))
    return dev, sysfs


def scratch_dir() -> Path:
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="dl-display-bench-", dir=base))


def bench_framebuffer(frames: int) -> list[dict]:
    from devicelink.config import DisplayConfig
    from devicelink.display.framebuffer import open_framebuffer

    out = []
    for width, height in ((1920, 1080), (1280, 720)):
        for bpp in (16, 24, 32):
            tmp = scratch_dir()
            try:
                dev, sysfs = make_fb(tmp, width, height, bpp)
                display = open_framebuffer(DisplayConfig(driver="framebuffer", framebuffer=dev), sysfs=sysfs)
                row = {"size": f"{width}x{height}", "bpp": bpp, "bytes": width * height * bpp // 8,
                       **time_frames(display, frames)}
                display.close()
                out.append(row)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return out


def bench_png(frames: int) -> list[dict]:
    from devicelink.config import DisplayConfig
    from devicelink.display.png import open_png

    out = []
    for width, height in ((128, 64), (1280, 720)):
        tmp = scratch_dir()
        try:
            display = open_png(DisplayConfig(driver="png", png_dir=tmp, width=width, height=height))
            out.append({"size": f"{width}x{height}", "mode": display.sink.mode,
                        **time_frames(display, frames)})
            display.close()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


# What the daemon has imported before it opens the display (daemon.serve's imports).
LOAD_SCRIPT = r"""
import json, os, re, sys, time
sys.path.insert(0, sys.argv[2])
def rss_kb():
    with open("/proc/self/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))
import asyncio, logging, httpx
import devicelink.daemon, devicelink.engine, devicelink.systemd
import devicelink.ipc.server, devicelink.oauth.http, devicelink.tokens.keys, devicelink.tokens.store
base = rss_kb()
sys.stderr.write("--- display stack ---\n"); sys.stderr.flush()
t0 = time.perf_counter()
from devicelink.config import DisplayConfig
from devicelink.display.base import Screen
from devicelink.lifecycle import PairingCode, State
scenario = sys.argv[1]
if scenario == "ssd1306":
    class Bus:
        def write_i2c_block_data(self, a, r, d): pass
        def close(self): pass
    from devicelink.display.oled import open_oled
    display = open_oled(DisplayConfig(driver="ssd1306"), bus=Bus())
else:
    from pathlib import Path
    from devicelink.display.framebuffer import open_framebuffer
    display = open_framebuffer(DisplayConfig(driver="framebuffer", framebuffer=Path(sys.argv[3])),
                               sysfs=Path(sys.argv[4]))
opened = rss_kb()
t1 = time.perf_counter()
code = PairingCode("WDJB-MJHT", "https://example.com/device", "https://example.com/device?user_code=WDJB-MJHT", 1000.5)
display.show(Screen(State.PAIRING, code), 400.0)
t2 = time.perf_counter()
drawn = rss_kb()
for i in range(1, 11):  # ten more seconds of countdown: the steady state
    display.show(Screen(State.PAIRING, code), 400.0 + i)
steady = rss_kb()
print(json.dumps({"base_kb": base, "after_open_kb": opened, "after_first_frame_kb": drawn, "steady_kb": steady,
                  "open_ms": (t1 - t0) * 1e3, "first_frame_ms": (t2 - t1) * 1e3,
                  "modules": sorted(m for m in sys.modules if m.split(".")[0] in ("PIL", "luma", "segno", "smbus2"))}))
"""

IMPORTTIME = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def bench_load(python: str, scenario: str) -> dict:
    tmp = scratch_dir()
    try:
        args = [str(ROOT / "src")]
        if scenario == "framebuffer":
            dev, sysfs = make_fb(tmp, 1920, 1080, 32)
            args += [str(dev), str(sysfs)]
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        runs = [json.loads(subprocess.run([python, "-c", LOAD_SCRIPT, scenario, *args], env=env, check=True,
                                          capture_output=True, text=True).stdout) for _ in range(5)]
        timed = subprocess.run([python, "-X", "importtime", "-c", LOAD_SCRIPT, scenario, *args], env=env,
                               check=True, capture_output=True, text=True).stderr
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    after = timed.split("--- display stack ---", 1)[1]
    rows = [(int(s), int(c), len(ind), name) for s, c, ind, name in IMPORTTIME.findall(after)]
    top_level = [r for r in rows if r[2] == 1]
    med = statistics.median
    return {
        "scenario": scenario,
        "rss_added_by_open_mb": med((r["after_open_kb"] - r["base_kb"]) / 1024 for r in runs),
        "rss_added_with_first_frame_mb": med((r["after_first_frame_kb"] - r["base_kb"]) / 1024 for r in runs),
        "rss_added_steady_mb": med((r["steady_kb"] - r["base_kb"]) / 1024 for r in runs),
        "open_ms": med(r["open_ms"] for r in runs),
        "first_frame_ms": med(r["first_frame_ms"] for r in runs),
        "importtime_total_ms": sum(r[0] for r in rows) / 1e3,
        "importtime_top": [(name, cum / 1e3) for _, cum, _, name in sorted(top_level, key=lambda r: -r[1])[:8]],
        "modules": runs[0]["modules"],
    }


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0], "executable": sys.executable}
    for dist in ("pillow", "luma.core", "luma.oled", "segno"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "missing"
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=30, help="frames per driver and size (default 30)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    args = parser.parse_args()

    result = {"versions": versions(), "oled": bench_oled(args.frames), "framebuffer": bench_framebuffer(args.frames),
              "png": bench_png(max(5, args.frames // 3)),
              "load": [bench_load(sys.executable, "ssd1306"), bench_load(sys.executable, "framebuffer")]}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0

    v = result["versions"]
    print("versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if k != "executable"))
    print(f"\nOLED, luma's driver over a counting I2C bus (median of {args.frames} frames)")
    print(f"{'driver':8} {'size':7} {'cpu ms':>7} {'render':>7} {'push':>7} {'data B':>7} {'cmd B':>6} "
          f"{'i2c tx':>6} {'@100k ms':>8} {'@400k ms':>8}")
    for r in result["oled"]:
        flag = "" if r["size"] != "128x64" or r["cpu_ms"] <= TARGET_OLED_CPU_MS else "  over target"
        print(f"{r['driver']:8} {r['size']:7} {r['cpu_ms']:7.2f} {r['render_cpu_ms']:7.2f} {r['push_cpu_ms']:7.2f} "
              f"{r['data_bytes']:7d} {r['command_bytes']:6d} {r['transactions']:6d} "
              f"{r['wire_ms_100khz']:8.1f} {r['wire_ms_400khz']:8.1f}{flag}")
    print(f"  target: 128x64 frame <= {TARGET_OLED_CPU_MS:g} ms CPU")

    print(f"\nframebuffer, direct write to a file on tmpfs (median of {args.frames} frames)")
    print(f"{'size':10} {'bpp':>3} {'wall ms':>8} {'cpu ms':>7} {'render':>7} {'push':>7} {'bytes':>9}")
    for r in result["framebuffer"]:
        flag = "" if r["size"] != "1920x1080" or r["wall_ms"] <= TARGET_FB_1080P_MS else "  over target"
        print(f"{r['size']:10} {r['bpp']:3d} {r['wall_ms']:8.1f} {r['cpu_ms']:7.1f} {r['render_cpu_ms']:7.1f} "
              f"{r['push_cpu_ms']:7.1f} {r['bytes']:9d}{flag}")
    print(f"  target: 1920x1080 frame <= {TARGET_FB_1080P_MS:g} ms")

    print("\npng folder")
    for r in result["png"]:
        print(f"{r['size']:10} {r['mode']:3} {r['wall_ms']:8.1f} ms wall {r['cpu_ms']:7.1f} ms CPU "
              f"(render {r['render_cpu_ms']:.1f}, encode+write {r['push_cpu_ms']:.1f})")

    print("\nloading the display stack (fresh interpreter that already has the daemon's other imports; median of 5)")
    for r in result["load"]:
        flag = "" if r["rss_added_steady_mb"] <= TARGET_RSS_MB else "  over target"
        print(f"{r['scenario']} ({'ssd1306 128x64' if r['scenario'] == 'ssd1306' else '1920x1080, 32 bpp'})\n    RSS +{r['rss_added_by_open_mb']:.1f} MB after open, "
              f"+{r['rss_added_with_first_frame_mb']:.1f} MB after the first frame, "
              f"+{r['rss_added_steady_mb']:.1f} MB after 10 more{flag}")
        print(f"    open {r['open_ms']:.0f} ms, first frame {r['first_frame_ms']:.0f} ms; "
              f"-X importtime {r['importtime_total_ms']:.0f} ms; slowest imports (cumulative ms): "
              + ", ".join(f"{name} {ms:.1f}" for name, ms in r["importtime_top"][:5]))
        print("    loaded: " + " ".join(sorted({m.split('.')[0] for m in r["modules"]})))
    print(f"  target: <= {TARGET_RSS_MB:g} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
