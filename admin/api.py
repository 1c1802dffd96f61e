"""A small client for chatsrv's HTTP endpoint (stdlib urllib: no extra dependency).

Every failure becomes an `AdminError` carrying the exit code of the CLI's
contract: 1 for an answer that refuses or does not find (4xx, 5xx, not JSON),
3 when the server cannot be reached at all.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.parse
import urllib.request

NOT_OK, USAGE, UNREACHABLE = 1, 2, 3


class AdminError(Exception):
    def __init__(self, message: str, code: int = NOT_OK, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is answered as an error, never followed: following it would send
    the bearer token on to whatever host the `Location` names."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: PLR0913
        return None


# No redirects, and no proxy from the environment either (`http_proxy`): the
# token goes to the host of --url and nowhere else.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect)


class AdminClient:
    def __init__(self, url: str, token: str | None, timeout: float = 30.0) -> None:
        self.base = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    # ------------------------------------------------------------ endpoints

    def health(self) -> tuple[int, dict]:
        """(status, body) of /healthz, then /readyz: 503 is an answer here, not an error."""
        return self._request("GET", "/readyz", auth=False, accept=(200, 503))

    def alive(self) -> tuple[int, dict]:
        return self._request("GET", "/healthz", auth=False, accept=(200,))

    def users(self) -> dict:
        return self._api("GET", "/users")

    def groups(self) -> dict:
        return self._api("GET", "/groups")

    def group(self, name: str) -> dict:
        return self._api("GET", "/groups/" + _quote(name))

    def moderate(self, name: str, action: str, user: str, *, minutes: int | None = None,
                 reason: str | None = None) -> dict:
        body: dict[str, object] = {"user": user}
        if minutes is not None:
            body["minutes"] = minutes
        if reason is not None:
            body["reason"] = reason
        return self._api("POST", f"/groups/{_quote(name)}/{action}", body)

    def settings(self, name: str, changes: dict[str, str]) -> dict:
        return self._api("POST", f"/groups/{_quote(name)}/settings", changes)

    def audit(self, limit: int, group: str | None = None) -> dict:
        query = {"limit": str(limit)}
        if group is not None:
            query["group"] = group
        return self._api("GET", "/audit?" + urllib.parse.urlencode(query))

    def create(self, name: str) -> dict:
        return self._api("POST", "/groups", {"name": name})

    def delete_group(self, name: str) -> dict:
        return self._api("DELETE", "/groups/" + _quote(name))

    def kick(self, name: str) -> dict:
        return self._api("POST", f"/users/{_quote(name)}/kick", {})

    def announce(self, text: str, group: str | None) -> dict:
        return self._api("POST", "/announce", {"text": text, "group": group})

    def stats(self) -> dict:
        return self._api("GET", "/stats")

    def reload(self) -> dict:
        return self._api("POST", "/reload", {})

    def accounts(self) -> dict:
        return self._api("GET", "/accounts")

    def add_account(self, name: str, password: str | None) -> dict:
        body = {"name": name} if password is None else {"name": name, "password": password}
        return self._api("POST", "/accounts", body)

    def delete_account(self, name: str) -> dict:
        return self._api("DELETE", "/accounts/" + _quote(name))

    def reset_account(self, name: str, password: str | None) -> dict:
        return self._api("POST", f"/accounts/{_quote(name)}/password",
                         {} if password is None else {"password": password})

    def suspend_account(self, name: str, suspend: bool) -> dict:
        action = "suspend" if suspend else "unsuspend"
        return self._api("POST", f"/accounts/{_quote(name)}/{action}", {})

    # ------------------------------------------------------------ transport

    def _api(self, method: str, path: str, body: dict | None = None) -> dict:
        if not self.token:
            raise AdminError("no admin token: pass --token, set CHATSRV_ADMIN_TOKEN, or point "
                             "--data-dir at the server's data directory", USAGE)
        return self._request(method, "/api/v1" + path, body, auth=True)[1]

    def _request(self, method: str, path: str, body: dict | None = None, *, auth: bool,
                 accept: tuple[int, ...] = (200, 201, 204)) -> tuple[int, dict]:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if auth:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.base + path, data, headers, method=method)
        try:
            with _OPENER.open(request, timeout=self.timeout) as response:
                if response.status == 204:  # done, nothing to say
                    return 204, {}
                return response.status, _json(response.read())
        except urllib.error.HTTPError as err:
            payload = _json(err.read(), strict=False)
            if err.code in accept:
                return err.code, payload
            if 300 <= err.code < 400:
                where = err.headers.get("Location", "elsewhere")
                raise AdminError(f"the server answered HTTP {err.code} (redirect to {where}); "
                                 "chatsrv-admin follows no redirect, so the token goes nowhere "
                                 "else: point --url at chatsrv's HTTP endpoint itself",
                                 NOT_OK, err.code) from None
            raise AdminError(_describe(err.code, payload), NOT_OK, err.code) from None
        except OSError as err:  # URLError, timeouts, resets are all OSErrors
            reason = getattr(err, "reason", err)
            raise AdminError(f"cannot reach the server at {self.base}: {reason}",
                             UNREACHABLE) from None
        except http.client.HTTPException as err:  # something answered, but not in HTTP
            raise AdminError(f"no HTTP server at {self.base} ({type(err).__name__}); "
                             "--url wants chatsrv's --http-port, not its chat port",
                             UNREACHABLE) from None


def _quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def _json(raw: bytes, strict: bool = True) -> dict:
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeError, ValueError):
        if strict:
            raise AdminError("the server's answer is not JSON (is --url a chatsrv?)") from None
        return {}
    return value if isinstance(value, dict) else {"value": value}


def _describe(status: int, payload: dict) -> str:
    message = payload.get("error") or "no details"
    if status == 401:
        return f"the server refused the admin token ({message})"
    return f"{message} (HTTP {status})"
