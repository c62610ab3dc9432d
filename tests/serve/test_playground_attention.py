"""The playground's attention heatmaps for a served GPT, in headless Chromium: the table of query rows x key
columns shows the model's own weights (lmforge.explain.attentions) and follows the layer and head selectors."""

import pytest
import torch

import lmforge
from lmforge.explain import attentions
from lmforge.serve import create_app
from tests.serve import test_playground_browser as playground
from tests.serve import test_server
from tests.serve.test_attention_endpoint import TEXT, gpt  # noqa: F401 - the fixture

pytest.importorskip("selenium", reason="selenium is not installed (pip install selenium)")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

server, browser = test_server.server, playground.browser
pytestmark = playground.pytestmark


@pytest.fixture(scope="module")
def server_app(gpt):  # noqa: F811
    return create_app(str(gpt), api_key="")


def _drawn(driver) -> list[list[float]]:
    return driver.execute_script(
        "return [...document.querySelectorAll('#attn-map tbody tr')]"
        ".map(r => [...r.querySelectorAll('td')].map(c => Number(c.dataset.weight)))"
    )


def test_the_playground_draws_the_heatmap_of_the_chosen_layer_and_head(browser, server, gpt):  # noqa: F811
    maps = attentions(lmforge.load(gpt), TEXT)
    browser.get(server + "/")
    wait = WebDriverWait(browser, playground.WAIT)
    wait.until(lambda d: d.find_element(By.ID, "attn-text").is_displayed())
    playground.set_field(browser, "attn-text", TEXT)
    browser.find_element(By.ID, "attn-run").click()
    n = len(maps.queries["self"])
    wait.until(lambda d: len(_drawn(d)) == n)

    def shows(layer: int, head: int) -> bool:
        drawn = _drawn(browser)
        return len(drawn) == n and torch.allclose(
            torch.tensor(drawn), maps.maps["self"][layer][head], atol=1e-6
        )

    assert shows(0, 0)
    heads = [h.text for h in browser.find_elements(By.CSS_SELECTOR, "#attn-head option")]
    assert heads == ["0", "1"]
    Select(browser.find_element(By.ID, "attn-head")).select_by_value("1")
    wait.until(lambda d: shows(0, 1))
    Select(browser.find_element(By.ID, "attn-layer")).select_by_value("1")  # asks the server for layer 1
    wait.until(lambda d: shows(1, 1))
    keys = browser.execute_script(
        "return [...document.querySelectorAll('#attn-map thead th')].map(t => t.textContent)"
    )
    assert keys[1:] == maps.keys["self"]
    assert "layer 1, head 1" in playground.text_of(browser, "attn-info")
    assert playground.text_of(browser, "attn-error") == ""
