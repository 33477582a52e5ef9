"""The web page in a real headless Chromium (Debian's `chromium` + Playwright): upload a photo, see the
prediction; with a real catalog (the server's own routes, no mocks), see the product grid, click a product
for similar ones, list a category's products from the tree, and lay the Grad-CAM heat map over the photo.
Screenshots go to test-artifacts/ (gitignored)."""

from __future__ import annotations

import re
import shutil
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest

from skulens.recognition.recognizer import Recognizer
from skulens.serving import ServeConfig, create_app
from tests.conftest import COLOURS, coloured_photo
from tests.helpers import ARTIFACTS, wait_until

CHROMIUM = (
    shutil.which("chromium")
    or shutil.which("chromium-browser")
    or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium; `make test` does it)"
    ),
]
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="needs Playwright (pip install playwright; `make test` does it)"
)


@contextmanager
def live_server(config: ServeConfig, app=None):
    """The real app under uvicorn on a free loopback port, in a thread of this process (``app``: the
    app made from ``config``, wrapped, e.g. to log requests)."""
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(app or create_app(config), host="127.0.0.1", port=0, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()

    def started() -> bool:
        assert thread.is_alive(), "uvicorn stopped before it started"
        return server.started

    wait_until(started, 20, message="uvicorn did not start within 20 s")
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def recognizer(trained_run):
    return Recognizer.load(trained_run[0])


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    yield page
    context.close()


def screenshot(page, name: str, tmp_path: Path) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    shutil.copy(path, tmp_path / name)
    assert path.stat().st_size > 5_000
    return path


def colour_shop(folder: Path, run: Path) -> Path:
    """A catalog of six products (two per colour, under Paint > colour), embedded by the run's model."""
    from skulens.catalog import Catalog, Embedder, Product

    (folder / "img").mkdir(parents=True)
    products = []
    for c, (name, colour) in enumerate(COLOURS.items()):
        for i in range(2):
            path = folder / "img" / f"{name}{i}.jpg"
            coloured_photo(colour, 9000 + 10 * c + i, size=64).save(path)
            products.append(
                Product(
                    sku=f"{name.upper()}-{i}",
                    title=f"{name.title()} paint {i}",
                    category_path=["Paint", name],
                    images=[str(path)],
                )
            )
    with Catalog.open(folder / "shop.db", Embedder.from_run(run, device="cpu")) as catalog:
        assert not catalog.upsert(products).rejected
    return folder / "shop.db"


def test_upload_a_photo_and_see_the_prediction(page, recognizer, trained_run, tmp_path):
    photo = sorted((trained_run[1] / "test" / "blue").glob("*.jpg"))[0]
    expected = recognizer.predict(photo)
    with live_server(ServeConfig(recognizer=recognizer)) as url:
        page.goto(url)
        sync_api.expect(page.locator("#model-info")).to_contain_text("seedcnn")
        assert page.locator("#camera-input").get_attribute("capture") == "environment"
        assert page.locator("#api-key-row").is_hidden()  # reads are open on this server
        page.set_input_files("#file-input", str(photo))
        sync_api.expect(page.locator("#result")).to_be_visible(timeout=15_000)
        sync_api.expect(page.locator("#category-path")).to_contain_text(expected.label)
        sync_api.expect(page.locator("#top-k tr")).to_have_count(len(expected.top_k))
        assert page.locator("#top-k tr").first.locator(".label").inner_text() == expected.label
        assert page.locator("#products-panel").is_hidden()  # no catalog yet
        assert page.locator("#preview").is_visible()
        screenshot(page, "web-page-prediction.png", tmp_path)

        # A file that is not a photo: a readable error, and no stale prediction.
        page.set_input_files(
            "#file-input", files=[{"name": "notes.jpg", "mimeType": "image/jpeg", "buffer": b"not an image at all"}]
        )
        sync_api.expect(page.locator("#error")).to_be_visible()
        sync_api.expect(page.locator("#error")).to_contain_text("not an image")
        assert page.locator("#result").is_hidden()
    assert page.errors == []


def test_products_grid_similar_products_category_tree_and_heat_map(page, recognizer, trained_run, tmp_path):
    """Against the real catalog routes: search results, similar products, browsing a category, Grad-CAM."""
    db = colour_shop(tmp_path / "shop", trained_run[0])
    photo = sorted((trained_run[1] / "test" / "blue").glob("*.jpg"))[0]
    with live_server(ServeConfig(recognizer=recognizer, catalog_db=db, catalog_run=trained_run[0])) as url:
        page.goto(url)
        sync_api.expect(page.locator("#tree-panel")).to_be_visible()
        page.locator("#tree summary .count").first.click()  # opens the branch; the name button lists products
        sync_api.expect(page.locator("#tree")).to_contain_text("blue(2)")
        page.locator("#tree button.category", has_text="green").click()
        browse = page.locator("#browse .card")
        sync_api.expect(browse).to_have_count(2)
        sync_api.expect(page.locator("#browse-title")).to_have_text("Paint › green")
        sync_api.expect(browse.first).to_contain_text("Green paint 0")
        assert page.locator("#browse-more").is_hidden()

        page.set_input_files("#file-input", str(photo))
        cards = page.locator("#products .card")
        sync_api.expect(cards).to_have_count(6, timeout=15_000)
        sync_api.expect(cards.first).to_contain_text("Blue paint")
        sync_api.expect(cards.nth(1)).to_contain_text("Blue paint")
        sync_api.expect(cards.first.locator(".score")).to_contain_text("%")
        first_image = cards.first.locator("img")
        assert re.search(r"/v1/products/BLUE-[01]/image$", first_image.get_attribute("src"))
        page.wait_for_function("img => img.complete && img.naturalWidth === 64", arg=first_image.element_handle())

        first_title = cards.first.locator(".title").inner_text()
        cards.first.click()
        sync_api.expect(page.locator("#similar-panel")).to_be_visible()
        sync_api.expect(page.locator("#similar-title")).to_have_text(f"Similar to {first_title}")
        similar = page.locator("#similar .card")
        sync_api.expect(similar.first).to_contain_text("Blue paint")
        sync_api.expect(similar.first).not_to_contain_text(first_title)

        # The heat map replaces the preview with the server's overlay (the 48-px photo drawn at 256 px).
        preview = page.locator("#preview")
        assert page.locator("#heatmap-row").is_visible()
        page.check("#heatmap-toggle")
        page.wait_for_function(
            "img => img.complete && img.naturalWidth === 256", arg=preview.element_handle(), timeout=15_000
        )
        assert preview.get_attribute("src").startswith("blob:")
        screenshot(page, "web-page-products.png", tmp_path)
        page.uncheck("#heatmap-toggle")
        page.wait_for_function("img => img.complete && img.naturalWidth === 48", arg=preview.element_handle())

        # Words: alone, then refining the blue photo ("this, but green").
        assert page.locator("#text-search").is_visible() and page.locator("#refine-row").is_visible()
        page.uncheck("#refine-toggle")
        page.fill("#search-words", "green paint")
        page.locator("#text-search button").click()
        # the first search by meaning loads the sentence model: seconds on a busy 2-core machine
        sync_api.expect(page.locator("#products-title")).to_have_text("Products for “green paint”", timeout=60_000)
        sync_api.expect(cards.first).to_contain_text("Green paint")
        page.check("#refine-toggle")
        page.fill("#search-words", "in green")
        page.locator("#text-search button").click()
        sync_api.expect(page.locator("#products-title")).to_have_text("Like the photo, in green", timeout=30_000)
        sync_api.expect(cards.first).to_contain_text("Green paint")
        page.fill("#search-words", "the of and")  # only common words: the server's message, not a crash
        page.locator("#text-search button").click()
        sync_api.expect(page.locator("#error")).to_contain_text("only common words")
    assert page.errors == []


def test_protected_server_asks_for_a_key(page, recognizer, trained_run):
    from skulens.serving.security import hash_key, new_key

    key = new_key()
    photo = sorted((trained_run[1] / "test" / "red").glob("*.jpg"))[0]
    with live_server(ServeConfig(recognizer=recognizer, api_key_hashes={hash_key(key)}, protect_reads=True)) as url:
        page.goto(url)
        sync_api.expect(page.locator("#api-key-row")).to_be_visible()
        page.set_input_files("#file-input", str(photo))
        sync_api.expect(page.locator("#error")).to_contain_text("needs an API key")
        page.fill("#api-key", key)
        page.set_input_files("#file-input", str(photo))
        sync_api.expect(page.locator("#result")).to_be_visible(timeout=15_000)
        assert page.locator("#error").is_hidden()
    assert page.errors == []
