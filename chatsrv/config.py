"""One typed, frozen configuration object, built once by the CLI and passed in.

Every field is a `chatsrv serve` option and a `CHATSRV_<NAME>` environment
variable (Typer reads both; see cli.py). Validation happens here, once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path

from .auth import ADMIN_TOKEN_MIN, is_loopback
from .core.limits import Network, parse_networks

_NODE_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class ConfigError(ValueError):
    """A setting that cannot work; the CLI prints it as one line and exits 2."""


@dataclass(frozen=True, kw_only=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 50000
    http_host: str = "127.0.0.1"
    http_port: int = 9150
    web_host: str = "127.0.0.1"
    web_port: int = 8080  # the WebSocket door and the browser client (0 = off)
    web_origins: str = ""  # comma-separated origins allowed beside the page's own
    trusted_proxies: str = ""  # CIDRs whose X-Forwarded-For names the client (web port)
    data_dir: Path = Path("./chatsrv-data")
    store: str = "sqlite"
    flush_ms: int = 50
    max_clients: int = 10000
    max_per_ip: int = 100
    connect_rate: float = 20.0
    exempt: str = "127.0.0.0/8,::1"
    max_unauth: int = 1000
    max_line: int = 4096
    sendq: int = 1 << 20
    login_timeout: float = 30.0
    rate_limit: float = 100.0
    history: int = 1000
    history_memory: float = 256.0  # MiB for all groups' history in memory; fractions allowed
    notice_limit: int = 1000
    max_groups: int = 10000
    create_rate: float = 10.0
    http_timeout: float = 10.0
    admin_token: str | None = None
    redis: str | None = None
    node_id: str | None = None
    node_ttl: float = 10.0
    workers: int = 1
    reuse_port: bool = False  # set by the --workers supervisor for its workers
    tls_cert: Path | None = None
    tls_key: Path | None = None
    log_level: str = "info"
    log_format: str = "text"
    shutdown_grace: float = 5.0
    keepalive: float = 120.0
    accounts: str = "optional"  # off | optional | required (PROTOCOL.md v2, Accounts)
    group_creation: str = "all"  # all | accounts | admins (PROTOCOL.md v2, Group roles)
    token_ttl: float = 2592000.0  # seconds a `token` stays valid (30 days)

    def __post_init__(self) -> None:
        checks = [
            (0 <= self.port <= 65535, "--port must be 0..65535"),
            (0 <= self.http_port <= 65535, "--http-port must be 0..65535"),
            (0 <= self.web_port <= 65535, "--web-port must be 0..65535"),
            (self.max_clients >= 1, "--max-clients must be at least 1"),
            (self.max_per_ip >= 0, "--max-per-ip must be >= 0 (0 = off)"),
            (self.connect_rate >= 0, "--connect-rate must be >= 0 (0 = off)"),
            (self.max_unauth >= 0, "--max-unauth must be >= 0 (0 = off)"),
            (self.max_line >= 16, "--max-line must be at least 16 bytes"),
            (self.sendq >= 1024, "--sendq must be at least 1024 bytes"),
            (self.login_timeout > 0, "--login-timeout must be positive"),
            (self.rate_limit >= 0, "--rate-limit must be >= 0 (0 = off)"),
            (self.history >= 0, "--history must be >= 0 (0 = off)"),
            (0 < self.history_memory <= 1 << 20,
             "--history-memory must be more than 0 and at most 1048576 MiB"),
            (self.store in ("sqlite", "memory"), "--store must be sqlite or memory"),
            (1 <= self.flush_ms <= 60_000, "--flush-ms must be 1..60000"),
            (self.notice_limit >= 0, "--notice-limit must be >= 0 (0 = always)"),
            (self.max_groups >= 1, "--max-groups must be at least 1 (General counts)"),
            (self.create_rate >= 0, "--create-rate must be >= 0 (0 = off)"),
            (self.http_timeout > 0, "--http-timeout must be positive"),
            (self.shutdown_grace >= 0, "--shutdown-grace must be >= 0"),
            (self.accounts in ("off", "optional", "required"),
             "--accounts must be off, optional or required"),
            (self.group_creation in ("all", "accounts", "admins"),
             "--group-creation must be all, accounts or admins"),
            (60 <= self.token_ttl <= 10 * 365 * 86400,
             "--token-ttl must be 60 seconds .. 10 years"),
            (self.keepalive == 0 or 2 <= self.keepalive <= 86400,
             "--keepalive must be 2..86400 seconds (0 = off)"),
            (self.log_format in ("text", "json"), "--log-format must be text or json"),
            (
                self.log_level.lower() in ("debug", "info", "warning", "error"),
                "--log-level must be debug, info, warning or error",
            ),
            ((self.tls_cert is None) == (self.tls_key is None),
             "--tls-cert and --tls-key go together"),
            (self.admin_token is None or self.admin_token.strip() == self.admin_token != "",
             "--admin-token must be non-empty, without surrounding spaces"),
            (self.http_port == 0 or self.admin_token is not None or is_loopback(self.http_host),
             f"--http-host {self.http_host} is not a loopback address: set --admin-token "
             "(or CHATSRV_ADMIN_TOKEN) before exposing the admin API"),
            (self.http_port == 0 or self.admin_token is None or is_loopback(self.http_host)
             or len(self.admin_token) >= ADMIN_TOKEN_MIN,
             f"--admin-token must be at least {ADMIN_TOKEN_MIN} characters when --http-host "
             f"{self.http_host} is not a loopback address (e.g. `openssl rand -hex 32`)"),
            (self.workers >= 1, "--workers must be at least 1"),
            (self.workers == 1 or self.redis is not None,
             "--workers needs --redis (each worker is a node of the cluster)"),
            (self.node_ttl >= 0.5, "--node-ttl must be at least 0.5 seconds"),
            (self.node_id is None or _NODE_ID.fullmatch(self.node_id) is not None,
             "--node-id must be 1..64 of A-Z a-z 0-9 _ . -"),
        ]
        if self.redis is not None:
            from .backplane.conn import check_url

            checks.append((check_url(self.redis) is None, check_url(self.redis) or ""))
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        try:
            parse_networks(self.exempt)
        except ValueError as err:
            raise ConfigError(f"--exempt: {err}") from None
        try:
            parse_networks(self.trusted_proxies)
        except ValueError as err:
            raise ConfigError(f"--trusted-proxies: {err}") from None

    @property
    def exempt_networks(self) -> tuple[Network, ...]:
        return parse_networks(self.exempt)

    @cached_property
    def trusted_networks(self) -> tuple[Network, ...]:
        return parse_networks(self.trusted_proxies)

    @property
    def history_memory_bytes(self) -> int:
        return int(self.history_memory * (1 << 20))

    @property
    def web_origin_list(self) -> frozenset[str]:
        return frozenset(o.strip().rstrip("/").lower() for o in self.web_origins.split(",")
                         if o.strip())

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]
