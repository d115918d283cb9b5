"""What a hostile page or upload can make `fewtune serve` do: bounded memory, capped bodies, no
cross-origin writes, no DNS rebinding, no third-party scripts."""

import io
import json
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest
from conftest import COLOURS
from fastapi.testclient import TestClient
from PIL import Image

from fewtune.app.cli import main
from fewtune.app.server import ServerConfig, create_app
from fewtune.data.images import ImageTooLarge, decode

LOCAL = "http://127.0.0.1:8000"
HUGE = (9400, 9400)  # 16-bit greyscale: 177 MB decoded, from a ~190 KB file (issue 13)


def png16(width: int, height: int) -> bytes:
    """A legal 16-bit greyscale PNG of any size, written row by row (never held decoded)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(1)
    row = b"\0" + bytes(range(256)) * (2 * width // 256) + b"\0" * (2 * width % 256)  # filter byte + a ramp
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("huge") / "huge16.png"
    path.write_bytes(png16(*HUGE))
    return path


def png(colour, size=(48, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def upload(name="a.png", data=None, colour=COLOURS["red"]):
    return [("file", (name, png(colour) if data is None else data, "image/png"))]


def app_client(backbone, tmp_path, **settings):
    config = ServerConfig(models_dir=tmp_path / "models", **settings)
    return TestClient(create_app(backbone, config=config), base_url=LOCAL)


@pytest.fixture
def client(tiny_backbone, tmp_path):
    with app_client(
        tiny_backbone, tmp_path, max_image_bytes=1_000_000, max_request_bytes=2_000_000
    ) as client:
        for label in ("red", "green"):
            assert (
                client.post(f"/classes/{label}/examples", files=upload(colour=COLOURS[label])).status_code
                == 200
            )
        yield client


# -- memory --------------------------------------------------------------------------------------


def test_huge_16bit_png_decodes_reduced_in_bounded_memory(huge_png):
    """Before: 16-bit went through a float64 copy of every pixel (~0.7 GB here, 2.4 GB in the server)."""
    script = f"""
import re
from pathlib import Path
from fewtune.data.images import decode
def peak():
    return int(re.search(r"VmHWM:\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024
data = Path({str(huge_png)!r}).read_bytes()
before = peak()
picture = decode(data, "huge16.png", draft_size=257)
print(picture.size[0], picture.size[1], peak() - before)
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    width, height, grown = map(int, out.split())
    raw = HUGE[0] * HUGE[1] * 2
    assert grown < raw * 1.5, f"decoding took {grown / 2**20:.0f} MiB more for a {raw / 2**20:.0f} MiB image"
    assert 257 <= min(width, height) <= 2 * 257  # shrunk right after decoding


def test_decode_refuses_past_the_cost_cap():
    with pytest.raises(
        ImageTooLarge, match=r"big.png: decoding this 300x200 RGB image would take 0 MiB, more than"
    ):
        decode(png((1, 2, 3), size=(300, 200)), "big.png", max_bytes=100_000)
    assert decode(png((1, 2, 3), size=(300, 200)), "ok.png", max_bytes=300 * 200 * 4).size == (300, 200)


def test_huge_16bit_png_upload_is_predicted_or_refused(tiny_backbone, tmp_path, huge_png):
    data = huge_png.read_bytes()
    with app_client(tiny_backbone, tmp_path) as client:
        for label in ("red", "green"):
            client.post(f"/classes/{label}/examples", files=upload(colour=COLOURS[label]))
        response = client.post("/predict", files=upload("huge16.png", data))
        assert response.status_code == 200 and response.json()[0]["path"] == "huge16.png"
    with app_client(tiny_backbone, tmp_path, max_decode_bytes=100 * 2**20) as client:
        response = client.post("/classes/red/examples", files=upload("huge16.png", data))
        assert response.status_code == 413, response.text
        assert (
            "huge16.png: decoding this 9400x9400 I;16 image would take 169 MiB" in response.json()["detail"]
        )
        assert client.get("/classes").json() == []


def test_input_files_are_hashed_and_decoded_without_reading_them_whole(tmp_path, monkeypatch):
    """A 1 GiB file named .jpg cost 1.8 GB before; now it is streamed (a sparse 192 MiB one here)."""
    from fewtune.data import images

    big = tmp_path / "big.jpg"
    with open(big, "wb") as file:
        file.truncate(192 << 20)
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail(f"read whole: {self}"))
    assert len(images.sha256_file(big)) == 64
    with pytest.raises(images.FewtuneError, match="big.jpg: not a readable image"):
        images.load_hashed(big, draft_size=257)
    with pytest.raises(images.FewtuneError, match="big.jpg: not a readable image"):
        images.load(big)


# -- request bodies ------------------------------------------------------------------------------


def chunks(total: int, size: int = 64 * 1024):
    sent = 0
    while sent < total:
        yield b"x" * size
        sent += size


@pytest.mark.parametrize("kind", ["multipart/form-data; boundary=xyz", "application/json"])
def test_body_without_content_length_over_the_cap_is_413(client, kind):
    response = client.post("/predict", content=chunks(5_000_000), headers={"content-type": kind})
    assert (
        response.status_code == 413
        and "request body larger than 2,000,000 bytes" in response.json()["detail"]
    )


def test_declared_content_length_over_the_cap_is_413_before_reading(client):
    response = client.post(
        "/classes/red/examples",
        content=b"x" * 2_000_001,
        headers={"content-type": "multipart/form-data; boundary=x"},
    )
    assert response.status_code == 413
    assert client.get("/classes").json() == [
        {"label": "red", "examples": 1},
        {"label": "green", "examples": 1},
    ]


def test_files_per_request_are_capped(client):
    many = [f for i in range(17) for f in upload(f"{i}.png")]
    response = client.post("/predict", files=many)
    assert response.status_code in (400, 413) and "16" in response.json()["detail"]
    encoded = {"images": [{"name": f"{i}.png", "data": "AAAA"} for i in range(17)]}
    assert client.post("/predict", json=encoded).status_code == 413
    assert client.post("/predict", files=many[:16]).status_code == 200


def test_real_server_stops_reading_a_chunked_body_at_the_cap(tiny_backbone, tmp_path):
    """Through uvicorn and a raw socket: the 413 comes back while the client is still sending."""
    import uvicorn

    config = ServerConfig(models_dir=tmp_path, max_image_bytes=500_000, max_request_bytes=1_000_000)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(tiny_backbone, config=config), port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        sent, reply = 0, b""
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(
                f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nTransfer-Encoding: chunked\r\n"
                "Content-Type: application/json\r\n\r\n".encode()
            )
            chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
            conn.setblocking(False)
            while sent < 200_000_000 and not reply:
                try:
                    sent += conn.send(chunk)
                except BlockingIOError:
                    time.sleep(0.01)
                except OSError:  # the server closed the connection after answering
                    break
                try:
                    reply = conn.recv(4096)
                except BlockingIOError:
                    pass
            conn.setblocking(True)
            reply = reply or conn.recv(4096)
        assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
        assert sent < 50_000_000, f"the server read {sent:,} bytes before refusing"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# -- who may drive the server -------------------------------------------------------------------


def test_cross_origin_writes_are_refused(client):
    evil = {"Origin": "http://evil.example"}
    response = client.post("/classes/csrf/examples", files=upload(), headers=evil)
    assert (
        response.status_code == 403
        and "cross-origin request from 'http://evil.example' refused" in response.json()["detail"]
    )
    assert client.post("/models/save?name=csrf", headers=evil).status_code == 403
    assert client.delete("/classes/red", headers=evil).status_code == 403
    assert client.post("/predict", files=upload(), headers={"Origin": "null"}).status_code == 403
    assert client.post("/train", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
    assert [c["label"] for c in client.get("/classes", headers=evil).json()] == [
        "red",
        "green",
    ]  # reads: CORS hides them
    # the page itself (same origin), and clients that are not browsers (no Origin), still work
    assert (
        client.post(
            "/predict", files=upload(), headers={"Origin": LOCAL, "Sec-Fetch-Site": "same-origin"}
        ).status_code
        == 200
    )
    assert client.post("/predict", files=upload()).status_code == 200


def test_allowed_origins_may_write(tiny_backbone, tmp_path):
    with app_client(tiny_backbone, tmp_path, allow_origins=["https://app.example/"]) as client:
        ok = client.post("/classes/red/examples", files=upload(), headers={"Origin": "https://app.example"})
        assert ok.status_code == 200
        assert (
            client.post(
                "/classes/red/examples", files=upload(), headers={"Origin": "https://other.example"}
            ).status_code
            == 403
        )


@pytest.mark.parametrize(
    "host", ["attacker.example", "attacker.example:8000", "127.0.0.1.attacker.example", "localhost.:8000"]
)
def test_unknown_host_is_refused(client, host):
    response = client.get("/classes", headers={"Host": host})
    assert (
        response.status_code == 400
        and "unknown Host header" in response.json()["detail"]
        and "--allow-host" in response.json()["detail"]
    )
    assert client.post("/classes/rebind/examples", files=upload(), headers={"Host": host}).status_code == 400
    assert [c["label"] for c in client.get("/classes").json()] == ["red", "green"]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost:8000", "LOCALHOST", "[::1]:8000"])
def test_loopback_hosts_are_served(client, host):
    assert client.get("/healthz", headers={"Host": host}).status_code == 200


def test_allow_host(tiny_backbone, tmp_path):
    with app_client(tiny_backbone, tmp_path, allow_hosts=["fewtune.lan"]) as client:
        assert client.get("/healthz", headers={"Host": "fewtune.lan:8000"}).status_code == 200
        assert client.get("/healthz", headers={"Host": "127.0.0.1"}).status_code == 400
    with app_client(tiny_backbone, tmp_path, allow_hosts=["*"]) as client:
        assert client.get("/healthz", headers={"Host": "anything.example"}).status_code == 200


def test_docs_load_nothing_from_the_internet(client):
    page = client.get("/docs")
    assert page.status_code == 200 and "SwaggerUIBundle" in page.text
    assert "http://" not in page.text and "https://" not in page.text and "//cdn" not in page.text
    for asset in ("/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css"):
        assert asset in page.text and client.get(asset).status_code == 200
    assert client.get("/redoc").status_code == 404  # FastAPI's ReDoc page loads from a CDN: gone
    assert "/predict" in client.get("/openapi.json").json()["paths"]


def test_protect_predict(tiny_backbone, tmp_path):
    with app_client(tiny_backbone, tmp_path, token="s3cret", protect_predict=True) as client:
        auth = {"Authorization": "Bearer s3cret"}
        for label in ("red", "green"):
            client.post(f"/classes/{label}/examples", files=upload(colour=COLOURS[label]), headers=auth)
        assert client.post("/predict", files=upload()).status_code == 401
        assert (
            client.post("/predict", files=upload(), headers={"Authorization": "Bearer wrong"}).status_code
            == 401
        )
        assert (
            client.post(
                "/predict", files=upload(), headers={"Authorization": b"Bearer s3cr\xe9t"}
            ).status_code
            == 401
        )  # not ASCII
        assert client.post("/predict", files=upload(), headers=auth).json()[0]["label"] == "red"


def test_protect_predict_needs_a_token(capsys, monkeypatch):
    monkeypatch.delenv("FEWTUNE_TOKEN", raising=False)
    with pytest.raises(SystemExit) as stop:
        main(["serve", "--protect-predict"])
    err = capsys.readouterr().err
    assert (
        stop.value.code == 2
        and len(err.strip().splitlines()) == 1
        and "--protect-predict needs a token" in err
    )


def test_error_bodies_are_json(client):
    """Middleware answers look like FastAPI's own, so the page can show their detail."""
    response = client.get("/classes", headers={"Host": "x.example"})
    assert response.headers["content-type"] == "application/json" and set(json.loads(response.content)) == {
        "detail"
    }
