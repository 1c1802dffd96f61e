"""Scenario knobs: one table, exposed as Locust custom arguments and environment variables.

Precedence is Locust's: command line, then environment variable, then default.
The web UI shows them too, so a run started there can be tuned the same way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Setting:
    flag: str
    env: str
    type: type
    default: Any
    help: str

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


SETTINGS = (
    Setting(
        "--chat-groups",
        "LOADTEST_GROUPS",
        int,
        10,
        "groups lt-g0..lt-g<N-1> the scenarios use (created on first join)",
    ),
    Setting("--chat-join", "LOADTEST_JOIN", int, 3, "groups each chatty or lurker user joins"),
    Setting(
        "--chat-rate",
        "LOADTEST_CHAT_RATE",
        float,
        1.0,
        "public messages per second per chatty user",
    ),
    Setting(
        "--private-rate",
        "LOADTEST_PRIVATE_RATE",
        float,
        1.0,
        "private messages per second per private user",
    ),
    Setting(
        "--churn-pause",
        "LOADTEST_CHURN_PAUSE",
        float,
        2.0,
        "mean seconds a churn user waits between sessions",
    ),
    Setting(
        "--msg-size",
        "LOADTEST_MSG_SIZE",
        int,
        64,
        "characters per message text (at least the ~30 of the payload)",
    ),
    Setting(
        "--delivery-timeout",
        "LOADTEST_DELIVERY_TIMEOUT",
        float,
        10.0,
        "seconds after which an expected delivery counts as missing",
    ),
    Setting(
        "--reply-timeout",
        "LOADTEST_REPLY_TIMEOUT",
        float,
        10.0,
        "seconds to wait for a command's reply before failing it",
    ),
    Setting(
        "--shape-users",
        "LOADTEST_SHAPE_USERS",
        int,
        200,
        "shape.py only: users to ramp up to (all scenarios, equal weights)",
    ),
    Setting(
        "--shape-spawn-rate",
        "LOADTEST_SHAPE_SPAWN_RATE",
        float,
        10.0,
        "shape.py only: users started per second during the ramp",
    ),
    Setting(
        "--shape-hold",
        "LOADTEST_SHAPE_HOLD",
        float,
        300.0,
        "shape.py only: seconds to hold the target after the ramp, then stop (0 = until stopped)",
    ),
    Setting(
        "--group-prefix",
        "LOADTEST_GROUP_PREFIX",
        str,
        "lt-g",
        "prefix of the load-test group names",
    ),
)


def add_arguments(parser) -> None:
    """Register every setting on Locust's configargparse parser.

    On the parser itself, not an argument group: only Locust's own add_argument
    marks an option for the web UI's form (a group's is plain argparse).
    """
    for s in SETTINGS:
        parser.add_argument(
            s.flag,
            type=s.type,
            env_var=s.env,
            default=s.default,
            help=f"chatsrv: {s.help} [env {s.env}, default {s.default}]",
            include_in_web_ui=True,
        )


def get(parsed_options, dest: str) -> Any:
    """A setting's value; outside the Locust CLI (parsed_options is None) from env or default."""
    value = getattr(parsed_options, dest, None) if parsed_options is not None else None
    if value is not None:
        return value
    s = next(s for s in SETTINGS if s.dest == dest)
    raw = os.environ.get(s.env)
    return s.type(raw) if raw not in (None, "") else s.default
