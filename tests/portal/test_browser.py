"""The portal in a real headless browser (Debian's chromium + chromedriver, installed by
``infra/browser.sh``; driven with selenium, one browser session for the whole module):
sign in with the phone's key, read "near you", an alert, a friend, change a setting, and the
marketer map; screenshots at 240x320 (an i-mode handset) and 1280x800 go to
``test-artifacts/portal/``."""
from __future__ import annotations

import os
import shutil

import pytest

from portal.app import PAGE_BUDGET_BYTES
from tests.portal import world
from tests.portal.conftest import REPO

ARTIFACTS = os.path.join(REPO, "test-artifacts", "portal")
SIZES = {"240x320": (240, 320), "1280x800": (1280, 800)}


def chromium_paths():
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return browser, driver


@pytest.fixture(scope="module")
def browser():
    browser_bin, driver_bin = chromium_paths()
    if not (browser_bin and driver_bin):
        pytest.fail("chromium/chromedriver missing: run `bash infra/browser.sh` (make test does)")
    os.environ.setdefault("SE_AVOID_STATS", "true")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = browser_bin
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--lang=ja-JP",
                "--window-size=1280,800", "--disable-extensions", "--no-first-run"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_bin), options=options)
    driver.set_page_load_timeout(60)
    os.makedirs(ARTIFACTS, exist_ok=True)
    yield driver
    driver.quit()


def viewport(driver, width, height):
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600})


def shoot(driver, name):
    for label, (w, h) in SIZES.items():
        viewport(driver, w, h)
        driver.save_screenshot(os.path.join(ARTIFACTS, f"{name}-{label}.png"))
    viewport(driver, 1280, 800)


def light_and_scriptless(driver):
    html = driver.page_source
    assert "<script" not in html.lower()
    assert len(html.encode("utf-8")) < PAGE_BUDGET_BYTES
    assert driver.execute_script("return document.scripts.length") == 0


def by_css(driver, css):
    from selenium.webdriver.common.by import By
    return driver.find_elements(By.CSS_SELECTOR, css)


def click_to_load(driver, element, timeout_s: float = 60.0):
    """Click a link or submit button and wait until the page it leads to has replaced this one
    (a click returns before the next page is there on a busy machine: CI once read the old page)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait
    page = driver.find_element(By.TAG_NAME, "html")
    element.click()
    WebDriverWait(driver, timeout_s).until(expected_conditions.staleness_of(page))
    WebDriverWait(driver, timeout_s).until(lambda d: d.execute_script("return document.readyState") == "complete")


def test_subscriber_journey(portal, browser):
    browser.delete_all_cookies()
    browser.get(portal.signin_link(world.ALICE))          # what `nfc_gateway login` prints
    shoot(browser, "signin")
    click_to_load(browser, by_css(browser, "#signin")[0])
    assert browser.current_url == f"{portal.url}/u/1001/near"
    assert [li.get_attribute("id") for li in by_css(browser, "ol.tl li")] == ["t9002", "t9001"]
    assert "できごと: concert" in by_css(browser, "#t9001")[0].text
    light_and_scriptless(browser)
    shoot(browser, "near")

    click_to_load(browser, by_css(browser, "nav a[href='/u/1001/alerts']")[0])
    assert [li.get_attribute("id") for li in by_css(browser, "ol.al li")] == ["aa1"]
    assert "42 m" in by_css(browser, "#aa1")[0].text
    light_and_scriptless(browser)
    shoot(browser, "alerts")

    click_to_load(browser, by_css(browser, "nav a[href='/u/1001/friends']")[0])
    assert "@1002" in by_css(browser, "#f1002")[0].text
    light_and_scriptless(browser)
    shoot(browser, "friends")

    click_to_load(browser, by_css(browser, "nav a[href='/u/1001/settings']")[0])
    light_and_scriptless(browser)
    box = by_css(browser, "input[name=stats_opt_out]")[0]
    assert not box.is_selected()
    box.click()
    click_to_load(browser, by_css(browser, "#save")[0])
    assert by_css(browser, "#saved") and by_css(browser, "input[name=stats_opt_out]")[0].is_selected()
    shoot(browser, "settings")
    by_css(browser, "input[name=stats_opt_out]")[0].click()        # back as it was for the other tests
    click_to_load(browser, by_css(browser, "#save")[0])
    assert not by_css(browser, "input[name=stats_opt_out]")[0].is_selected()

    browser.get(f"{portal.url}/u/1001/near?lang=en")
    assert "Near you now" in browser.page_source
    light_and_scriptless(browser)
    shoot(browser, "near-en")


def test_marketer_map(portal, browser):
    browser.delete_all_cookies()
    browser.get(portal.signin_link(world.MARKETER, "marketer"))
    click_to_load(browser, by_css(browser, "#signin")[0])
    assert browser.current_url == f"{portal.url}/m/map"
    cells = {p.get_attribute("data-cell"): p.get_attribute("class") for p in by_css(browser, "svg.map polygon")}
    assert cells[world.MAP_CELLS[1]] == "zero" and cells[world.MAP_CELLS[0]] == "sig" and len(cells) == 4
    shoot(browser, "marketer-map")
    by_css(browser, f"polygon[data-cell='{world.MAP_CELLS[0]}']")[0].find_element("xpath", "..").click()
    assert "/m/cell" in browser.current_url and by_css(browser, "svg.chart polygon.band")
    shoot(browser, "marketer-series")
    browser.get(f"{portal.url}/m/ledger")
    assert by_css(browser, "svg.chart line.budget")
    shoot(browser, "marketer-ledger")
