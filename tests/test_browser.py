"""Both web pages in headless Chromium (selenium), against real gunicorn services on 127.0.0.1:
the bg-removal service on the oracle models, and the search service on a synthetic index whose
catalog holds a product named like an XSS payload, calling the bg service for photo queries.

Needs `chromium` and `chromedriver` (scripts/test.sh installs Debian's chromium and
chromium-driver when they are missing). Without them the tests skip, except under CI (env CI
set), where they fail. Screenshots of each important state go to test-artifacts/browser/ at the
repo root ($TEST_ARTIFACTS_DIR/browser/ when TEST_ARTIFACTS_DIR is set). Every wait is explicit
and bounded (WAIT_S).
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import requests
from PIL import Image, ImageDraw

from shared.web import CONTENT_SECURITY_POLICY
from tests import scenes
from tests.conftest import PRODUCT_COLOURS, REPO, TINY, person_wearing, start_gunicorn, stop

pytestmark = pytest.mark.timeout(300)

WAIT_S = 60
XSS_PRODUCT = "<img src=x onerror=alert(1)>"
# Failed requests the tests cause on purpose (the bad file's 415/422) are logged by the browser.
EXPECTED_CONSOLE = re.compile(r"Failed to load resource: the server responded with a status of 4\d\d")
# Records every alert() before it runs, so a payload that fired is seen even if the dialog is not.
ALERT_HOOK = """
window.__alerts = [];
const originalAlert = window.alert.bind(window);
window.alert = function (message) { window.__alerts.push(String(message)); return originalAlert(message); };
"""


def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _browser_binaries() -> tuple[str, str]:
    """(chromium, chromedriver), or skip the module (fail under CI) saying what is missing."""
    problems = []
    try:
        import selenium  # noqa: F401
    except ImportError:
        problems.append("the selenium package (requirements-dev.txt)")
    browser = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                    if shutil.which(name)), None)
    driver = shutil.which("chromedriver")
    if browser is None:
        problems.append("chromium")
    if driver is None:
        problems.append("chromedriver")
    if problems:
        message = (f"browser tests need {', '.join(problems)}; scripts/test.sh installs Debian's chromium and "
                   "chromium-driver with apt-get")
        if _ci():
            pytest.fail(message + " (CI is set: missing browser tooling is a failure, not a skip)", pytrace=False)
        pytest.skip(message)
    return browser, driver


@pytest.fixture(scope="module")
def artifacts() -> Path:
    root = Path(os.environ.get("TEST_ARTIFACTS_DIR") or REPO / "test-artifacts")
    directory = root / "browser"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture(scope="module")
def driver():
    browser, chromedriver = _browser_binaries()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,960", "--disable-extensions", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--lang=en-US"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # The driver's path is given: selenium's driver manager (which would download one) never runs.
    chrome = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    chrome.set_page_load_timeout(WAIT_S)
    chrome.set_script_timeout(WAIT_S)
    chrome.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": ALERT_HOOK})
    try:
        yield chrome
    finally:
        chrome.quit()


# ------------------------------------------------------------------ services

@pytest.fixture(scope="module")
def bg_server(oracle_weights):
    proc, base = start_gunicorn("bgremoval:create_app()", {
        "U2NET_HOME": str(oracle_weights), "GUNICORN_WORKERS": "2", "GUNICORN_THREADS": "2",
        "FETCH_ALLOW_HOSTS": "127.0.0.1"})  # the URL test's image host (conftest's upstream)
    yield base
    stop(proc)


@pytest.fixture(scope="module")
def xss_catalog(synthetic_catalog, tmp_path_factory) -> Path:
    """The synthetic catalog plus a product whose folder name is an XSS payload."""
    root = tmp_path_factory.mktemp("browser") / "catalog"
    shutil.copytree(synthetic_catalog, root)
    folder = root / XSS_PRODUCT
    folder.mkdir()
    for variant in range(2):  # a red top over blue trousers: no near-duplicate of another product's photos
        image = person_wearing(scenes.UPPER, variant, size=(260, 330))
        ImageDraw.Draw(image).rectangle((70 + variant * 4, 170, 170 - variant * 4, 310), fill=scenes.LOWER)
        image.save(folder / f"photo-{variant}.jpg", quality=95)
    return root


@pytest.fixture(scope="module")
def xss_index(xss_catalog, tiny_embedder, bg_pipeline, text_export, tmp_path_factory) -> Path:
    """Index of `xss_catalog`, with the tiny model's ONNX text export inside (as onnx_index)."""
    from search.garments import LocalGarments
    from search.indexing.builder import build_index
    from search.text_encoder import EXPORT_DIRNAME

    out = tmp_path_factory.mktemp("browser-index") / "index"
    report = build_index(xss_catalog, out, tiny_embedder, LocalGarments(bg_pipeline), progress=False)
    assert report.embedded == report.images, (report.skipped, report.warnings)
    shutil.copytree(text_export, out / EXPORT_DIRNAME)
    return out


@pytest.fixture(scope="module")
def search_server(xss_index, bg_server):
    proc, base = start_gunicorn("search:create_app()", {
        "CLIP_MODEL": TINY["model"], "CLIP_PRETRAINED": "", "CLIP_CONFIG_DIR": TINY["extra_config_dir"],
        "SEARCH_INDEX_DIR": str(xss_index), "BG_SERVICE_URL": bg_server,
        "GUNICORN_WORKERS": "2", "GUNICORN_THREADS": "2"})
    proc.base = base
    yield proc
    stop(proc)


# ------------------------------------------------------------------ helpers

def wait(driver, condition, message: str, timeout: float = WAIT_S):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: condition(d), message)


def shoot(driver, artifacts: Path, name: str, width: int = 1280) -> Path:
    """A screenshot of the whole page (the window is grown to the document's height)."""
    driver.set_window_size(width, 960)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, max(720, min(int(height) + 140, 4000)))
    path = artifacts / f"{name}.png"
    driver.save_screenshot(str(path))
    driver.set_window_size(1280, 960)
    return path


def console_problems(driver) -> list[str]:
    """Browser console entries at WARNING and above, less the failed requests made on purpose.
    A CSP violation shows here ("Refused to ... Content Security Policy")."""
    entries = driver.get_log("browser")
    return [f"{e['level']}: {e['message']}" for e in entries
            if e["level"] in ("SEVERE", "WARNING") and not EXPECTED_CONSOLE.search(e["message"])]


def assert_no_alert(driver) -> None:
    from selenium.common.exceptions import NoAlertPresentException

    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert  # noqa: B018 - the property raises when no dialog is open
    assert driver.execute_script("return window.__alerts") == []
    assert driver.execute_script(
        "return [...document.images].filter(i => i.getAttribute('src') === 'x' || /\\/x$/.test(i.src)).length") == 0


def assert_safe_headers(response) -> None:
    assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY, response.url
    assert response.headers["X-Content-Type-Options"] == "nosniff", response.url
    assert response.headers["Referrer-Policy"] == "no-referrer", response.url


def cards(driver) -> list[dict]:
    return driver.execute_script("""
        return [...document.querySelectorAll('#results li.card')].map(li => ({
            name: li.querySelector('.card-title').textContent,
            loaded: li.querySelector('img').complete && li.querySelector('img').naturalWidth > 0,
        }));""")


def results_shown(driver, status_part: str) -> list[dict]:
    """Waits until the status line mentions `status_part`, the results are there and every
    result's image has loaded; returns the cards."""
    from selenium.webdriver.common.by import By

    def ready(d):
        error = d.find_element(By.ID, "error")
        if error.is_displayed():
            raise AssertionError(f"the page shows an error: {error.text}")
        status = d.find_element(By.ID, "status").text
        found = cards(d)
        return status_part in status and found and all(c["loaded"] for c in found) and found
    return wait(driver, ready, f"results for {status_part!r} with their images")


def catalog_photo(catalog: Path, product: str = "1-red-top-shop-111") -> Path:
    return catalog / product / "photo-0.jpg"


def look_sections(driver) -> list[dict]:
    """The garment sections a photo query shows: heading, cards, and the thumbnail's size and
    centre pixel (RGBA) as drawn on its canvas (None when it has no canvas)."""
    return driver.execute_script("""
        return [...document.querySelectorAll('#look section.garment')].map(section => {
            const canvas = section.querySelector('canvas.garment-thumb');
            let thumb = null;
            if (canvas) {
                const rect = canvas.getBoundingClientRect();
                const pixel = canvas.getContext('2d').getImageData(canvas.width >> 1, canvas.height >> 1, 1, 1).data;
                thumb = {width: rect.width, height: rect.height, label: canvas.getAttribute('aria-label'),
                         centre: [...pixel]};
            }
            return {
                heading: section.querySelector('h3').textContent,
                cls: section.dataset.class,
                thumb,
                cards: [...section.querySelectorAll('li.card')].map(li => ({
                    name: li.querySelector('.card-title').textContent,
                    loaded: li.querySelector('img').complete && li.querySelector('img').naturalWidth > 0,
                })),
            };
        });""")


def look_shown(driver, status_part: str) -> list[dict]:
    """Waits until the status line mentions `status_part` and every garment section's results
    have loaded their images; returns the sections."""
    from selenium.webdriver.common.by import By

    def ready(d):
        error = d.find_element(By.ID, "error")
        if error.is_displayed():
            raise AssertionError(f"the page shows an error: {error.text}")
        if status_part not in d.find_element(By.ID, "status").text:
            return None
        sections = look_sections(d)
        return sections and all(s["cards"] and all(c["loaded"] for c in s["cards"]) for s in sections) and sections
    return wait(driver, ready, f"garment sections for {status_part!r} with their images")


def close_to(pixel, colour, tolerance: int = 40) -> bool:
    return all(abs(int(a) - int(b)) <= tolerance for a, b in zip(pixel[:3], colour, strict=True))


def top_over_trousers(path: Path) -> Path:
    """A person in a red top over blue trousers (scenes' colours), the top above the trousers."""
    image = person_wearing(scenes.UPPER, 0, size=(260, 340))
    ImageDraw.Draw(image).rectangle((60, 170, 180, 320), fill=scenes.LOWER)
    image.save(path, quality=95)
    return path


# ------------------------------------------------------------------ search page

def test_search_page_text_similar_and_photo(driver, search_server, xss_catalog, artifacts):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    base = search_server.base
    driver.get(base + "/")
    assert driver.title == "Product search"

    # Text query, submitted from the keyboard.
    box = driver.find_element(By.ID, "text")
    box.send_keys("red top")
    driver.find_element(By.CSS_SELECTOR, "#n option[value='12']").click()
    box.send_keys(Keys.ENTER)
    found = results_shown(driver, "matching “red top”")
    names = [c["name"] for c in found]
    products = len(PRODUCT_COLOURS) + 1  # the synthetic catalog's and the XSS one
    assert len(names) == products and len(set(names)) == products, names  # n=12: every product
    assert XSS_PRODUCT in names

    # The payload is text: found by its characters, no alert, no <img src=x>.
    title = driver.find_element(By.XPATH, f"//h3[@class='card-title' and text()='{XSS_PRODUCT}']")
    assert title.text == XSS_PRODUCT
    assert driver.execute_script("return arguments[0].children.length", title) == 0
    assert_no_alert(driver)
    shoot(driver, artifacts, "search-results")
    shoot(driver, artifacts, "search-results-narrow", width=420)

    # Results are reachable with Tab: heading (focused after a search) -> first photo link -> Similar.
    from selenium.webdriver.common.action_chains import ActionChains

    assert driver.execute_script("return document.activeElement.id") == "results-heading"
    ActionChains(driver).send_keys(Keys.TAB).perform()
    assert driver.execute_script("return document.activeElement.className") == "card-image"
    ActionChains(driver).send_keys(Keys.TAB).perform()
    focused = driver.execute_script("return [document.activeElement.tagName, document.activeElement.textContent,"
                                    " document.activeElement.closest('li').dataset.product]")
    assert focused[:2] == ["BUTTON", "Similar"] and focused[2] == names[0]

    # "Similar" (pressed with Enter): that product's nearest products, without itself.
    ActionChains(driver).send_keys(Keys.ENTER).perform()
    similar = results_shown(driver, f"similar to “{names[0]}”")
    similar_names = [c["name"] for c in similar]
    assert names[0] not in similar_names and set(similar_names) <= set(names), similar_names
    assert driver.find_element(By.ID, "results-heading").text == f"Similar to {names[0]}"
    shoot(driver, artifacts, "search-similar")

    # "Similar" on the XSS product: its name goes into the URL path percent-encoded, and back as text.
    driver.find_element(By.ID, "back").click()
    results_shown(driver, "matching “red top”")
    xss_card = driver.find_element(By.XPATH, f"//li[.//h3[text()='{XSS_PRODUCT}']]")
    xss_card.find_element(By.CSS_SELECTOR, "button.similar").click()
    xss_similar = results_shown(driver, f"similar to “{XSS_PRODUCT}”")
    assert XSS_PRODUCT not in [c["name"] for c in xss_similar]
    assert driver.find_element(By.ID, "results-heading").text == f"Similar to {XSS_PRODUCT}"
    assert_no_alert(driver)

    # Photo query: a catalog photo (a red top), its garment cut out by the bg service: one section.
    box.clear()
    driver.find_element(By.ID, "photo").send_keys(str(catalog_photo(xss_catalog)))
    wait(driver, lambda d: d.execute_script(
        "const i = document.getElementById('photo-thumb'); return i.complete && i.naturalWidth > 0"),
        "the photo's thumbnail")
    driver.find_element(By.ID, "search-button").click()
    [by_photo] = look_shown(driver, "1 garment found in your photo")
    assert by_photo["heading"] == "Upper-body garment" and len(by_photo["cards"]) == products, by_photo
    assert not driver.find_element(By.ID, "results").is_displayed()  # the text results' grid is hidden
    shoot(driver, artifacts, "search-photo-results")
    assert_no_alert(driver)

    assert console_problems(driver) == []


def test_search_page_look_shows_each_garment_of_the_photo(driver, search_server, artifacts, tmp_path):
    """A photo of a red top over blue trousers: one section per garment, its thumbnail cut from
    the photo by its box, its own result cards; "Similar" and "Back" work from them; "Search for"
    narrows the look to one class."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver.get(search_server.base + "/")
    assert not driver.find_element(By.ID, "look-classes").is_enabled()  # only with a photo
    driver.find_element(By.ID, "photo").send_keys(str(top_over_trousers(tmp_path / "look.jpg")))
    assert driver.find_element(By.ID, "look-classes").is_enabled()
    Select(driver.find_element(By.ID, "n")).select_by_value("6")
    driver.find_element(By.ID, "search-button").click()
    sections = look_shown(driver, "2 garments found in your photo")
    assert [s["heading"] for s in sections] == ["Upper-body garment", "Lower-body garment"], sections
    for section, colour in zip(sections, (scenes.UPPER, scenes.LOWER), strict=True):
        assert len(section["cards"]) == 6, section
        thumb = section["thumb"]
        assert thumb and round(thumb["height"]) == 96 and 0 < thumb["width"] <= 160, section
        assert close_to(thumb["centre"], colour), section  # the box of that garment, from the user's photo
    assert driver.execute_script("return document.querySelectorAll('#look .card-rank').length") == 12
    shoot(driver, artifacts, "search-look")
    shoot(driver, artifacts, "search-look-narrow", width=420)

    # "Similar" from the trousers' results, then back to the look with its thumbnails.
    lower = driver.find_element(By.CSS_SELECTOR, "#look section[data-class='lower']")
    first = lower.find_element(By.CSS_SELECTOR, "li.card")
    name = first.get_attribute("data-product")
    first.find_element(By.CSS_SELECTOR, "button.similar").click()
    results_shown(driver, f"similar to “{name}”")
    assert not driver.find_element(By.ID, "look").is_displayed()
    driver.find_element(By.ID, "back").click()
    again = look_shown(driver, "2 garments found in your photo")
    assert [s["thumb"]["centre"] for s in again] == [s["thumb"]["centre"] for s in sections]

    # "Search for": the lower body only.
    Select(driver.find_element(By.ID, "look-classes")).select_by_value("lower")
    driver.find_element(By.ID, "search-button").click()
    [only] = look_shown(driver, "1 garment found in your photo (lower only)")
    assert only["heading"] == "Lower-body garment" and close_to(only["thumb"]["centre"], scenes.LOWER)
    assert_no_alert(driver)
    assert console_problems(driver) == []


def test_search_page_shows_problem_details(driver, search_server, artifacts):
    """A refused query shows the service's problem detail; the page stays usable."""
    from selenium.webdriver.common.by import By

    driver.get(search_server.base + "/")
    driver.find_element(By.ID, "search-button").click()  # nothing typed: caught on the page
    error = driver.find_element(By.ID, "error")
    wait(driver, lambda d: error.is_displayed(), "the empty-query message")
    assert "Type a description or choose a photo." in error.text
    driver.find_element(By.ID, "text").send_keys("navy skirt")
    driver.find_element(By.ID, "search-button").click()
    results_shown(driver, "matching “navy skirt”")
    assert not error.is_displayed()
    assert console_problems(driver) == []


def test_search_headers_on_page_assets_and_json(search_server):
    base = search_server.base
    page = requests.get(base + "/", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert_safe_headers(page)
    assets = re.findall(r'(?:src|href)="(/assets/[^"]+)"', page.text)
    assert any(a.endswith(".js") for a in assets) and any(a.endswith(".css") for a in assets)
    for asset in {*assets, "/assets/shared/ui.js"}:
        response = requests.get(base + asset, timeout=10)
        assert response.status_code == 200, asset
        assert_safe_headers(response)
    answer = requests.post(base + "/", json={"text": "red top", "n": 3}, timeout=30)
    assert answer.status_code == 200 and answer.headers["Content-Type"] == "application/json"
    assert_safe_headers(answer)
    missing = requests.get(base + "/nope", timeout=10)
    assert missing.status_code == 404 and missing.headers["Content-Type"] == "application/problem+json"
    assert_safe_headers(missing)
    image = requests.get(base + answer.json()[0]["url"], timeout=10)
    assert image.status_code == 200 and image.headers["Content-Type"] == "image/jpeg"
    assert_safe_headers(image)


# ------------------------------------------------------------------ bg-removal page

def after_image(driver) -> dict:
    return driver.execute_script("""
        const img = document.getElementById('after'), link = document.getElementById('download');
        return {shown: !img.hidden, complete: img.complete, width: img.naturalWidth, height: img.naturalHeight,
                href: link.getAttribute('href'), download: link.getAttribute('download'), linkShown: !link.hidden};""")


def submit_and_wait_for_result(driver, photo: Path | None = None) -> dict:
    """Submits the form (uploading `photo` first if given) and waits for the result image."""
    from selenium.webdriver.common.by import By

    driver.execute_script("document.getElementById('after').removeAttribute('src')")
    if photo is not None:
        driver.find_element(By.ID, "file").send_keys(str(photo))
    driver.find_element(By.ID, "submit").click()

    def done(d):
        error = d.find_element(By.ID, "error")
        if error.is_displayed():
            raise AssertionError(f"the page shows an error: {error.text}")
        state = after_image(d)
        return state if state["shown"] and state["complete"] and state["width"] > 0 else None
    return wait(driver, done, "the result image")


def test_bg_page_upload_result_download_and_error(driver, bg_server, synthetic_catalog, artifacts, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver.get(bg_server + "/")
    assert driver.title == "Garment background removal"
    photo = catalog_photo(synthetic_catalog)
    with Image.open(photo) as original:
        size = original.size

    result = submit_and_wait_for_result(driver, photo)
    assert (result["width"], result["height"]) == size
    assert result["linkShown"] and result["href"].startswith("blob:")
    assert result["download"] == "photo-0-garment.jpg"
    before = driver.execute_script("const i = document.getElementById('before'); return [i.naturalWidth, i.naturalHeight]")
    assert tuple(before) == size
    shoot(driver, artifacts, "bg-result")

    # PNG: the download's extension follows the format.
    Select(driver.find_element(By.ID, "format")).select_by_value("png")
    result = submit_and_wait_for_result(driver, photo)
    assert (result["width"], result["height"]) == size and result["download"] == "photo-0-garment.png"
    Select(driver.find_element(By.ID, "format")).select_by_value("jpeg")

    # A text file named .jpg: the service's problem detail is shown, the result is cleared.
    bad = tmp_path / "notes.jpg"
    bad.write_text("this is not a photo\n" * 20)
    expected = requests.post(bg_server + "/", files={"file": ("notes.jpg", bad.read_bytes(), "image/jpeg")},
                             data={"format": "jpeg", "background": "#ffffff", "classes": "upper,lower,full"},
                             timeout=30)
    assert expected.headers["Content-Type"] == "application/problem+json", expected.text
    detail = expected.json()["detail"]
    driver.find_element(By.ID, "file").send_keys(str(bad))
    driver.find_element(By.ID, "submit").click()
    error = driver.find_element(By.ID, "error")
    wait(driver, lambda d: error.is_displayed(), "the error message")
    assert detail in error.text and expected.json()["title"] in error.text
    state = after_image(driver)
    assert not state["shown"] and not state["linkShown"]
    shoot(driver, artifacts, "bg-error")

    # The page still works: a good upload after the error succeeds and hides the error.
    result = submit_and_wait_for_result(driver, photo)
    assert (result["width"], result["height"]) == size
    assert not error.is_displayed()
    assert_no_alert(driver)
    assert console_problems(driver) == []


def test_bg_page_product_text_chooses_the_garments(driver, bg_server, artifacts, tmp_path):
    """The product's text ("Tunik": a tunic) keeps the upper and full-body garments: the street
    scene's red top stays, its blue trousers go; the boxes are off while the text is there."""
    from selenium.webdriver.common.by import By

    photo = tmp_path / "street.png"
    image, boxes = scenes.street_photo(300, 400)
    image.save(photo)
    driver.get(bg_server + "/")
    checkboxes = driver.find_elements(By.CSS_SELECTOR, "input[name='classes']")
    assert len(checkboxes) == 3 and all(c.is_enabled() for c in checkboxes)
    product = driver.find_element(By.ID, "product")
    product.send_keys("Tunik")
    assert not any(c.is_enabled() for c in checkboxes)

    submit_and_wait_for_result(driver, photo)
    status = driver.find_element(By.ID, "status").text
    assert "mask: garment · kept: upper, full (from the product: tunic)" in status, status
    # The result: the top kept, the trousers set to the (white) background.
    pixels = driver.execute_script("""
        const img = document.getElementById('after'), canvas = document.createElement('canvas');
        canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
        const context = canvas.getContext('2d', {willReadFrequently: true});  // read twice
        context.drawImage(img, 0, 0);
        return arguments[0].map(([x, y]) => [...context.getImageData(x, y, 1, 1).data]);""",
        [[(x0 + x1) // 2, (y0 + y1) // 2] for x0, y0, x1, y1 in (boxes["top"], boxes["trousers"])])
    assert close_to(pixels[0], scenes.UPPER) and close_to(pixels[1], (255, 255, 255)), pixels
    shoot(driver, artifacts, "bg-product")

    # Emptied: the boxes are back and chosen by hand.
    product.clear()
    product.send_keys(" ")  # spaces are no product text
    assert all(c.is_enabled() for c in checkboxes)
    driver.find_element(By.CSS_SELECTOR, "input[name='classes'][value='full']").click()
    submit_and_wait_for_result(driver)
    status = driver.find_element(By.ID, "status").text
    assert "kept: upper, lower (as chosen)" in status, status
    assert_no_alert(driver)
    assert console_problems(driver) == []


def test_bg_page_from_a_url_with_a_background_image_webp_and_crop(driver, bg_server, upstream,
                                                                    synthetic_catalog, artifacts):
    """URL mode: the "before" picture comes straight from the image host (the CSP allows http(s)
    images), the request is JSON; a background image instead of the colour; WebP; crop."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from tests.conftest import send_bytes

    photo = catalog_photo(synthetic_catalog, "3-yellow-dress-shop-333")
    with Image.open(photo) as original:
        size = original.size
    backdrop = io.BytesIO()
    Image.new("RGB", (300, 300), (236, 226, 208)).save(backdrop, "JPEG")
    upstream.routes["/looks/dress.jpg"] = lambda handler: send_bytes(handler, photo.read_bytes())
    upstream.routes["/backdrop.jpg"] = lambda handler: send_bytes(handler, backdrop.getvalue())

    driver.get(bg_server + "/")
    driver.find_element(By.CSS_SELECTOR, "input[name='source'][value='url']").click()
    assert not driver.find_element(By.ID, "file").is_displayed()
    driver.find_element(By.ID, "url").send_keys(upstream.base_url + "/looks/dress.jpg")
    driver.find_element(By.ID, "background-url").send_keys(upstream.base_url + "/backdrop.jpg")
    driver.find_element(By.ID, "format").click()  # leaves the URL field: its change event shows "before"
    Select(driver.find_element(By.ID, "format")).select_by_value("webp")
    wait(driver, lambda d: d.execute_script("const i = document.getElementById('before');"
                                            " return i.complete && i.naturalWidth > 0 && !i.hidden"),
         "the URL's before picture")
    assert not driver.find_element(By.ID, "background").is_enabled()  # the image replaces the colour

    result = submit_and_wait_for_result(driver)
    assert (result["width"], result["height"]) == size
    assert result["href"].startswith("blob:") and result["download"] == "dress-garment.webp"
    shoot(driver, artifacts, "bg-url-webp")

    Select(driver.find_element(By.ID, "crop")).select_by_value("garment")
    cropped = submit_and_wait_for_result(driver)
    assert cropped["width"] < size[0] and cropped["height"] < size[1], cropped
    assert cropped["download"] == "dress-garment.webp"
    assert_no_alert(driver)
    assert console_problems(driver) == []


def test_bg_headers_on_page_assets_and_answers(bg_server, synthetic_catalog):
    page = requests.get(bg_server + "/", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert_safe_headers(page)
    for asset in {*re.findall(r'(?:src|href)="(/assets/[^"]+)"', page.text), "/assets/shared/ui.js"}:
        response = requests.get(bg_server + asset, timeout=10)
        assert response.status_code == 200, asset
        assert_safe_headers(response)
    image = requests.post(bg_server + "/", data=catalog_photo(synthetic_catalog).read_bytes(),
                          headers={"Content-Type": "image/jpeg"}, timeout=30)
    assert image.status_code == 200 and image.headers["Content-Type"] == "image/jpeg"
    assert_safe_headers(image)
    problem = requests.post(bg_server + "/", json={"url": "ftp://nope"}, timeout=10)
    assert problem.status_code == 400 and problem.headers["Content-Type"] == "application/problem+json"
    assert_safe_headers(problem)
    assert json.loads(problem.text)["detail"]
