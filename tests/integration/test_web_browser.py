"""The bundled web client in a real browser: Debian's chromium and
chromium-driver, driven by Selenium (installed by .ci/run; with CI=true a
missing browser is a failure, never a skip)."""

from __future__ import annotations

import os
import shutil

import pytest
from test_websocket import start_web_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
PROBLEM = None
try:
    from selenium import webdriver
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


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--disable-gpu", "--window-size=375,740"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(30)
    # Headless windows are at least 500 px wide: emulate a 375 px phone screen.
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": 375, "height": 740, "deviceScaleFactor": 1, "mobile": True})
    yield driver
    driver.quit()


def wait(driver, condition, limit: float = 20.0):
    return WebDriverWait(driver, limit, poll_frequency=0.05).until(lambda d: condition())


def messages(driver) -> list[str]:
    return [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#messages li")]


def test_a_browser_user_and_a_tcp_user_chat(tmp_path, browser, login):
    server = start_web_server(tmp_path, rate_limit=0)
    try:
        bob = login(server, "bob")
        browser.get(f"http://127.0.0.1:{server.web_port}/")
        name = wait(browser, lambda: browser.find_element(By.ID, "login-input"))
        wait(browser, lambda: "connecting" not in browser.find_element(By.ID, "status").text)
        name.send_keys("alice", Keys.ENTER)
        bob.expect("* alice joined the group General")
        text = wait(browser, lambda: browser.find_element(By.ID, "text").is_displayed()
                    and browser.find_element(By.ID, "text"))
        bob.send("public General <img src=x onerror=alert(1)>")
        wait(browser, lambda: any("<img src=x onerror=alert(1)>" in m for m in messages(browser)))
        assert not browser.find_elements(By.CSS_SELECTOR, "#messages img")
        text.send_keys("hello bob", Keys.ENTER)
        bob.expect("[public group General from alice] hello bob")
        text.send_keys("/private bob psst", Keys.ENTER)
        bob.expect("[private from alice] psst")
        bob.send("private alice back")
        wait(browser, lambda: browser.find_elements(
            By.XPATH, "//nav//button[starts-with(normalize-space(.), '@bob')]"))
        text.send_keys("/nosuchcommand", Keys.ENTER)
        wait(browser, lambda: "unknown command" in browser.find_element(By.ID, "error").text)
        # 375 px wide: the composer is on screen
        assert browser.execute_script("return window.innerWidth") <= 375
        composer = browser.find_element(By.ID, "composer")
        rect = browser.execute_script("return arguments[0].getBoundingClientRect().toJSON()",
                                      composer)
        height = browser.execute_script("return window.innerHeight")
        assert rect["height"] > 0 and rect["bottom"] <= height and rect["right"] <= 376
        shot = browser.get_screenshot_as_png()
        assert shot[:8] == b"\x89PNG\r\n\x1a\n"
        assert int.from_bytes(shot[16:20], "big") == 375  # the PNG's width
        (tmp_path / "web-375px.png").write_bytes(shot)
    finally:
        server.stop()


def test_the_page_reconnects_and_rejoins_after_a_restart(tmp_path, browser, login):
    from conftest import start_server
    server = start_web_server(tmp_path, rate_limit=0)
    port = server.web_port
    try:
        browser.get(f"http://127.0.0.1:{port}/")
        wait(browser, lambda: browser.find_element(By.ID, "status").text == "online")
        browser.find_element(By.ID, "login-input").send_keys("alice", Keys.ENTER)
        text = wait(browser, lambda: browser.find_element(By.ID, "text").is_displayed()
                    and browser.find_element(By.ID, "text"))
        text.send_keys("/create Physics", Keys.ENTER)
        wait(browser, lambda: browser.find_element(By.ID, "title").text == "Physics")
        server.stop()
        wait(browser, lambda: "disconnected" in browser.find_element(By.ID, "status").text)
        server = start_server(tmp_path, web_port=port, rate_limit=0)  # same data dir
        wait(browser, lambda: browser.find_element(By.ID, "status").text
             == "connected as alice", limit=60)
        bob = login(server, "bob")
        bob.send("join Physics")
        bob.expect("ok: joined group Physics")
        bob.send("public Physics welcome back")  # reaches alice only if she re-joined
        wait(browser, lambda: any("welcome back" in m for m in messages(browser)))
    finally:
        server.stop()


def test_the_password_prompt_logs_in_to_an_account(tmp_path, browser, login):
    server = start_web_server(tmp_path, rate_limit=0)
    try:
        carol = login(server, "carol")
        assert carol.request("register carols-secret-pw") == "ok: registered carol"
        carol.send("exit")
        carol.expect("ok: bye")
        browser.get(f"http://127.0.0.1:{server.web_port}/")
        wait(browser, lambda: browser.find_element(By.ID, "status").text == "online")
        field = browser.find_element(By.ID, "login-input")
        field.send_keys("carol", Keys.ENTER)
        wait(browser, lambda: browser.find_element(By.ID, "login-label").text
             == "Password for carol")
        assert field.get_attribute("type") == "password"
        field.send_keys("wrong-password", Keys.ENTER)
        wait(browser, lambda: "error: " in browser.find_element(By.ID, "login-error").text)
        field = browser.find_element(By.ID, "login-input")
        field.send_keys("carol", Keys.ENTER)
        wait(browser, lambda: browser.find_element(By.ID, "login-label").text
             == "Password for carol")
        field.send_keys("carols-secret-pw", Keys.ENTER)
        wait(browser, lambda: browser.find_element(By.ID, "status").text
             == "connected as carol")
        browser.find_element(By.ID, "text").send_keys("/exit", Keys.ENTER)
        wait(browser, lambda: browser.find_element(By.ID, "status").text.startswith(
            "logged out"))  # `exit` means it: no reconnect
    finally:
        server.stop()
