"""The web page at ``/`` in a real headless browser (Debian's chromium driven by playwright)
against a real ``detector serve`` process: upload a real image, wait for the boxes, read the drawn
detections back from the page and compare them with the API's JSON for the same image and
threshold; the slider and the class boxes filter like the server does; errors are shown; the page
loads nothing from elsewhere; it works with API keys on; against a ``--repository`` of several
models and versions its picker sends the image to the chosen version and shows that model's
classes."""

from __future__ import annotations

import base64
import colorsys
import fnmatch
import io
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from serve_live import LiveServer  # noqa: E402
from test_serve_repository_layout import tiny_onnx  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
IMAGE = ROOT / "data" / "bccd" / "images" / "BloodImage_00000.jpg"  # 640x480, real
PAGE_FILE = ROOT / "serve" / "web" / "index.html"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLOOR = 0.05  # the page's FLOOR: the highest threshold it sends
KEY = "web-test-key"
ADMIN = {"X-API-Key": "web-admin-key"}


def _missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    if not Path(CHROMIUM).is_file():
        return f"Debian's chromium is not installed at {CHROMIUM} (apt-get install chromium)"
    return None


browser_needed = pytest.mark.skipif(_missing() is not None, reason=str(_missing()))


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def web_onnx(tmp_path_factory) -> Path:
    """A random yolox_nano (128 px, BCCD's 3 class names) whose detections depend on the image,
    with scores spread over 0-0.5: its batch-norm statistics are measured on 8 BCCD images (the
    default ones let activations fade to nothing through the depth, which leaves every image
    with the same grid of boxes and one score per class), and its score biases are random."""
    import cv2
    import torch

    from detector.core.preprocess import preprocess
    from detector.models import build_model
    from detector.training.checkpoint import save_atomic
    from export.onnx import export_onnx

    folder = tmp_path_factory.mktemp("web_model")
    torch.manual_seed(0)
    model = build_model("yolox_nano", num_classes=3)
    calibration = sorted(IMAGE.parent.glob("*.jpg"))[20:28]
    batch = np.stack([preprocess(cv2.imread(str(path)), 128)[0] for path in calibration])
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.momentum = None  # a plain average over what it sees
                module.reset_running_stats()
        model.train()
        model(torch.from_numpy(batch))
        model.eval()
        for conv in (*model.head.obj_preds, *model.head.cls_preds):
            conv.bias.normal_(0.0, 1.0)
    meta = {"model_name": "yolox_nano", "num_classes": 3, "input_size": [128, 128],
            "class_names": ["Platelets", "RBC", "WBC"]}  # fmt: skip
    weights = save_atomic({"model": model.state_dict(), "meta": meta}, folder / "web.pt")
    return export_onnx(weights, folder / "web.onnx", dynamic=True)


@pytest.fixture(scope="module")
def server(web_onnx, tmp_path_factory):
    live = LiveServer(web_onnx, tmp_path_factory.mktemp("web_live"))
    yield live
    live.stop()


@pytest.fixture(scope="module")
def repository_server(tmp_path_factory):
    """A ``--repository`` server (explicit mode, admin key on) of ``parts`` (bolt, nut; the
    default model) and ``people`` (person; versions 1 and 2): tiny ONNX models that find one box
    of class 0 in every image and answer with the name their metadata gives (``people-v2``)."""
    root = tmp_path_factory.mktemp("web_repository")
    tiny_onnx(root / "people" / "1" / "model.onnx", "people-v1", ("person",))
    tiny_onnx(root / "people" / "2" / "model.onnx", "people-v2", ("person",))
    (root / "people" / "config.pbtxt").write_text('name: "people"\nversion_policy: { all { } }\n')
    tiny_onnx(root / "parts" / "1" / "model.onnx", "parts-v1", ("bolt", "nut"))
    live = LiveServer(
        None, tmp_path_factory.mktemp("web_repository_live"), "--model-control-mode", "explicit",
        "--load-model", "*", "--default-model", "parts", "--admin-key", ADMIN["X-API-Key"],
        repository=root,
    )  # fmt: skip
    yield live
    live.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        chromium = driver.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.requests = []  # every URL the page asked for
    page.on("request", lambda request: page.requests.append(request.url))
    page.console_errors = []
    page.on("console", lambda m: m.type == "error" and page.console_errors.append(m.text))
    page.on("pageerror", lambda exc: page.console_errors.append(str(exc)))
    yield page
    context.close()


def api(server, conf: float, key: str | None = None, **params) -> dict:
    headers = {"X-API-Key": key} if key else {}
    with server.client() as http:
        response = http.post("/v1/detect", params={"conf": conf, **params}, headers=headers,
                             files={"image": (IMAGE.name, IMAGE.read_bytes())})  # fmt: skip
    assert response.status_code == 200, response.text
    return response.json()


def clear_threshold(scores: list[float], start: float) -> float:
    """The first slider value (a multiple of 0.01) from ``start`` up that no score lies within
    1e-4 of, so that the JSON's rounded scores and the server's float32 ones agree about it."""
    for step in range(round(start * 100), 100):
        value = step / 100
        if all(abs(score - value) > 1e-4 for score in scores):
            return value
    raise AssertionError("no clear threshold")


def drawn(page) -> list[dict]:
    """The detections the page drew, read from its table rows' data attributes."""
    rows = page.eval_on_selector_all(
        "#detections tbody tr", "rows => rows.map(r => Object.assign({}, r.dataset))"
    )
    return [
        {"class_id": int(r["classId"]), "class_name": r["className"], "score": float(r["score"]),
         "box": json.loads(r["box"]), "canvas_box": json.loads(r["canvasBox"])}
        for r in rows
    ]  # fmt: skip


def assert_same(shown: list[dict], expected: list[dict]) -> None:
    """Same count, classes and order; boxes within 1 px; scores equal."""
    assert len(shown) == len(expected)
    assert [d["class_name"] for d in shown] == [d["class_name"] for d in expected]
    assert [d["class_id"] for d in shown] == [d["class_id"] for d in expected]
    if expected:
        np.testing.assert_allclose([d["box"] for d in shown], [d["box"] for d in expected], atol=1)
        np.testing.assert_allclose(
            [d["score"] for d in shown], [d["score"] for d in expected], atol=1e-6
        )


def set_slider(page, value: float) -> None:
    page.locator("#conf").fill(f"{value:.2f}")
    assert page.locator("#conf-value").text_content() == f"{value:.2f}"


def wait_done(page) -> None:
    page.wait_for_selector("#status[data-state=done]")


def class_names(page) -> list[str]:
    """The names in the page's class list."""
    return page.eval_on_selector_all("#classes input", "boxes => boxes.map(b => b.value)")


def chosen(page) -> str:
    """The picker's selected entry as shown ("name · version")."""
    return page.eval_on_selector("#model", "s => s.selectedOptions[0].textContent")


def answered_by(page) -> tuple[str, str, str]:
    """``model_name``, ``model_version`` and ``model`` of the JSON answer the page shows."""
    body = json.loads(page.locator("#json").text_content())
    return body["model_name"], body["model_version"], body["model"]


def detect_requests(page) -> int:
    return sum("/v1/detect" in url for url in page.requests)


def class_colour(class_id: int) -> np.ndarray:
    """The page's ``hsl(id * 137.508 % 360, 85%, 50%)`` as RGB 0-255."""
    rgb = colorsys.hls_to_rgb((class_id * 137.508 % 360) / 360, 0.5, 0.85)
    return np.array(rgb) * 255


# ---------------------------------------------------------------------------- tests


@browser_needed
def test_page_draws_the_same_detections_as_the_api(server, page, tmp_path):
    from PIL import Image

    low = api(server, FLOOR)
    scores = [d["score"] for d in low["detections"]]
    conf = clear_threshold(scores, 0.3)
    expected = api(server, conf)["detections"]
    assert len(expected) >= 3, "the test model should detect several objects in the image"
    assert len({d["class_id"] for d in expected}) >= 2, "and of more than one class"

    page.goto(server.url + "/")
    page.wait_for_selector("#classes input[type=checkbox]")  # class names from /v1/models
    assert class_names(page) == ["Platelets", "RBC", "WBC"]
    assert page.locator("#model").is_hidden()  # one model: no picker
    set_slider(page, conf)
    page.set_input_files("#file", IMAGE)
    wait_done(page)

    shown = drawn(page)
    assert_same(shown, expected)
    assert page.locator("#detections").get_attribute("data-count") == str(len(expected))
    # the canvas has the image's own size here (640 px fits), so drawn = image pixels
    assert page.eval_on_selector("#canvas", "c => [c.width, c.height]") == [640, 480]
    np.testing.assert_allclose([d["canvas_box"] for d in shown], [d["box"] for d in expected],
                               atol=1)  # fmt: skip

    # the JSON response is shown: the page asked for its floor and filters itself
    body = json.loads(page.locator("#json").text_content())
    assert body["model"] == "yolox_nano" and body["image"] == {"width": 640, "height": 480}
    assert_same(body["detections"], low["detections"])

    # the boxes are on the canvas: each left edge in the class colour (the stroke covers the
    # pixel column at floor(x1) fully), read back from the canvas itself as PNG
    url = page.eval_on_selector("#canvas", "c => c.toDataURL('image/png')")
    png = base64.b64decode(url.removeprefix("data:image/png;base64,"))
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), np.float64)
    assert pixels.shape == (480, 640, 3)
    on_edge = []
    for d in shown:
        x1, y1, _, y2 = d["box"]
        column = pixels[int(np.ceil(y1)) : int(y2), int(np.floor(x1))]
        on_edge.append(np.mean(np.abs(column - class_colour(d["class_id"])).max(axis=1) <= 4))
    assert np.mean(on_edge) > 0.6, on_edge

    screenshot = tmp_path / "page.png"
    page.screenshot(path=str(screenshot), full_page=True)
    image = np.asarray(Image.open(screenshot).convert("RGB"))
    assert image.std() > 10
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 1000  # a photo, not a flat page

    # the slider up: filtered in the page, no new request, the same as the API at that value
    requests = detect_requests(page)
    higher = clear_threshold(scores, round(conf + 0.1, 2))
    set_slider(page, higher)
    assert_same(drawn(page), api(server, higher)["detections"])
    assert detect_requests(page) == requests

    # a class box off: the same as the server's own class filter
    set_slider(page, conf)
    hidden = expected[0]["class_id"]
    page.locator(f"#classes input[data-class-id='{hidden}']").uncheck()
    others = ",".join(str(i) for i in range(3) if i != hidden)
    filtered = api(server, conf, classes=others)["detections"]
    assert filtered and all(d["class_id"] != hidden for d in filtered)
    assert_same(drawn(page), filtered)
    page.locator("#all").click()
    assert_same(drawn(page), expected)

    # below the floor the page asks the server again, at the slider's value
    lowest = clear_threshold(scores, 0.02)
    expected_lowest = api(server, lowest)["detections"]
    with page.expect_response(lambda r: "/v1/detect" in r.url) as answer:
        set_slider(page, lowest)
    assert f"conf={lowest}" in answer.value.url
    # selectors, not wait_for_function: a string predicate that has to be polled is evaluated
    # by eval in the page, which its CSP (no 'unsafe-eval') refuses
    page.wait_for_selector(f"#detections[data-count='{len(expected_lowest)}']", state="attached")
    wait_done(page)
    assert_same(drawn(page), expected_lowest)
    assert detect_requests(page) == requests + 1

    # nothing came from anywhere but this server, and the page logged no error
    assert page.requests and all(url.startswith(server.url + "/") for url in page.requests)
    assert page.console_errors == []


@browser_needed
def test_a_text_file_shows_a_readable_error(server, page):
    page.goto(server.url + "/")
    page.wait_for_selector("#classes input[type=checkbox]")
    notes = {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not an image\n"}
    page.set_input_files("#file", notes)
    page.wait_for_selector("#status[data-state=error]")
    error = page.locator("#error")
    assert error.is_visible()
    text = error.text_content()
    assert "Not an image the server can read" in text and "415" in text and "notes.txt" in text
    assert json.loads(page.locator("#json").text_content())["error"] == "unsupported_media_type"
    assert page.locator("#detections").get_attribute("data-count") == "0"

    # and the page recovers: an image dropped on the drop zone (a real drop event carrying
    # the file, as a drag from the desktop delivers it)
    data = base64.b64encode(IMAGE.read_bytes()).decode()
    transfer = page.evaluate_handle(
        """([data, name]) => {
            const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type: "image/jpeg" }));
            return transfer;
        }""",
        [data, IMAGE.name],
    )
    page.locator("#drop").dispatch_event("drop", {"dataTransfer": transfer})
    wait_done(page)
    assert not error.is_visible()
    assert len(drawn(page)) == len(api(server, 0.25)["detections"])


@browser_needed
def test_page_works_with_api_keys(web_onnx, browser, tmp_path):
    live = LiveServer(web_onnx, tmp_path / "keyed", "--api-key", KEY)
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.goto(live.url + "/")  # the page itself needs no key
        page.locator("#model-info", has_text="API key").wait_for(state="attached")
        page.set_input_files("#file", IMAGE)
        page.wait_for_selector("#status[data-state=error]")
        assert "401" in page.locator("#error").text_content()

        page.locator("#api-key").fill(KEY)
        page.locator("#api-key").dispatch_event("change")  # as leaving the field does
        wait_done(page)
        assert_same(drawn(page), api(live, 0.25, key=KEY)["detections"])
        page.wait_for_selector("#classes input[type=checkbox]")
        assert "yolox_nano" in page.locator("#model-info").text_content()
    finally:
        context.close()
        live.stop()


def test_page_is_self_contained(server):
    """No URL to anywhere else: no CDN, no web fonts, no protocol-relative source; the CSP
    header forbids loading from elsewhere anyway. Needs no browser."""
    with server.client() as http:
        response = http.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert html == PAGE_FILE.read_text(encoding="utf-8")
    assert "<canvas" in html and 'id="json"' in html
    assert not re.search(r"(?i)\b(https?|ftp|wss?):", html)
    links = re.findall(r"""(?i)\b(?:src|href|action|srcset)\s*=\s*["']?([^"'\s>]*)""", html)
    assert links == ["data:,"]  # the only one: an empty favicon, so the browser asks for none
    assert not re.search(r"(?i)@import|url\(|<iframe\b|<object\b|<embed\b", html)
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy


def test_page_is_package_data():
    """A non-editable install ships the page: pyproject's package-data names it."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in Python 3.11+")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"].get("serve.web", [])
    assert any(fnmatch.fnmatch("index.html", pattern) for pattern in patterns)
    from serve.web import page_html

    assert page_html() == PAGE_FILE.read_text(encoding="utf-8")


@browser_needed
def test_picker_sends_the_image_to_the_chosen_model_version(repository_server, page):
    url = repository_server.url
    page.goto(url + "/")
    page.wait_for_selector("#model:not([hidden])")
    options = page.eval_on_selector_all("#model option", "os => os.map(o => o.textContent)")
    assert options == ["parts · 1", "people · 2", "people · 1"]
    assert chosen(page) == "parts · 1"  # the server's default model
    assert class_names(page) == ["bolt", "nut"]
    assert page.locator("#model-info").text_content().startswith("parts-v1 · ")

    page.set_input_files("#file", IMAGE)
    wait_done(page)
    assert answered_by(page) == ("parts", "1", "parts-v1")
    assert [d["class_name"] for d in drawn(page)] == ["bolt"]
    page.locator("#classes input[value=bolt]").uncheck()  # class 0 hidden in this model only
    assert drawn(page) == []

    for label, name, version in [("people · 1", "people", "1"), ("people · 2", "people", "2")]:
        with page.expect_response(lambda r: "/detect" in r.url) as answer:
            page.select_option("#model", label=label)
        assert answer.value.url.startswith(f"{url}/v1/models/{name}/versions/{version}/detect?")
        wait_done(page)
        assert answered_by(page) == (name, version, f"{name}-v{version}")
        assert class_names(page) == ["person"]
        assert page.locator("#model-info").text_content().startswith(f"{name}-v{version} · ")
        assert [d["class_name"] for d in drawn(page)] == ["person"]

    # a link can name the version; one unloaded since the list was read is dropped from it
    page.goto(url + "/?model=people&version=1")
    page.wait_for_selector("#model:not([hidden])")
    assert chosen(page) == "people · 1"
    with repository_server.client() as http:
        unload = http.post("/v2/repository/models/people/unload", headers=ADMIN)
    assert unload.status_code == 200, unload.text
    with page.expect_response(lambda r: "/detect" in r.url and r.status == 200):
        page.set_input_files("#file", IMAGE)  # 404 for people 1: the list is read again
    wait_done(page)
    assert answered_by(page) == ("parts", "1", "parts-v1")
    assert page.locator("#model").is_hidden()  # one model left
    assert class_names(page) == ["bolt", "nut"]
    assert not page.locator("#error").is_visible()
    assert page.requests and all(u.startswith(url + "/") for u in page.requests)
    # the browser logs the one 404 itself; the page's script threw nothing
    assert page.console_errors == [
        "Failed to load resource: the server responded with a status of 404 (Not Found)"
    ]
