"""The mixed chatsrv load test: every scenario at once, for as long and as many as told.

    locust -f loadtest/locustfile.py --headless -u 200 -r 20 -t 60s --host tcp://127.0.0.1:50000

-u/-r/-t (or the web UI's fields, or LOCUST_USERS / LOCUST_SPAWN_RATE /
LOCUST_RUN_TIME) set the user count, the spawn rate and the test length; the
five scenarios share the users equally (`AccountUser` needs `--accounts
optional`, the server's default). Run only some scenarios by naming their
classes after the options (`... ChattyUser LurkerUser`) or by tag
(`--tags chatty lurkers`). There is deliberately no LoadTestShape here: Locust
ignores -u/-r/-t when a locustfile has one. The ramp-and-hold shape is
loadtest/shape.py.
"""

from __future__ import annotations

import os
import sys

# loadtest/ is not an installed package: make `import loadtest` work whatever the cwd.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from loadtest.scenarios import (  # noqa: E402
    AccountUser,
    ChattyUser,
    ChurnUser,
    LurkerUser,
    PrivateUser,
)

__all__ = ["AccountUser", "ChattyUser", "ChurnUser", "LurkerUser", "PrivateUser"]
