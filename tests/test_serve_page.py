"""The `hires serve` page in a real headless browser (Debian's chromium through Selenium)."""

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from serve_support import Server, crop_raster, pixels
from support import SAMPLES

from hires_domain.serve.security import add_token

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None)
SCREENSHOT = os.environ.get("HIRES_SERVE_SCREENSHOT")  # e.g. docs/images/service.png


@pytest.fixture
def browser(tmp_path):
    if not (CHROMIUM and DRIVER):
        if os.environ.get("CI") == "true" or os.environ.get("HIRES_REQUIRE_CHROMIUM"):
            pytest.fail("chromium and chromium-driver are required in CI (apt-get install chromium chromium-driver)")
        pytest.skip("chromium/chromedriver not installed (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1200,1000"):
        opts.add_argument(arg)
    opts.add_experimental_option("prefs", {"download.default_directory": str(tmp_path / "downloads"),
                                           "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def test_page_upload_progress_previews_download(browser, tmp_path):
    tokens = tmp_path / "tokens"
    token = add_token(tokens, "analyst")
    server = Server(tmp_path, "--tokens", str(tokens))
    try:
        browser.get(server.url + "/")
        browser.find_element(By.ID, "token").send_keys(token + Keys.TAB)  # change: the models load
        wait = WebDriverWait(browser, 180)
        wait.until(lambda d: len(Select(d.find_element(By.ID, "model")).options) >= 8)
        Select(browser.find_element(By.ID, "model")).select_by_value("s2-sr-x4")
        assert Select(browser.find_element(By.ID, "scale")).first_selected_option.text == "x4"
        browser.find_element(By.ID, "file").send_keys(str(SAMPLES / "s2_crop.tif"))
        browser.find_element(By.ID, "submit").click()
        link = wait.until(EC.element_to_be_clickable((By.ID, "download-result")))
        status = browser.find_element(By.ID, "status").text
        assert ": done (" in status and "tiles" in status, status
        assert browser.find_element(By.ID, "error").text == ""
        sizes = browser.execute_script(
            "return ['preview-input', 'preview-result'].map(id => document.getElementById(id).naturalWidth)")
        assert sizes == [128, 512]  # one footprint: 128 input pixels, 512 output pixels
        assert browser.execute_script("return document.getElementById('progress').value") == 1
        if SCREENSHOT:
            browser.save_screenshot(SCREENSHOT)
        link.click()  # a download through fetch + blob (the token travels in a header)
        downloads = tmp_path / "downloads"
        end = time.monotonic() + 30
        while time.monotonic() < end and not list(downloads.glob("*-result.tif")):
            time.sleep(0.2)
        got = list(downloads.glob("*-result.tif"))
        assert len(got) == 1
        task = got[0].name.split("-")[0]
        np.testing.assert_array_equal(pixels(got[0]), pixels(server.data_dir / "tasks" / task / "result.tif"))

        # a diffusion model: its options appear; the uncertainty is previewed and downloadable
        crop = crop_raster(SAMPLES / "s2_crop.tif", tmp_path / "crop32.tif", 32)
        Select(browser.find_element(By.ID, "model")).select_by_value("s2-ldm-x4")
        steps = browser.find_element(By.ID, "steps")
        assert steps.is_displayed()
        steps.clear()
        steps.send_keys("3")
        browser.find_element(By.ID, "file").send_keys(str(crop))
        browser.find_element(By.ID, "submit").click()
        link = wait.until(EC.element_to_be_clickable((By.ID, "download-uncertainty")))
        assert "(3/3 steps)" in browser.find_element(By.ID, "status").text
        assert browser.execute_script("return document.getElementById('preview-uncertainty').naturalWidth") == 128
        link.click()
        end = time.monotonic() + 30
        while time.monotonic() < end and not list(downloads.glob("*-uncertainty.tif")):
            time.sleep(0.2)
        unc = list(downloads.glob("*-uncertainty.tif"))
        assert len(unc) == 1 and pixels(unc[0]).shape == (4, 128, 128) and pixels(unc[0]).max() > 0
    finally:
        server.kill()
