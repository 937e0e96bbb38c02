"""The web page in a real headless Chromium: upload a photo, see the grid, click a result."""

from __future__ import annotations

import re
import shutil

import pytest
from playwright.sync_api import expect

from tests.conftest import draw_item

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium binary: `make test` installs Debian's chromium (apt-get install chromium)"
)


@pytest.fixture(scope="session")
def browser_type_launch_args():
    return {
        "executable_path": CHROMIUM,
        "args": ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
    }


def test_upload_then_click_a_result(page, live_url, tmp_path):
    photo = tmp_path / "photo.png"
    draw_item("green_square", 1).save(photo)
    page.goto(live_url)
    page.fill("#k", "5")
    page.set_input_files("#file", str(photo))
    results = page.locator("#results li")
    results.nth(4).wait_for()
    assert results.count() == 5
    assert "photo.png" in page.inner_text("#query-caption")
    assert page.locator("#results li .score").first.inner_text().startswith("score ")

    clicked = results.nth(2).get_attribute("data-id")
    assert results.nth(2).locator(".id").inner_text() == clicked
    assert results.nth(2).locator(".field").inner_text().startswith("colour: ")  # DISPLAY_FIELDS=colour
    results.nth(2).locator("img").click()
    # Web-first assertions (no script evaluated in the page: its CSP forbids eval).
    expect(page.locator("#query-caption")).to_have_text(re.compile("^" + re.escape(clicked)))
    expect(results).to_have_count(5)
    expect(page.locator(f'#results li[data-id="{clicked}"]')).to_have_count(0)


def test_category_filter_and_errors_are_shown(page, live_url, tmp_path):
    page.goto(live_url)
    page.locator("#category option").nth(1).wait_for(state="attached")
    page.select_option("#category", "blue_bar")
    page.click("#random")
    page.locator("#results li").first.wait_for()
    categories = page.locator("#results li .category").all_inner_texts()
    assert categories and set(categories) == {"blue_bar"}

    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not an image")
    page.set_input_files("#file", str(not_an_image))
    page.locator("#error").wait_for(state="visible")
    assert "not an image" in page.inner_text("#error")
    expect(page.locator("#results li")).to_have_count(0)  # no stale results under the error
    expect(page.locator("#query")).to_be_hidden()


def test_colour_slider_reruns_the_search_with_its_weight(page, live_url):
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(live_url)
    assert page.input_value("#colour") == "0.2"  # the configured default (COLOUR_WEIGHT)
    page.click("#random")
    page.locator("#results li").first.wait_for()
    page.fill("#colour", "1")  # a range input: sets the value and fires input + change
    expect(page.locator("#colour-value")).to_have_text("1")
    expect(page.locator("#status")).to_contain_text("results")
    similar = [url for url in requests if "/similar?" in url]
    assert "colour_weight=0.2" in similar[0] and "colour_weight=1" in similar[-1] and len(similar) == 2


def test_the_colour_picker_searches_like_this_but_in_that_colour(page, live_url):
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(live_url)
    page.click("#random")
    page.locator("#results li").first.wait_for()
    page.fill("#target-colour", "#1ec83c")
    page.check("#in-colour")
    expect(page.locator("#status")).to_contain_text("results")
    page.wait_for_timeout(300)
    last = [url for url in requests if "/similar?" in url][-1]
    assert "colour=%231ec83c" in last and "colour_weight=0.2" in last


def test_the_api_docs_render_with_every_other_host_blocked(page, live_url):
    blocked: list[str] = []

    def only_the_service(route):
        if route.request.url.startswith(live_url):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    page.route("**/*", only_the_service)
    page.goto(f"{live_url}/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("lookalike")
    expect(page.locator(".opblock-summary-path").first).to_be_visible()
    assert blocked == []  # it asked for nothing elsewhere


def test_keyboard_only_reaches_a_result_and_opens_its_look_alikes(page, live_url):
    page.goto(live_url)
    page.click("#random")
    page.locator("#results li").first.wait_for()
    page.locator("#random").focus()
    for _ in range(40):
        page.keyboard.press("Tab")
        if page.locator("#results .tile:focus").count():
            break
    focused = page.locator("#results .tile:focus")
    expect(focused).to_have_count(1)
    chosen = page.locator("#results li:has(.tile:focus)").get_attribute("data-id")
    page.keyboard.press("Enter")
    expect(page.locator("#query-caption")).to_have_text(re.compile("^" + re.escape(chosen)))


def test_the_page_fits_a_phone_without_horizontal_scrolling(page, live_url):
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(live_url)
    page.click("#random")
    page.locator("#results li").nth(3).wait_for()
    for selector in ("header", "#controls > *", "#query", "#results li"):
        for box in (element.bounding_box() for element in page.locator(selector).all()):
            assert box is None or box["x"] + box["width"] <= 390, (selector, box)


def test_with_protect_reads_the_page_asks_for_the_key_and_then_works(page, settings, encoder, store, ingested):
    import threading

    from werkzeug.serving import make_server

    from service import create_app
    from tests.conftest import API_KEY

    app = create_app(settings.model_copy(update={"protect_reads": True}), encoder=encoder, store=store)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        page.goto(f"http://127.0.0.1:{server.server_port}")
        page.locator("#error").wait_for(state="visible")  # without the key: 401, shown in words
        page.fill("#api-key", API_KEY)
        page.locator("#api-key").dispatch_event("change")
        page.click("#random")
        page.locator("#results li").first.wait_for()
        expect(page.locator("#error")).to_be_hidden()
        first = page.locator("#results li img").first
        expect(first).to_have_attribute("src", re.compile("^blob:"))  # fetched with the key
    finally:
        server.shutdown()
        app.extensions["lookalike"].inference.close()


def test_dragging_a_box_on_the_photo_searches_with_that_part(page, live_url, tmp_path):
    from PIL import Image

    photo = Image.new("RGB", (128, 48), "white")  # two products side by side
    photo.paste(draw_item("red_round", 1), (0, 0))
    photo.paste(draw_item("blue_bar", 1), (64, 0))
    path = tmp_path / "two.png"
    photo.save(path)
    searches: list[str] = []
    page.on("request", lambda request: searches.append(request.url) if "/v1/search" in request.url else None)
    page.goto(live_url)
    page.set_input_files("#file", str(path))
    page.locator("#results li").first.wait_for()
    expect(page.locator("#box-hint")).to_be_visible()
    shown = page.locator("#query-image").bounding_box()

    def drag(x0: float, x1: float) -> None:
        page.mouse.move(shown["x"] + x0 * shown["width"], shown["y"] + 2)
        page.mouse.down()
        page.mouse.move(shown["x"] + x1 * shown["width"], shown["y"] + shown["height"] - 2, steps=5)
        page.mouse.up()

    drag(0.02, 0.48)
    expect(page.locator("#query-caption")).to_contain_text("the boxed part")
    expect(page.locator("#results li .category").first).to_have_text("red_round")
    assert "box=0.0" in searches[-1]
    drag(0.98, 0.52)  # dragged right to left: the same box
    expect(page.locator("#results li .category").first).to_have_text("blue_bar")
    expect(page.locator("#query-box")).to_be_visible()
    page.click("#whole-photo")
    expect(page.locator("#query-caption")).to_have_text("two.png")
    expect(page.locator("#query-box")).to_be_hidden()
    assert "box=" not in searches[-1]


def test_words_search_by_text_alone_and_with_the_photo_shown(page, live_url, tmp_path):
    posts: list[bytes] = []  # multipart bodies (Chromium hands over none for bodies with a file part)
    page.on("request", lambda r: posts.append(r.post_data_buffer or b"") if "/v1/search" in r.url else None)
    page.goto(live_url)
    page.fill("#words", "a round red thing")
    page.click("#search-words")
    expect(page.locator("#query-caption")).to_have_text("“a round red thing”")
    page.locator("#results li").first.wait_for()
    expect(page.locator("#query-image")).to_be_hidden()
    assert b'name="text"' in posts[-1] and b'name="image"' not in posts[-1]
    photo = tmp_path / "photo.png"
    draw_item("blue_bar", 1).save(photo)
    page.set_input_files("#file", str(photo))
    expect(page.locator("#query-caption")).to_have_text("photo.png")
    page.fill("#words", "striped")
    page.press("#words", "Enter")
    expect(page.locator("#query-caption")).to_have_text("photo.png + “striped”")  # set from the same `file`
    assert len(posts) == 3  # words, the photo, the photo with words


def test_numeric_fields_get_range_and_boost_inputs_and_variety_a_slider(page, settings, encoder, store, ingested):
    """FILTERABLE_FIELDS=price:number: the page filters by a price range and boosts by price."""
    import threading

    from werkzeug.serving import make_server

    from lookalike.looks import looks_of
    from lookalike.points import StoredItem
    from service import create_app

    priced = [
        StoredItem(f"p{n}", "priced", "x.jpg", "0" * 64, encoder.identity, metadata={"price": n}) for n in (5, 15, 25)
    ]
    store.upsert(priced, looks_of(encoder, [draw_item("red_round", i) for i in (1, 2, 3)]))
    numeric = {"filterable_fields": ["price:number"], "display_fields": ["price"]}
    app = create_app(settings.model_copy(update=numeric), encoder=encoder, store=store)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def shown_prices() -> list[float]:
        return [float(text.split(": ")[1]) for text in page.locator("#results li .field").all_inner_texts()]

    def rerun(url_part: str, change) -> None:
        with page.expect_response(lambda response: url_part in response.url):
            change()
        page.wait_for_timeout(100)  # the answer painted

    try:
        page.goto(f"http://127.0.0.1:{server.server_port}")
        page.locator("#category option").nth(1).wait_for(state="attached")
        page.select_option("#category", "priced")
        page.fill("#k", "10")
        page.click("#random")
        page.locator("#results li").first.wait_for()
        prices = page.locator('fieldset.numeric[data-field="price"]')
        prices.locator(".gte").fill("10")
        rerun("filter.price.gte=10", lambda: prices.locator(".gte").dispatch_event("change"))
        assert shown_prices() and all(price >= 10 for price in shown_prices())
        prices.locator(".gte").fill("")
        prices.locator(".boost").fill("1")
        rerun("boost.price=1", lambda: prices.locator(".boost").dispatch_event("change"))
        assert shown_prices() == sorted(shown_prices(), reverse=True) and len(shown_prices()) == 2
        rerun("diversity=0.5", lambda: page.fill("#diversity", "0.5"))
        expect(page.locator("#results li")).to_have_count(2)
    finally:
        server.shutdown()
        app.extensions["lookalike"].inference.close()
