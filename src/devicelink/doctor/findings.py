"""The findings ``doctor`` prints, and the names it gives to ids and modes."""

from __future__ import annotations

import grp
import os
import pwd
import stat
from typing import NamedTuple

OK, WARN, FAIL = "ok", "warn", "fail"
AS_ROOT = "run doctor as root or as the daemon's user (sudo devicelink doctor) to check it"

#: The exit code of a failed check (docs/cli.md); any other check's failure is 1.
EXIT_FOR_CHECK = {"config": 78, "policy": 78, "socket": 5, "daemon": 5, "server": 6}


class Finding(NamedTuple):
    level: str  # ok | warn | fail
    check: str  # config, policy, key, state, clock, socket, daemon, server, display, gpio
    what: str
    fix: str = ""

    def line(self) -> str:
        label = "FAIL" if self.level == FAIL else self.level
        return f"{label:<4}  {self.check}: {self.what}" + (f" — {self.fix}" if self.fix else "")

    def as_json(self) -> dict[str, str | None]:
        return {"check": self.check, "level": self.level, "message": self.what, "fix": self.fix or None}


def exit_code(findings: list[Finding]) -> int:
    for f in findings:
        if f.level == FAIL:
            return EXIT_FOR_CHECK.get(f.check, 1)
    return 0


def mode_of(st: os.stat_result) -> str:
    return f"{stat.S_IMODE(st.st_mode):04o}"


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
