"""`acgan serve`: the HTTP API through FastAPI's test client, and its answers to bad requests."""

from __future__ import annotations

import io

import pytest
from data_fixtures import generator_checkpoint
from PIL import Image

from acgan.cli import build_parser, main
from acgan.data import SHAPE_NAMES
from acgan.generator import load_generator

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from acgan.serve import MAX_IMAGES, create_app  # noqa: E402

K = len(SHAPE_NAMES)
CELL = 32 + 2  # one image and its border in a grid (sample.make_grid)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return generator_checkpoint(tmp_path_factory.mktemp("serve") / "last.pt", step=7)


@pytest.fixture(scope="module")
def client(checkpoint):
    return TestClient(create_app(load_generator(checkpoint, "cpu")))


def _png_size(response) -> tuple[int, int]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return Image.open(io.BytesIO(response.content)).size  # (width, height)


def test_info_describes_the_generator(client):
    info = client.get("/api/info").json()
    assert info["classes"] == list(SHAPE_NAMES) and info["num_classes"] == K
    assert (info["image_size"], info["nz"], info["arch"], info["step"], info["dataset"]) == (32, 100, "paper", 7,
                                                                                             "shapes")


def test_sample_of_one_class_by_name_or_index(client):
    by_name = client.get("/api/sample.png", params={"class": "Square", "num": 5, "seed": 3})
    by_index = client.get("/api/sample.png", params={"class": "1", "num": 5, "seed": 3})
    assert _png_size(by_name) == (5 * CELL + 2, CELL + 2)
    assert by_name.content == by_index.content


def test_the_same_seed_draws_the_same_images_across_restarts(client, checkpoint):
    params = {"class": "star", "num": 4, "seed": 12345}
    first = client.get("/api/sample.png", params=params).content
    client.get("/api/sample.png", params={**params, "seed": 1})  # something else drawn in between
    restarted = TestClient(create_app(load_generator(checkpoint, "cpu")))
    assert restarted.get("/api/sample.png", params=params).content == first
    assert client.get("/api/sample.png", params={**params, "seed": 12346}).content != first


def test_every_class_sweep_and_interpolation_have_their_layouts(client):
    assert _png_size(client.get("/api/sample.png", params={"num": 3})) == (3 * CELL + 2, K * CELL + 2)
    assert _png_size(client.get("/api/sweep.png", params={"num": 2, "seed": 1})) == (K * CELL + 2, 2 * CELL + 2)
    one = client.get("/api/interpolate.png", params={"class": "ring", "steps": 5})
    assert _png_size(one) == (5 * CELL + 2, CELL + 2)
    assert _png_size(client.get("/api/interpolate.png", params={"steps": 4})) == (4 * CELL + 2, K * CELL + 2)


@pytest.mark.parametrize("url,params,words", [
    ("/api/sample.png", {"class": "dragon"}, "unknown class 'dragon'"),
    ("/api/sample.png", {"class": "../../etc/passwd"}, "unknown class"),
    ("/api/sample.png", {"class": "3", "num": 0}, "num must be between 1"),
    ("/api/sample.png", {"class": "3", "num": MAX_IMAGES + 1}, "num must be between"),
    ("/api/sample.png", {"num": 30}, f"over the maximum of {MAX_IMAGES}"),
    ("/api/sample.png", {"seed": "abc"}, "seed must be an integer"),
    ("/api/sample.png", {"seed": "-1"}, "seed must be between 0"),
    ("/api/sweep.png", {"num": 1.5}, "num must be an integer"),
    ("/api/interpolate.png", {"steps": 1}, "steps must be between 2"),
])
def test_a_bad_request_is_a_400_naming_the_problem_and_serving_goes_on(client, url, params, words):
    response = client.get(url, params=params)
    assert response.status_code == 400 and response.headers["content-type"] == "application/json"
    assert words in response.json()["error"]
    assert client.get("/api/sample.png", params={"class": "0", "num": 1}).status_code == 200


def test_the_page_is_plain_html_that_uses_the_api(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert '<meta name="viewport"' in html and "/api/info" in html and 'show("sample"' in html
    assert all(f'id="{i}"' in html for i in ("class", "num", "seed", "generate", "new-seed", "sweep", "download"))
    assert client.get("/docs").status_code == 404  # nothing else is served


def test_serve_listens_on_this_machine_only_by_default():
    args = build_parser().parse_args(["serve", "--checkpoint", "x.pt"])
    assert (args.host, args.port) == ("127.0.0.1", 8000)


def test_serve_refuses_a_port_in_use_and_a_bad_checkpoint_in_one_line(checkpoint, capsys):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--checkpoint", str(checkpoint), "--port", str(port), "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"cannot listen on 127.0.0.1:{port}" in err[0]
    assert main(["serve", "--checkpoint", str(checkpoint.parent / "missing.pt")]) == 1
    assert "checkpoint not found" in capsys.readouterr().err
