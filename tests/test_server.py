"""The HTTP API, through a real client against the real app."""

import base64
import io
import threading

import pytest
from conftest import COLOURS, make_image
from fastapi.testclient import TestClient
from PIL import Image

from fewtune.app.server import ServerConfig, create_app


def png(colour, seed=0, size=(48, 40)) -> bytes:
    buffer = io.BytesIO()
    image = Image.new("RGB", size, colour)
    image.putpixel((seed % size[0], 0), (seed % 255, 0, 0))
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _noisy_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((160, 160), 60).convert("RGB").save(buffer, "JPEG")
    return buffer.getvalue()


NOISY_JPEG = _noisy_jpeg()
LOCAL = "http://127.0.0.1:8000"  # the server answers to loopback names only (DNS rebinding guard)


def files(*items):
    return [("file", (name, data, "image/png")) for name, data in items]


@pytest.fixture
def client(tiny_backbone, tmp_path):
    config = ServerConfig(models_dir=tmp_path / "models", max_image_bytes=200_000)
    with TestClient(base_url=LOCAL, app=create_app(tiny_backbone, config=config)) as client:
        yield client


def teach(client, *names):
    for name in names:
        response = client.post(f"/classes/{name}/examples", files=files((f"{name}.png", png(COLOURS[name]))))
        assert response.status_code == 200, response.text


def test_teach_predict_save(client, tmp_path):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/model").json()["ready"] is False
    teach(client, "red")
    assert client.post("/predict", files=files(("x.png", png(COLOURS["red"])))).status_code == 409
    teach(client, "green", "blue")
    assert client.get("/classes").json() == [{"label": n, "examples": 1} for n in ("red", "green", "blue")]

    response = client.post(
        "/predict?top_k=2",
        files=files(("a.png", png(COLOURS["green"], seed=5)), ("b.png", png(COLOURS["red"], seed=7))),
    )
    assert response.status_code == 200
    first, second = response.json()
    assert (first["path"], first["label"], second["label"]) == ("a.png", "green", "red")
    assert (
        set(first) >= {"label", "score", "top_k", "is_unknown", "novelty", "probabilities"}
        and len(first["top_k"]) == 2
    )

    encoded = base64.b64encode(png(COLOURS["blue"], seed=3)).decode()
    response = client.post("/predict", json={"images": [{"name": "c.png", "data": encoded}]})
    assert response.json()[0]["label"] == "blue"

    saved = client.post("/models/save?name=colours").json()["saved"]
    assert (tmp_path / "models" / "colours.fewtune" / "config.json").is_file() and saved.endswith(
        "colours.fewtune"
    )
    assert client.get("/model").json()["classes"] == ["red", "green", "blue"]


def test_delete_and_retrain(client):
    teach(client, "red", "green", "blue")
    assert client.delete("/classes/blue").json()["classes"] == ["red", "green"]
    assert client.delete("/classes/blue").status_code == 404
    assert client.post("/train?strategy=probe").json()["strategy"] == "probe"
    assert client.get("/model").json()["strategy"]["name"] == "probe"
    assert client.post("/train?strategy=magic").status_code == 422


@pytest.mark.parametrize(
    "request_kwargs, status, message",
    [
        ({"files": [("file", ("a.txt", b"hello", "text/plain"))]}, 415, "is not an image"),
        (
            {"files": files(("cut.jpg", NOISY_JPEG[: len(NOISY_JPEG) // 2]))},
            422,
            "cut.jpg: corrupt or truncated image",
        ),
        ({"files": files(("junk.png", b"not a png at all"))}, 422, "junk.png: not a readable image"),
        ({"files": files(("big.png", b"\0" * 300_000))}, 413, "larger than 200,000 bytes"),
        (
            {"content": b"raw", "headers": {"content-type": "application/octet-stream"}},
            415,
            "send multipart/form-data",
        ),
        ({"json": {"images": [{"data": "%%%"}]}}, 422, "expected JSON"),
        ({"files": {"other": ("a.png", b"x", "image/png")}}, 422, "no images in the request"),
    ],
)
def test_bad_uploads(client, request_kwargs, status, message):
    teach(client, "red", "green")
    response = client.post("/predict", **request_kwargs)
    assert response.status_code == status and message in response.json()["detail"]


@pytest.mark.parametrize("label", ["../etc", "a/b", "", "unknown", "x" * 80])
def test_labels_are_validated(client, label):
    response = client.post(f"/classes/{label}/examples", files=files(("a.png", png((0, 0, 0)))))
    assert response.status_code in (404, 405, 422)
    assert client.get("/classes").json() == []


def test_model_names_cannot_escape_the_models_folder(client, tmp_path):
    teach(client, "red", "green")
    assert client.post("/models/save", params={"name": "../../evil"}).status_code == 422
    assert not (tmp_path / "evil.fewtune").exists()


def test_token_guards_write_endpoints(tiny_backbone, tmp_path):
    config = ServerConfig(models_dir=tmp_path, token="s3cret")
    with TestClient(base_url=LOCAL, app=create_app(tiny_backbone, config=config)) as client:
        body = files(("a.png", png(COLOURS["red"])))
        assert client.post("/classes/red/examples", files=body).status_code == 401
        ok = client.post("/classes/red/examples", files=body, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert client.get("/classes").status_code == 200  # reads stay open


def test_concurrent_add_and_predict_never_see_a_half_updated_model(client):
    teach(client, "red", "green")
    errors = []

    def add(i):
        response = client.post(
            "/classes/blue/examples", files=files((f"b{i}.png", png(COLOURS["blue"], seed=i)))
        )
        if response.status_code != 200:
            errors.append(response.text)

    def predict(i):
        response = client.post("/predict", files=files((f"r{i}.png", png(COLOURS["red"], seed=i))))
        if response.status_code != 200 or response.json()[0]["label"] != "red":
            errors.append(response.text)
        elif len(response.json()[0]["probabilities"]) not in (2, 3):
            errors.append("inconsistent classifier")

    threads = [threading.Thread(target=f, args=(i,)) for i in range(6) for f in (add, predict)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert client.get("/classes").json()[-1] == {"label": "blue", "examples": 6}


def test_openapi_and_page(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert {
        "/predict",
        "/classes",
        "/classes/{label}/examples",
        "/classes/{label}",
        "/train",
        "/model",
        "/healthz",
        "/models/save",
    } <= set(paths)
    page = client.get("/").text
    assert 'id="new-label"' in page and 'id="test-files"' in page
    assert "http://" not in page and "https://" not in page  # no CDN: works offline


def test_starts_from_a_saved_model(tiny_backbone, colour_data, tmp_path):
    import fewtune

    clf = fewtune.train(colour_data, backbone=tiny_backbone)
    clf.save(tmp_path / "m.fewtune")
    loaded = fewtune.load(tmp_path / "m.fewtune")
    config = ServerConfig(model_path=tmp_path / "m.fewtune")
    with TestClient(base_url=LOCAL, app=create_app(tiny_backbone, loaded, config)) as client:
        assert [c["label"] for c in client.get("/classes").json()] == ["blue", "green", "red"]
        image = make_image(tmp_path / "r.png", COLOURS["red"], noise_seed=123).read_bytes()
        assert client.post("/predict", files=files(("r.png", image))).json()[0]["label"] == "red"
        assert client.post("/models/save").json()["saved"] == str(tmp_path / "m.fewtune")
