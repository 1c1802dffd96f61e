"""The mixed chatsrv load test: every scenario at once, ramped to a target and held.

    locust -f loadtest/locustfile.py --headless -u 200 -r 20 -t 60s --host tcp://127.0.0.1:50000

-u/-r/-t (or the web UI's fields, or LOCUST_USERS / LOCUST_SPAWN_RATE /
LOCUST_RUN_TIME) set the target, the ramp rate and the test length. Name user
classes after the file to run only some scenarios (`... ChattyUser LurkerUser`).
"""

from __future__ import annotations

import os
import sys

from locust import LoadTestShape

# loadtest/ is not an installed package: make `import loadtest` work whatever the cwd.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from loadtest.scenarios import ChattyUser, ChurnUser, LurkerUser, PrivateUser  # noqa: E402

__all__ = ["ChattyUser", "ChurnUser", "LurkerUser", "PrivateUser", "RampHoldShape"]


class RampHoldShape(LoadTestShape):
    """Ramp to -u users at -r users/s, hold until -t has passed since the start, stop.

    Locust's own spawner does the ramp; the shape's job is the hold and the clean
    stop, and that it reads the common options (use_common_options) instead of
    ignoring them as shapes otherwise do. Without -t it holds until stopped.
    """

    use_common_options = True

    def tick(self):
        opts = self.runner.environment.parsed_options
        users = getattr(opts, "num_users", None) or 1
        rate = getattr(opts, "spawn_rate", None) or 1
        run_time = getattr(opts, "run_time", None)
        if run_time and self.get_run_time() >= run_time:
            return None
        return users, rate
