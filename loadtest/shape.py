"""Ramp and hold: every scenario, ramped to a target user count, held, then stopped.

    locust -f loadtest/shape.py --headless --host tcp://127.0.0.1:50000 \\
        --shape-users 500 --shape-spawn-rate 10 --shape-hold 300

The target, ramp rate and hold come from --shape-users / --shape-spawn-rate /
--shape-hold (or LOADTEST_SHAPE_USERS / _SPAWN_RATE / _HOLD); -u/-r/-t are
ignored here, as Locust does for every shape. For a sizing run, raise
--shape-users from run to run and watch where `deliver public` p99 or the
failure count turns (see docs/loadtesting.md).
"""

from __future__ import annotations

import os
import sys

from locust import LoadTestShape

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from loadtest import settings  # noqa: E402
from loadtest.scenarios import ChattyUser, ChurnUser, LurkerUser, PrivateUser  # noqa: E402

__all__ = ["ChattyUser", "ChurnUser", "LurkerUser", "PrivateUser", "RampHoldShape"]


class RampHoldShape(LoadTestShape):
    """Start --shape-spawn-rate users/s up to --shape-users, hold --shape-hold s, stop.

    Locust's spawner does the linear ramp at the given rate; the hold is timed
    from the ramp's nominal end (users / rate), which the spawner keeps to: it
    only starts greenlets, each user's connect and login run in its own.
    """

    def tick(self):
        opts = self.runner.environment.parsed_options
        users = max(1, settings.get(opts, "shape_users"))
        rate = max(0.1, settings.get(opts, "shape_spawn_rate"))
        hold = settings.get(opts, "shape_hold")
        if hold > 0 and self.get_run_time() >= users / rate + hold:
            return None
        return users, rate
