"""`acgan serve`'s page in a real headless browser: pick a class, generate, see a PNG of the right size."""

from __future__ import annotations

import shutil
import socket
import threading
import time

import pytest
from data_fixtures import generator_checkpoint

from acgan.generator import load_generator

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# The flags a closed network needs: no background fetches whose refusals would slow every start.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium here (.ci/run installs Debian's package)")


@pytest.fixture
def server(tmp_path):
    """A real uvicorn server on a free port of 127.0.0.1, in a thread; yields its URL."""
    uvicorn = pytest.importorskip("uvicorn")
    from acgan.serve import create_app

    app = create_app(load_generator(generator_checkpoint(tmp_path / "last.pt"), "cpu"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:  # uvicorn sets this once it listens; there is no event to wait on
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(timeout=30)


def test_the_page_draws_the_chosen_class(server):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 390, "height": 844})  # a phone-sized window
            page.goto(server)
            page.wait_for_function("document.querySelectorAll('#class option').length === 11")
            assert "paper generator, shapes, step 7" in page.text_content("#about")
            page.select_option("#class", label="star")
            page.fill("#num", "4")
            page.fill("#seed", "3")
            page.keyboard.press("Enter")  # the form submits from the keyboard, as a button click would
            page.wait_for_function("document.querySelector('#picture').naturalWidth > 0")
            width, height = page.evaluate("[picture.naturalWidth, picture.naturalHeight]")
            assert (width, height) == (4 * 34 + 2, 34 + 2)  # four 32 px images in one row, 2 px borders
            assert "4 images of star, seed 3" in page.text_content("#status")
            assert page.get_attribute("#download", "download").endswith(".png")
            page.select_option("#class", value="all")
            page.fill("#num", "30")  # 30 of each of 10 classes: over the server's limit, within the input's
            page.click("#generate")
            page.wait_for_function("document.querySelector('#status').className === 'error'")
            assert "over the maximum of 256" in page.text_content("#status")
        finally:
            browser.close()
