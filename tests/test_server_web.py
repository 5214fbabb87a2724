"""The web page in a real headless Chromium (selenium + Debian's chromium-driver)."""

from __future__ import annotations

import io
import shutil
import tempfile
import zipfile

import pytest
import requests


CHROMEDRIVER = shutil.which("chromedriver")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(not (CHROMEDRIVER and CHROMIUM), reason="needs chromium and chromium-driver "
                                "(apt-get install chromium chromium-driver; .ci/run does)")


@pytest.fixture
def browser():  # noqa: ANN201
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="ota-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def text_after_submit(browser, element_id: str, expected: str) -> str:
    """The element's text once the page the form POST returns shows ``expected`` there (or 30 s passed)."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        WebDriverWait(browser, 30).until(ec.text_to_be_present_in_element((By.ID, element_id), expected))
    except TimeoutException:
        pass  # the assertion below reports what the page shows
    return browser.find_element(By.ID, element_id).text


def test_page_lists_and_uploads(server, partner, browser, tmp_path):
    from selenium.webdriver.common.by import By

    if server.backend != "sqlite":
        pytest.skip("one browser run is enough")
    token = partner.api_token()
    dev = partner.device("web-dev")
    requests.post(f"{server.url}/v1/devices/web-dev/status", headers={"Authorization": f"Bearer {dev}"},
                  json={"state": "downloading", "versionNumber": "3", "message": "42%"})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.txt", "hello")
    pkg_file = tmp_path / "web.zip"
    pkg_file.write_bytes(buf.getvalue())

    browser.get(server.url + "/")
    assert browser.title == "OTA service"
    page = browser.find_element(By.TAG_NAME, "body").text
    # public page: what devices may download, nothing about partners or devices
    assert "web-dev" not in page and "42%" not in page and partner.partner_id not in page
    assert not browser.find_elements(By.ID, "devices")

    browser.find_element(By.ID, "token").send_keys(token)
    browser.find_element(By.ID, "package").send_keys("webpkg")
    browser.find_element(By.ID, "branch").send_keys("main")
    browser.find_element(By.ID, "version").send_keys("1.2.3")
    browser.find_element(By.ID, "file").send_keys(str(pkg_file))
    browser.find_element(By.ID, "submit").click()
    assert "stored webpkg main 1.2.3" in text_after_submit(browser, "message", "stored webpkg main 1.2.3")
    table = browser.find_element(By.ID, "packages").text
    assert "webpkg" in table and "1.2.3" in table and str(len(buf.getvalue())) in table
    import hashlib

    assert hashlib.sha256(buf.getvalue()).hexdigest() in table

    # the same version again is refused, and the page says why
    browser.find_element(By.ID, "token").send_keys(token)
    for field, value in (("package", "webpkg"), ("branch", "main"), ("version", "1.2.3")):
        browser.find_element(By.ID, field).send_keys(value)
    browser.find_element(By.ID, "file").send_keys(str(pkg_file))
    browser.find_element(By.ID, "submit").click()
    assert "exists" in text_after_submit(browser, "error", "exists")

    # a wrong token is refused
    browser.find_element(By.ID, "token").send_keys("wrong")
    for field, value in (("package", "webpkg"), ("branch", "main"), ("version", "9.9.9")):
        browser.find_element(By.ID, field).send_keys(value)
    browser.find_element(By.ID, "file").send_keys(str(pkg_file))
    browser.find_element(By.ID, "submit").click()
    assert "token" in text_after_submit(browser, "error", "token")


def test_page_lists_publications(server, partner, browser):
    """Seed 002: a publication (POST /publish, as the original client sends it) is a row of the page: its id, each
    file's size, its time; publishing the id again replaces the row. The owner is not shown (public page)."""
    import datetime as dt

    from selenium.webdriver.common.by import By

    if server.backend != "sqlite":
        pytest.skip("one browser run is enough")
    headers = {"Authorization": f"Bearer {partner.api_token()}"}
    publish_id = "web_" + partner.partner_id.replace("-", "_")

    def publish(sizes):
        files = {name: (name, b"x" * size) for name, size in zip(("manifest", "slot0", "slot1"), sizes, strict=True)}
        resp = requests.post(f"{server.url}/publish", headers=headers, data={"publish_id": publish_id}, files=files,
                             timeout=30)
        assert resp.status_code == 200, resp.text
        return resp.json()["created"]

    def row():
        browser.get(server.url + "/")
        table = browser.find_element(By.ID, "publications")
        assert [h.text for h in table.find_elements(By.TAG_NAME, "th")] == [
            "Publish id", "manifest", "slot0", "slot1", "Published (UTC)"]
        rows = [[td.text for td in tr.find_elements(By.TAG_NAME, "td")] for tr in table.find_elements(By.TAG_NAME, "tr")]
        mine = [r for r in rows if r and r[0] == publish_id]
        assert len(mine) == 1, rows
        assert partner.partner_id not in browser.find_element(By.TAG_NAME, "body").text
        return mine[0]

    created = publish((321, 4097, 1500))
    cells = row()
    assert cells == [publish_id, "321", "4097", "1500", created]
    when = dt.datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
    assert abs((dt.datetime.now(dt.timezone.utc) - when).total_seconds()) < 300

    created = publish((10, 20, 30))  # republished: the same row, the new sizes
    assert row() == [publish_id, "10", "20", "30", created]
