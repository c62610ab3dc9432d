"""The playground's Explain button for a served classifier, in headless Chromium: the first text's words come back
coloured by their Integrated Gradients attribution (the deciding word the most strongly)."""

import pytest

from lmforge.serve import create_app
from tests.serve import test_playground_browser as playground
from tests.serve import test_server
from tests.test_explain import TEXT, classifier  # noqa: F401 - the fixture

server = test_server.server
browser = playground.browser
pytestmark = playground.pytestmark

pytest.importorskip("selenium", reason="selenium is not installed (pip install selenium)")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def server_app(classifier):  # noqa: F811
    return create_app(str(classifier), api_key="", device="cpu")


def test_explain_colours_the_words(browser, server):
    browser.get(server + "/")
    wait = WebDriverWait(browser, playground.WAIT)
    wait.until(lambda d: d.find_element(By.ID, "texts").is_displayed())
    playground.set_field(browser, "texts", TEXT)
    browser.find_element(By.ID, "explain-run").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#explanation .word")) == len(TEXT.split()))
    words = browser.execute_script(
        "return [...document.querySelectorAll('#explanation .word')].map(s => [s.textContent, Number(s.title)])"
    )
    assert [w for w, _ in words] == TEXT.split()
    assert max(words, key=lambda p: p[1])[0] == "superb"
    assert "Why pos" in playground.text_of(browser, "explanation")
    assert playground.text_of(browser, "cls-error") == ""
