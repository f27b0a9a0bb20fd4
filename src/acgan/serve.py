"""`acgan serve`: a web page and an HTTP API that draw a trained generator's images by class.

    GET /                     the page (plain HTML + JS, no build step)
    GET /api/info             JSON: classes, image size, nz, arch, step
    GET /api/sample.png       ?class=NAME_OR_INDEX (or all)&num=N&seed=S   a PNG grid
    GET /api/sweep.png        ?seed=S&num=N     one z per row through every class
    GET /api/interpolate.png  ?class=C (or all)&seed=S&steps=K

A bad request is a 400 with {"error": "..."} naming the problem; the server reads no path from a request and
serves only the generator it was started with. Needs the `serve` extra: pip install 'acgan[serve]'.
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations at runtime, and
# the Request class they name is imported inside create_app (FastAPI is an optional extra).
import socket
import threading
from collections.abc import Callable, Mapping
from importlib.resources import files
from typing import Any

import torch

from acgan.errors import UserError
from acgan.generator import TrainedGenerator
from acgan.sample import png_bytes

MAX_IMAGES = 256  # images per request: a grid of 256 CIFAR images is ~0.3 MB and well under a second on a CPU
MAX_STEPS = 64  # points on an interpolation path
MAX_SEED = 2**63 - 1


class BadRequest(ValueError):
    """A request parameter that cannot be served; becomes a 400 with its message."""


def int_param(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter within [low, high], or BadRequest naming it."""
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, got {raw[:40]!r}") from None
    if not low <= value <= high:
        raise BadRequest(f"{name} must be between {low} and {high}, got {value}")
    return value


def class_param(gen: TrainedGenerator, params: Mapping[str, str]) -> int | None:
    """The class a request names (index or name), None for all classes; unknown -> BadRequest."""
    raw = params.get("class", "all").strip()
    if raw.lower() in ("", "all"):
        return None
    try:
        return gen.class_index(raw)
    except UserError as e:
        raise BadRequest(str(e)) from None


def _check_count(count: int, what: str) -> None:
    if count > MAX_IMAGES:
        raise BadRequest(f"{what} makes {count} images, over the maximum of {MAX_IMAGES} per request")


def render(gen: TrainedGenerator, kind: str, params: Mapping[str, str]) -> bytes:
    """The PNG grid of one API picture ('sample', 'sweep', 'interpolate') for validated request parameters."""
    K = len(gen.class_names)
    seed = int_param(params, "seed", 0, 0, MAX_SEED)
    if kind == "sample":
        c = class_param(gen, params)
        num = int_param(params, "num", 8 if c is None else 16, 1, MAX_IMAGES)
        _check_count(num * (K if c is None else 1), f"num={num}" + ("" if c is not None else f" for {K} classes"))
        return png_bytes(gen.sample(c, num, seed), nrow=num if c is None else min(num, 8))
    if kind == "sweep":
        num = int_param(params, "num", 4, 1, MAX_IMAGES)
        _check_count(num * K, f"num={num} rows of {K} classes")
        return png_bytes(gen.sweep(num, seed), nrow=K)
    c = class_param(gen, params)
    steps = int_param(params, "steps", 10, 2, MAX_STEPS)
    _check_count(steps * (K if c is None else 1), f"steps={steps}" + ("" if c is not None else f" for {K} classes"))
    return png_bytes(gen.interpolate(c, steps, seed), nrow=steps)


def info(gen: TrainedGenerator) -> dict[str, Any]:
    """What the page and API clients need to know about the generator."""
    c = gen.config
    return {"classes": list(gen.class_names), "num_classes": len(gen.class_names), "image_size": c.image_size,
            "nz": c.nz, "arch": c.arch, "step": gen.step, "dataset": c.dataset, "max_images": MAX_IMAGES,
            "max_steps": MAX_STEPS}


def create_app(gen: TrainedGenerator) -> Any:
    """The FastAPI application serving one generator."""
    try:
        from fastapi import FastAPI, Request
        from fastapi.responses import HTMLResponse, JSONResponse, Response
    except ImportError:
        raise UserError("acgan serve needs FastAPI and uvicorn: pip install 'acgan[serve]'") from None
    app = FastAPI(title="acgan", docs_url=None, redoc_url=None, openapi_url=None)
    lock = threading.Lock()  # one picture at a time: they share the net and the machine's cores
    page = files("acgan").joinpath("web/index.html").read_text()

    @app.exception_handler(BadRequest)
    def bad_request(request: Request, exc: BadRequest) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/api/info")
    def api_info() -> dict[str, Any]:
        return info(gen)

    def picture(kind: str) -> Callable[[Request], Response]:
        def endpoint(request: Request) -> Response:
            with lock, torch.inference_mode():
                data = render(gen, kind, request.query_params)
            return Response(data, media_type="image/png", headers={"Cache-Control": "no-store"})
        return endpoint

    for kind in ("sample", "sweep", "interpolate"):
        app.add_api_route(f"/api/{kind}.png", picture(kind), methods=["GET"])
    return app


def _check_free(host: str, port: int) -> None:
    """One clear line when the address cannot be listened on (in use, or not this machine's)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UserError(f"--host {host}: {e.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as e:
            raise UserError(f"cannot listen on {host}:{port}: {e.strerror} (choose another --port)") from None


def serve(gen: TrainedGenerator, host: str, port: int) -> None:
    """Run the server until interrupted (Ctrl-C stops it cleanly)."""
    try:
        import uvicorn
    except ImportError:
        raise UserError("acgan serve needs FastAPI and uvicorn: pip install 'acgan[serve]'") from None
    app = create_app(gen)
    _check_free(host, port)  # uvicorn would log a traceback-like error and exit; say it in one line instead
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {gen.config.arch} generator (step {gen.step}, {len(gen.class_names)} classes) "
          f"at http://{shown}:{port}/  (Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
