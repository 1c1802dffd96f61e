"""`--config FILE` (TOML): the `chatsrv serve` options in a file, and where each value came from.

The keys and their types are Config's fields (`typing.get_type_hints`), so a
new option is a file key with no second list to keep in step; `max_clients`
and `max-clients` are the same key. Precedence: a flag, then its
`CHATSRV_<NAME>` variable, then the file, then Config's default. Relative paths
in a file are relative to the file's directory (a service's working
directory is rarely where its configuration lives).

`resolve` builds the Config once at start and again at every reload (the flags
and environment given at start keep winning over the file); every problem is
one `ConfigError` line naming the file, the key and what was expected.
"""

from __future__ import annotations

import difflib
import re
import ssl
import sys
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .config import Config, ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found, no-redef]

# Origins of a value, as `chatsrv config show` prints them.
FLAG, ENV, FILE, DEFAULT = "flag", "env", "file", "default"

# Internal fields no one sets by hand (the --workers supervisor passes --reuse-port).
INTERNAL = frozenset({"reuse_port"})
# Never printed nor logged in clear.
SECRETS = frozenset({"admin_token"})

DEFAULTS = Config()
_HINTS = typing.get_type_hints(Config)
# key -> (the base type, whether it may be unset); unset = the key is left out.
KEYS: dict[str, tuple[type, bool]] = {}
for _f in fields(Config):
    if _f.name in INTERNAL:
        continue
    _hint = _HINTS[_f.name]
    _args = [a for a in typing.get_args(_hint) if a is not type(None)]
    KEYS[_f.name] = (_args[0], True) if _args else (_hint, False)

_EXPECTED = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
             Path: "a path (a string)"}
_TOML_TYPE = {str: "a string", int: "an integer", float: "a float", bool: "a boolean",
              dict: "a table", list: "an array"}


def read_file(path: Path) -> dict[str, Any]:
    """The options a TOML file sets, by Config field name, typed; raises ConfigError."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config file: "
                          f"{err.strerror or err}") from None
    try:
        table = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a TOML file: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    values: dict[str, Any] = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name not in KEYS:
            close = difflib.get_close_matches(name, KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{path}: unknown key {key!r}{hint}; the keys are the options "
                              "of `chatsrv serve` (see `chatsrv serve --help`)")
        if name in values:
            raise ConfigError(f"{path}: key {key!r} is set twice (- and _ are the same)")
        values[name] = _typed(path, key, name, value)
    return values


def _typed(path: Path, key: str, name: str, value: Any) -> Any:
    kind, _ = KEYS[name]
    ok = (
        isinstance(value, bool) if kind is bool
        else isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float
        else isinstance(value, int) and not isinstance(value, bool) if kind is int
        else isinstance(value, str)
    )
    if not ok:
        got = _TOML_TYPE.get(type(value), type(value).__name__)
        raise ConfigError(f"{path}: key {key!r}: expected {_EXPECTED[kind]}, got {got} "
                          f"({_show(name, value)})")
    if kind is float:
        return float(value)
    if kind is Path:
        if not value:
            raise ConfigError(f"{path}: key {key!r}: expected a path, got an empty string")
        given = Path(value).expanduser()
        return given if given.is_absolute() else path.parent / given
    return value


def _show(name: str, value: Any) -> str:
    if name in SECRETS:
        return "<redacted>"
    if isinstance(value, str):
        return repr(value)
    return str(value)


@dataclass(frozen=True)
class Resolved:
    """The effective Config, where each value came from, and how to build it again."""

    config: Config
    origins: dict[str, str]
    path: Path | None
    explicit: dict[str, tuple[Any, str]]  # the flags and variables given at start

    def reload(self) -> Resolved:
        """Read the file again (flags and environment still win); raises ConfigError."""
        return resolve(self.explicit, self.path)


def resolve(explicit: dict[str, tuple[Any, str]], path: Path | None) -> Resolved:
    """Defaults < file < `explicit` (name -> (value, FLAG or ENV)); raises ConfigError."""
    values: dict[str, Any] = {f.name: getattr(DEFAULTS, f.name) for f in fields(Config)}
    origins = dict.fromkeys(values, DEFAULT)
    if path is not None:
        for name, value in read_file(path).items():
            values[name] = value
            origins[name] = FILE
    for name, (value, origin) in explicit.items():
        values[name] = value
        origins[name] = origin
    try:
        config = Config(**values)
    except ConfigError as err:
        raise ConfigError(_where(str(err), origins, path)) from None
    check_tls(config, origins, path)
    return Resolved(config, origins, path, dict(explicit))


def _where(message: str, origins: dict[str, str], path: Path | None) -> str:
    """Config's message (it names options as --flags), with the file when a key from it
    is the one at fault."""
    named = re.findall(r"--([a-z-]+)", message)
    for option in named[:2]:  # the option at fault comes first ("--a and --b go together")
        name = option.replace("-", "_")
        if origins.get(name) == FILE:
            return f"{path}: key {name!r}: {message}"
    return message


def describe(name: str, origins: dict[str, str], path: Path | None) -> str:
    """How the operator set `name`: the file and key, the variable, or the flag."""
    origin = origins.get(name, DEFAULT)
    if origin == FILE:
        return f"{path}: key {name!r}"
    if origin == ENV:
        return "CHATSRV_" + name.upper()
    return "--" + name.replace("_", "-")


def check_tls(config: Config, origins: dict[str, str] | None = None,
              path: Path | None = None) -> ssl.SSLContext | None:
    """The TLS context for the certificate and key, or None without TLS.

    Raises ConfigError naming the setting when a file is missing or unreadable,
    or when the pair does not load (not PEM, key not matching the certificate)."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    origins = origins or {}
    for name, what in (("tls_cert", "a PEM certificate"), ("tls_key", "a PEM private key")):
        file = getattr(config, name)
        try:
            with open(file, "rb"):
                pass
        except OSError as err:
            raise ConfigError(f"{describe(name, origins, path)}: {file}: "
                              f"{err.strerror or err} (expected a readable file with {what})"
                              ) from None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(str(config.tls_cert), str(config.tls_key))
    except (ssl.SSLError, OSError) as err:
        raise ConfigError(f"{describe('tls_cert', origins, path)}: {config.tls_cert} with key "
                          f"{config.tls_key}: the certificate and key do not load ({err}); "
                          "expected a PEM certificate and its matching private key") from None
    return ctx


def redacted(name: str, value: Any) -> str:
    """A value as TOML, secrets hidden (a Redis URL's password included)."""
    if value is None:
        return ""
    if name in SECRETS:
        return '"<redacted>"'
    if name == "redis" and isinstance(value, str):
        value = redact_url(value)
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def redact_url(url: str) -> str:
    """`redis://user:secret@host` -> `redis://user:<redacted>@host`."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    auth, _, host = rest.rpartition("@")
    user = auth.split(":", 1)[0] if ":" in auth else ""
    return f"{scheme}://{user}:<redacted>@{host}" if ":" in auth else f"{scheme}://<redacted>@{host}"


def show(resolved: Resolved) -> str:
    """The effective configuration as TOML, each line saying where its value came from."""
    lines = [f"# effective configuration (config file: {resolved.path or 'none'})"]
    for name in KEYS:
        value = getattr(resolved.config, name)
        origin = resolved.origins[name]
        if origin == ENV:
            origin = f"env CHATSRV_{name.upper()}"
        elif origin == FILE:
            origin = f"file {resolved.path}"
        if value is None:
            lines.append(f"# {name} is not set  # {origin}")
        else:
            lines.append(f"{name} = {redacted(name, value)}  # {origin}")
    return "\n".join(lines) + "\n"
