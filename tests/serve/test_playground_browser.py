"""The playground page at `/` of `lmforge serve`, driven in headless Chromium through Selenium.

A real uvicorn server on a free local port serves a tiny trained GPT; the browser types a prompt, presses
Generate and watches the streamed text arrive. Skipped when selenium, chromium or chromedriver is missing
(Debian: `apt-get install chromium chromium-driver`; .ci/run installs them when it can).
"""

import shutil
import threading

import pytest

from lmforge.serve import create_app
from tests.serve import test_server

# test_server's fixtures: the tiny trained GPT, and a real uvicorn server on a free port of 127.0.0.1 serving
# `server_app` (defined below, with this file's max_tokens limit).
lm, server = test_server.lm, test_server.server

pytest.importorskip("selenium", reason="selenium is not installed (pip install selenium)")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="headless browser tests need chromium and chromedriver (apt-get install chromium chromium-driver)",
)

MAX_TOKENS_LIMIT = 2000  # the server refuses more (the page must show that error); Stop interrupts this many
WAIT = 60  # seconds: generous, the CI machine is shared


@pytest.fixture(scope="module")
def server_app(lm):
    return create_app(lm, api_key="", max_tokens_limit=MAX_TOKENS_LIMIT)  # "": no key, whatever the env says


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--disable-extensions",
        "--no-first-run",
        "--window-size=1200,900",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT)
    yield driver
    driver.quit()


@pytest.fixture
def page(browser, server):
    """The playground freshly loaded, its generation section shown (after its /health call)."""
    browser.get(server + "/")
    wait = WebDriverWait(browser, WAIT)
    wait.until(lambda d: d.find_element(By.ID, "prompt").is_displayed())
    assert "(generate)" in browser.find_element(By.ID, "model").text
    return browser


def text_of(driver, element_id: str) -> str:
    return driver.execute_script("return document.getElementById(arguments[0]).textContent", element_id)


def set_field(driver, element_id: str, value) -> None:
    field = driver.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(str(value))


def watch_generated_text(driver) -> None:
    """Count, in the page, every change of the generated text: a streamed answer changes it chunk by chunk."""
    driver.execute_script("""
        window.__updates = [];
        new MutationObserver(() => {
          const spans = document.getElementById("output").querySelectorAll("span:not(.prompt)");
          if (spans.length) window.__updates.push(spans[spans.length - 1].textContent);
        }).observe(document.getElementById("output"), {childList: true, subtree: true, characterData: true});
    """)


def generate(driver, prompt: str, max_tokens: int, temperature: float = 0) -> None:
    """Type the prompt and the controls, press Generate, wait until the page is done (the button is back)."""
    set_field(driver, "prompt", prompt)
    set_field(driver, "max_tokens", max_tokens)
    set_field(driver, "temperature", temperature)
    driver.find_element(By.ID, "run").click()
    WebDriverWait(driver, WAIT).until(
        lambda d: (
            d.find_element(By.ID, "stop").get_attribute("disabled") is not None
            and d.find_element(By.ID, "run").is_enabled()
        )
    )


def generated(driver) -> str:
    return driver.execute_script(
        'const s = document.querySelectorAll("#output span:not(.prompt)"); return s.length ? s[s.length - 1].textContent : ""'
    )


def test_a_typed_prompt_streams_the_greedy_text_into_the_page_and_a_second_prompt_works(page, lm):
    watch_generated_text(page)
    generate(page, "alice ", max_tokens=40)
    expected = lm.generate("alice ", max_new_tokens=40, temperature=0)
    assert expected
    WebDriverWait(page, WAIT).until(lambda d: generated(d) == expected)
    assert text_of(page, "output") == "alice " + expected  # the prompt, then what the model wrote
    assert text_of(page, "gen-error") == ""
    updates = page.execute_script("return window.__updates")
    growing = [u for u in updates if u]
    # Streamed: the text grew over several chunks, each a prefix of the final text, not one block at the end.
    assert len(set(growing)) > 1, updates
    assert all(expected.startswith(u) for u in growing)

    generate(page, "bob meets", max_tokens=25)
    second = lm.generate("bob meets", max_new_tokens=25, temperature=0)
    WebDriverWait(page, WAIT).until(lambda d: generated(d) == second)
    assert text_of(page, "output") == "bob meets" + second and text_of(page, "gen-error") == ""


def test_a_server_error_is_shown_on_the_page_and_the_page_keeps_working(page, lm):
    generate(page, "carol ", max_tokens=MAX_TOKENS_LIMIT + 1)
    WebDriverWait(page, WAIT).until(lambda d: text_of(d, "gen-error"))
    error = text_of(page, "gen-error")
    assert "max_tokens" in error and str(MAX_TOKENS_LIMIT) in error, error
    assert generated(page) == ""  # nothing generated, the prompt alone is echoed
    assert page.find_element(By.ID, "gen-error").is_displayed()

    generate(page, "carol ", max_tokens=10)  # the same page recovers: the error goes, text streams
    expected = lm.generate("carol ", max_new_tokens=10, temperature=0)
    WebDriverWait(page, WAIT).until(lambda d: generated(d) == expected)
    assert text_of(page, "gen-error") == ""


def test_stop_aborts_a_long_generation_and_the_server_stops_it(page, server_app, lm, monkeypatch):
    # A sampled text may reach the end-of-sequence token before Stop is clicked: this one cannot.
    monkeypatch.setattr(type(lm.tokenizer), "eos_id", property(lambda self: None))
    stats = server_app.state.batcher.stats
    cancelled = stats.cancelled
    set_field(page, "prompt", "dave ")
    set_field(page, "max_tokens", MAX_TOKENS_LIMIT)
    set_field(page, "temperature", 0.8)
    page.find_element(By.ID, "run").click()
    WebDriverWait(page, WAIT).until(lambda d: generated(d))  # streaming has begun
    page.find_element(By.ID, "stop").click()
    WebDriverWait(page, WAIT).until(lambda d: d.find_element(By.ID, "run").is_enabled())
    assert text_of(page, "gen-error") == ""  # an abort is not an error
    assert text_of(page, "output").startswith("dave ") and 0 < len(generated(page)) < MAX_TOKENS_LIMIT
    for _ in range(3000):  # the server notices the closed connection at its next write
        if stats.cancelled > cancelled:
            break
        threading.Event().wait(0.01)
    assert stats.cancelled == cancelled + 1
