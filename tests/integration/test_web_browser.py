"""The bundled web client in a real browser: Debian's chromium and
chromium-driver, driven by Selenium (installed by .ci/run; with CI=true a
missing browser is a failure, never a skip).

One headless browser serves the whole module (at a 375 px phone width) and one
server serves every test that does not restart it. Set
CHATSRV_WEB_SCREENSHOT=docs/img/web-client.png to refresh the README's picture.
"""

from __future__ import annotations

import http.server
import os
import shutil
import threading
from pathlib import Path

import pytest
from conftest import start_server
from test_websocket import start_web_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
PROBLEM = None
try:
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:
    PROBLEM = "selenium is not installed"
if PROBLEM is None and not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)):
    PROBLEM = "chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)"
if PROBLEM is not None and os.environ.get("CI") == "true":
    raise RuntimeError(f"browser tests cannot run in CI: {PROBLEM}")
pytestmark = pytest.mark.skipif(PROBLEM is not None, reason=PROBLEM or "")

PHONE = {"width": 375, "height": 740, "deviceScaleFactor": 1, "mobile": True}
DESKTOP = {"width": 1000, "height": 560, "deviceScaleFactor": 1, "mobile": False}


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--disable-gpu", "--window-size=375,740"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(30)
    # Headless windows are at least 500 px wide: emulate a 375 px phone screen.
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", PHONE)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One server for the tests that do not restart theirs."""
    server = start_web_server(tmp_path_factory.mktemp("web"), rate_limit=0)
    yield server
    server.stop()


def wait(driver, condition, limit: float = 20.0):
    return WebDriverWait(driver, limit, poll_frequency=0.05).until(lambda d: condition())


def by_id(driver, name: str):
    return driver.find_element(By.ID, name)


def status(driver) -> str:
    return by_id(driver, "status").text


def messages(driver) -> list[str]:
    return [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#messages li")]


def said(driver) -> list[str]:
    """The open conversation's messages as `sender: text` (no times, no notices)."""
    return driver.execute_script("""
        return [...document.querySelectorAll('#messages li.msg')].map((li) =>
          li.querySelector('b').textContent + ': ' + li.querySelector('.text').textContent);""")


def open_page(driver, server) -> None:
    driver.get(f"http://127.0.0.1:{server.web_port}/")
    driver.execute_script("localStorage.clear()")
    driver.refresh()


def type_name(driver, name: str) -> None:
    field = wait(driver, lambda: by_id(driver, "login-input").is_displayed()
                 and by_id(driver, "login-label").text == "Name" and by_id(driver, "login-input"))
    field.send_keys(name, Keys.ENTER)


def log_in(driver, server, name: str):
    open_page(driver, server)
    type_name(driver, name)
    wait(driver, lambda: status(driver) == f"connected as {name}")
    return by_id(driver, "text")


def side(driver, shown: bool = True) -> None:
    """Open (or close) the conversations panel, a drawer at phone width."""
    if by_id(driver, "side").is_displayed() != shown:
        by_id(driver, "menu").click()
    wait(driver, lambda: by_id(driver, "side").is_displayed() == shown)


def about_me(driver) -> list[str]:
    """The notices that stand out (about this user), without their times."""
    return driver.execute_script("""
        return [...document.querySelectorAll('#messages li.you .text')].map((s) => s.textContent);""")


def click(driver, where: str, label: str) -> None:
    """Click the button of that label in the list `where` (lists are redrawn as
    lines arrive: a button found just before a redraw is found again)."""
    def attempt():
        for b in driver.find_elements(By.CSS_SELECTOR, f"#{where} button"):
            if b.get_attribute("aria-label") == label or b.text == label:
                b.click()
                return True
        return False
    WebDriverWait(driver, 20, poll_frequency=0.05,
                  ignored_exceptions=(StaleElementReferenceException,)).until(lambda d: attempt())


def test_a_browser_user_and_tcp_users_chat(shared, browser, login, tmp_path):
    bob = login(shared, "bob")
    assert bob.request("register bobs-password") == "ok: registered bob"
    assert bob.request("create Lab") == "ok: created group Lab"
    assert bob.request("join Lab") == "ok: joined group Lab"
    bob.send("public Lab notes from before you came")
    text = log_in(browser, shared, "alice")
    # Keyboard: the composer has the focus after login, and it shows.
    assert browser.switch_to.active_element == text
    assert browser.execute_script(
        "return getComputedStyle(document.activeElement).outlineStyle") == "solid"
    bob.read_until(lambda line: line == "* alice joined the group General")

    # Who is online: the TCP user, and one who arrives later (refreshed on the join notice).
    side(browser)
    wait(browser, lambda: "bob" in by_id(browser, "users").text.split("\n"))
    carol = login(shared, "carol")
    wait(browser, lambda: "carol" in by_id(browser, "users").text.split("\n"))
    carol.close()

    # The group browser joins Lab; opening it shows its history.
    by_id(browser, "browse").click()
    click(browser, "all-groups", "Join Lab")
    wait(browser, lambda: by_id(browser, "title").text == "Lab")
    wait(browser, lambda: said(browser) == ["bob: notes from before you came"])
    assert not by_id(browser, "side").is_displayed()  # the drawer closes on a choice

    # Public messages both ways; a message is text, never markup.
    bob.read_until(lambda line: line == "* alice joined the group Lab")
    text.send_keys("hello bob", Keys.ENTER)
    bob.expect("[public group Lab from alice] hello bob")
    assert said(browser)[-1] == "alice: hello bob"
    bob.send("public Lab hi alice, the plan for today is in the notes")
    wait(browser, lambda: said(browser)[-1] == "bob: hi alice, the plan for today is in the notes")
    if os.environ.get("CHATSRV_WEB_SCREENSHOT"):  # the README's picture, at desktop width
        browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", DESKTOP)
        text.send_keys("/info Lab", Keys.ENTER)
        wait(browser, lambda: any(m.endswith("visibility public") for m in messages(browser)))
        Path(os.environ["CHATSRV_WEB_SCREENSHOT"]).write_bytes(browser.get_screenshot_as_png())
        browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", PHONE)
    bob.send("public Lab <img src=x onerror=alert(1)>")
    wait(browser, lambda: "bob: <img src=x onerror=alert(1)>" in said(browser))
    assert not browser.find_elements(By.CSS_SELECTOR, "#messages img")

    # Notices about me stand out: muted (my message is refused, shown by the composer).
    bob.send("mute Lab alice")
    bob.expect("ok: muted alice in Lab")
    wait(browser, lambda: "bob muted you in Lab" in about_me(browser))
    text.send_keys("can you hear me", Keys.ENTER)
    wait(browser, lambda: by_id(browser, "error").text
         == "error: not allowed: you are muted in Lab")
    assert "(not sent: not allowed: you are muted in Lab)" in messages(browser)[-1]
    text.send_keys(Keys.ESCAPE)
    assert by_id(browser, "error").text == ""

    # Private: a click on a user opens the conversation.
    side(browser)
    click(browser, "users", "Private conversation with bob")
    wait(browser, lambda: by_id(browser, "title").text == "Private: bob")
    text.send_keys("psst", Keys.ENTER)
    bob.expect("[private from alice] psst")
    bob.send("private alice back at you")
    wait(browser, lambda: said(browser) == ["alice: psst", "bob: back at you"])

    # Alt+Up goes back to the groups; removed from Lab, it leaves the list.
    text.send_keys(Keys.ALT, Keys.ARROW_UP)
    wait(browser, lambda: by_id(browser, "title").text == "Lab")
    bob.send("kick Lab alice too noisy")
    bob.expect("ok: removed alice from Lab")
    wait(browser, lambda: by_id(browser, "title").text == "General")
    assert "bob removed you from Lab: too noisy" in about_me(browser)
    assert "Lab" not in by_id(browser, "groups").get_attribute("textContent")

    # /commands go verbatim; the server's errors appear by the composer.
    text.send_keys("/nosuchcommand", Keys.ENTER)
    wait(browser, lambda: by_id(browser, "error").text == "error: unknown command: nosuchcommand")

    # 375 px wide: nothing scrolls sideways and the composer is on screen.
    assert browser.execute_script("return window.innerWidth") == 375
    assert browser.execute_script("return document.documentElement.scrollWidth") <= 375
    rect = browser.execute_script(
        "return arguments[0].getBoundingClientRect().toJSON()", by_id(browser, "composer"))
    height = browser.execute_script("return window.innerHeight")
    assert rect["height"] > 0 and rect["top"] >= 0 and rect["bottom"] <= height
    assert rect["left"] >= 0 and rect["right"] <= 375
    shot = browser.get_screenshot_as_png()
    assert shot[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(shot[16:20], "big") == 375  # the PNG's width
    (tmp_path / "web-375px.png").write_bytes(shot)


def test_a_password_login_is_remembered_with_a_token(shared, browser, login, connect):
    dora = login(shared, "dora")
    assert dora.request("register doras-secret-pw") == "ok: registered dora"
    dora.send("exit")
    dora.expect("ok: bye")
    open_page(browser, shared)
    type_name(browser, "dora")
    field = wait(browser, lambda: by_id(browser, "login-label").text == "Password for dora"
                 and by_id(browser, "login-input"))
    assert field.get_attribute("type") == "password"
    field.send_keys("wrong-password", Keys.ENTER)
    wait(browser, lambda: by_id(browser, "login-error").text == "error: login failed")
    type_name(browser, "dora")
    wait(browser, lambda: by_id(browser, "login-label").text == "Password for dora")
    by_id(browser, "remember").click()  # "remember me"
    field.send_keys("doras-secret-pw", Keys.ENTER)
    wait(browser, lambda: status(browser) == "connected as dora")
    stored = wait(browser, lambda: browser.execute_script(
        "return localStorage.getItem('chatsrv.login')"))
    assert '"name":"dora"' in stored and '"token":"' in stored
    assert "doras-secret-pw" not in browser.execute_script(
        "return JSON.stringify(localStorage) + JSON.stringify(sessionStorage)")

    # A reload logs in with the token: nobody types the password again.
    browser.refresh()
    wait(browser, lambda: status(browser) == "connected as dora")
    assert not by_id(browser, "login").is_displayed()
    text = by_id(browser, "text")
    text.send_keys("/exit", Keys.ENTER)  # `exit` means it: no reconnect
    wait(browser, lambda: status(browser).startswith("logged out"))

    # Another login to the account takes the session over: the page does not fight back.
    browser.refresh()
    wait(browser, lambda: status(browser) == "connected as dora")
    dora = connect(shared)
    dora.expect("enter a username:")
    dora.send("dora doras-secret-pw")  # the one-line form
    dora.expect("connected! welcome dora", "you joined the group General")
    wait(browser, lambda: status(browser) == "disconnected: logged in from another connection")
    # A password change revokes the token: the page asks for the password again.
    assert dora.request("password doras-secret-pw doras-new-password") == "ok: password changed"
    browser.refresh()
    field = wait(browser, lambda: by_id(browser, "login-label").text == "Password for dora"
                 and by_id(browser, "login-input"))
    assert by_id(browser, "login-error").text.startswith("your remembered login has expired")
    assert browser.execute_script("return localStorage.getItem('chatsrv.login')") is None
    by_id(browser, "remember").click()
    field.send_keys("doras-new-password", Keys.ENTER)
    wait(browser, lambda: status(browser) == "connected as dora")
    wait(browser, lambda: browser.execute_script("return localStorage.getItem('chatsrv.login')"))

    # "Log out" forgets the token: after a reload the page asks for the name.
    by_id(browser, "logout").click()
    wait(browser, lambda: by_id(browser, "login-input").is_displayed())
    assert browser.execute_script("return localStorage.getItem('chatsrv.login')") is None
    browser.refresh()
    type_name(browser, "dora")  # the name prompt again, not a login
    wait(browser, lambda: by_id(browser, "login-label").text == "Password for dora")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_a_page_from_another_origin_cannot_open_the_websocket(shared, browser, tmp_path):
    (tmp_path / "index.html").write_text("<!doctype html><title>elsewhere</title>")
    other = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a: _Quiet(*a, directory=str(tmp_path)))
    threading.Thread(target=other.serve_forever, daemon=True).start()
    probe = """
        const done = arguments[arguments.length - 1];
        const ws = new WebSocket(arguments[0]);
        ws.onopen = () => { ws.close(); done('open'); };
        ws.onerror = () => done('refused');"""
    url = f"ws://127.0.0.1:{shared.web_port}/ws"
    browser.set_script_timeout(20)
    try:
        browser.get(f"http://127.0.0.1:{other.server_address[1]}/")
        assert browser.title == "elsewhere"
        assert browser.execute_async_script(probe, url) == "refused"  # 403, no upgrade
        browser.get(f"http://127.0.0.1:{shared.web_port}/")
        assert browser.execute_async_script(probe, url) == "open"  # the page's own origin
    finally:
        other.shutdown()
        other.server_close()


def test_the_page_reconnects_and_fills_the_gap_without_duplicates(tmp_path, browser, login):
    server = start_web_server(tmp_path, rate_limit=0)
    port = server.web_port
    try:
        text = log_in(browser, server, "alice")
        text.send_keys("/create Physics", Keys.ENTER)
        wait(browser, lambda: by_id(browser, "title").text == "Physics")
        bob = login(server, "bob")
        bob.send("join Physics")
        bob.expect("ok: joined group Physics")
        bob.send("public Physics one")
        bob.send("public Physics two")
        wait(browser, lambda: said(browser) == ["bob: one", "bob: two"])
        text.send_keys("mine", Keys.ENTER)
        bob.expect("[public group Physics from alice] mine")
        server.stop()
        wait(browser, lambda: "disconnected" in status(browser))
        server = start_server(tmp_path, web_port=port, rate_limit=0)  # same data dir
        bob = login(server, "bob")
        bob.send("join Physics")
        bob.expect("ok: joined group Physics")
        bob.send("public Physics in the gap")  # from history or live: shown once either way
        wait(browser, lambda: status(browser) == "connected as alice", limit=60)
        bob.read_until(lambda line: line == "* alice joined the group Physics")
        bob.send("public Physics welcome back")  # reaches alice only if she re-joined
        wait(browser, lambda: "bob: welcome back" in said(browser))
        assert by_id(browser, "title").text == "Physics"  # still the open conversation
        assert said(browser) == ["bob: one", "bob: two", "alice: mine", "bob: in the gap",
                                 "bob: welcome back"]
    finally:
        server.stop()
