"""The page of `python -m cganraw.serve` in a real browser: Debian's chromium and
chromium-driver, driven by Selenium, headless, against a real uvicorn on 127.0.0.1.

It types text and presses Enter, waits for the image and checks it decoded at the width
the API gives that text, writes a new hand with the keyboard alone, checks the page at
phone width, types characters no model writes and reads the error line, and saves a
screenshot (to $CGANRAW_SCREENSHOT when set: that is how docs/write-page.png is made).

The system chromedriver is used, never a downloaded one: where chromium cannot be
installed (`apt-get install chromium chromium-driver`, which .ci/run does as root) the
test skips and says so.
"""
import io
import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver") or next((p for p in ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")
                                              if os.path.exists(p)), None)
if not (CHROMIUM and DRIVER):
    pytest.skip("the real-browser test needs chromium and chromium-driver, which are not installed here "
                "(apt-get install -y chromium chromium-driver; .ci/run installs them when it runs as root)",
                allow_module_level=True)

import httpx  # noqa: E402
from PIL import Image  # noqa: E402
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from tests.test_load import running_server  # noqa: E402

IMAGE_READY = """
const img = document.getElementById('result');
return !document.getElementById('figure').hidden && img.complete && img.naturalWidth > 0
       ? [img.naturalWidth, img.naturalHeight, img.src] : null;"""


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    with running_server(log_path=tmp_path_factory.mktemp("server") / "server.log") as url:
        yield url


@pytest.fixture(scope="module")
def driver():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=900,640", "--hide-scrollbars", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    d = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    d.set_page_load_timeout(60)
    yield d
    d.quit()


def wait_image(driver, previous_src=None, timeout=120):
    def ready(d):
        got = d.execute_script(IMAGE_READY)
        return got if got and got[2] != previous_src else None
    return WebDriverWait(driver, timeout).until(ready)


def api_png(base, text, seed, scale):
    r = httpx.post(base + "/api/v1/render", json={"text": text, "seed": seed, "scale": scale}, timeout=60)
    assert r.status_code == 200
    return Image.open(io.BytesIO(r.content))


def test_write_in_the_browser(base, driver, tmp_path):
    driver.get(base + "/")
    WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "charset").text == "0123456789")
    box = driver.find_element(By.ID, "text")
    assert driver.switch_to.active_element == box                      # the text box has the focus
    box.clear()
    box.send_keys("0800 2026")
    box.send_keys(Keys.ENTER)
    width, height, src = wait_image(driver)
    seed = int(driver.find_element(By.ID, "seed").get_attribute("value"))
    scale = int(driver.find_element(By.ID, "scale").get_attribute("value"))
    # The image decoded, at the size the API gives this text and seed: it fits the text.
    assert (width, height) == api_png(base, "0800 2026", seed, scale).size
    assert width < 9 * 28 * scale + 40 * scale and height == (28 + 8) * scale
    assert driver.find_element(By.ID, "error").text == ""
    link = driver.find_element(By.ID, "download")
    assert link.get_attribute("href").startswith("blob:") and link.get_attribute("download").endswith(".png")
    shot = Path(os.environ.get("CGANRAW_SCREENSHOT") or tmp_path / "write-page.png")
    shot.parent.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(shot))
    with Image.open(shot) as im:
        assert im.size[0] >= 600 and im.size[1] >= 400

    # Keyboard alone: Tab from the text box to "New hand" (Write, Seed, New hand), press Enter.
    box.click()
    chain = webdriver.ActionChains(driver)
    chain.send_keys(Keys.TAB, Keys.TAB, Keys.TAB).perform()
    assert driver.switch_to.active_element.get_attribute("id") == "new-hand"
    driver.switch_to.active_element.send_keys(Keys.ENTER)
    w2, h2, src2 = wait_image(driver, previous_src=src)
    seed2 = int(driver.find_element(By.ID, "seed").get_attribute("value"))
    assert seed2 != seed and (w2, h2) == api_png(base, "0800 2026", seed2, scale).size

    # Characters no model writes: the error line names them, the last image stays.
    box = driver.find_element(By.ID, "text")
    box.clear()
    box.send_keys("0800 A2026é")
    box.send_keys(Keys.ENTER)
    error = WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, "error").text)
    assert "No model can write" in error and "“A”" in error and "“é”" in error and "“0”" not in error
    assert driver.execute_script(IMAGE_READY)[2] == src2


def test_the_page_fits_a_phone(base, driver):
    driver.set_window_size(390, 844)
    try:
        driver.get(base + "/")
        box = driver.find_element(By.ID, "text")
        box.clear()
        box.send_keys("0800 2026 0800 2026")
        box.send_keys(Keys.ENTER)
        wait_image(driver)
        inner, scroll, img_w = driver.execute_script(
            "return [window.innerWidth, document.documentElement.scrollWidth,"
            " document.getElementById('result').getBoundingClientRect().right]")
        assert scroll <= inner and img_w <= inner
        for element_id in ("text", "go", "seed", "new-hand", "style", "layout", "scale", "ink"):
            right = driver.execute_script(f"return document.getElementById('{element_id}')"
                                          ".getBoundingClientRect().right")
            assert right <= inner, element_id
    finally:
        driver.set_window_size(900, 640)
