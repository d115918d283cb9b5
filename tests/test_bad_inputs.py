"""A hostile-but-fair corpus, generated at test time, through `train`, `predict`, `add`, `info` and the
HTTP API: every case is either handled as documented (the same answer as its plain-RGB twin) or
refused with a one-line error naming the file; never a traceback, an exit 1 or a hang."""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import COLOURS, make_image
from PIL import Image
from test_cli import run as run_cli

RED = COLOURS["red"]


def run(capsys, *argv) -> tuple[int, str, str]:
    """:func:`test_cli.run`, and never a traceback or exit 1 (a bug in fewtune)."""
    code, out, err = run_cli(capsys, *argv)
    assert "Traceback" not in out + err, err
    assert code != 1, err
    return code, out, err


def one_line_error(code: int, err: str, *names: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for name in names:
        assert name in lines[0], (name, err)


# ---------------------------------------------------------------- the corpus


def _png(image: Image.Image, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **kw)
    return buffer.getvalue()


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb_png(width: int = 30_000, height: int = 30_000) -> bytes:
    """A 100-byte PNG that declares 900 Mpx: decoding it would take gigabytes."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _chunk(b"IEND", b"")
    )


def black_16_bit_png(width: int, height: int) -> bytes:
    """A legal 16-bit greyscale PNG, written row by row: making it costs no more memory than a row."""
    pixels = zlib.compressobj(9)
    row = b"\0" * (1 + 2 * width)  # filter byte, then big-endian 16-bit zeros
    data = b"".join(pixels.compress(row) for _ in range(height)) + pixels.flush()
    header = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def _twin() -> Image.Image:
    """The plain RGB picture every valid variant encodes: reddish with a blue corner (not symmetric)."""
    rng = np.random.default_rng(0)
    pixels = (np.array(RED)[None, None, :] + rng.integers(-20, 20, (40, 48, 3))).clip(0, 255).astype(np.uint8)
    pixels[:12, :16] = COLOURS["blue"]
    return Image.fromarray(pixels)


def write_corpus(root: Path) -> dict[str, dict[str, Path]]:
    """Files under ``root`` by kind: "valid" (each decodes to its plain PNG under "twins"), "bad"
    (unreadable) and "special" (links, FIFOs, sockets, a folder named like an image)."""
    root.mkdir(parents=True, exist_ok=True)
    twin = _twin()
    grey = Image.fromarray(np.tile(np.linspace(0, 255, 48).astype(np.uint8), (40, 1)))
    valid: dict[str, tuple[bytes, Image.Image]] = {
        "cmyk.tif": (_tiff(twin.convert("CMYK")), twin),
        "cmyk.jpg": (_jpeg(twin.convert("CMYK")), twin),  # lossy: close to its twin, not equal
        "grey16.png": (_png(Image.fromarray(np.asarray(grey).astype(np.uint16) * 257)), grey.convert("RGB")),
        "palette.png": (_png(twin.quantize(64)), twin.quantize(64).convert("RGB")),
        "alpha.png": (_png(_with_alpha(twin)), _on_white(_with_alpha(twin))),
        "exif_rotated.png": (_png(twin.transpose(Image.Transpose.ROTATE_90), exif=_orientation(6)), twin),
        "[bold red]b.png": (_png(twin), twin),
        "x[i]y.png": (_png(twin), twin),
        "日本語 é.png": (_png(twin), twin),
    }
    frames = [twin.quantize(64), Image.new("RGB", twin.size, COLOURS["blue"]).quantize(64)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    valid["animated.gif"] = (buffer.getvalue(), frames[0].convert("RGB"))  # the first frame is the picture
    big = Image.fromarray(
        np.tile(np.linspace(0, 65535, 2400).astype(np.uint16), (1800, 1))
    )  # huge-but-legal 16-bit
    valid["big16.png"] = (
        _png(big),
        Image.fromarray(np.tile(np.linspace(0, 255, 2400).round().astype(np.uint8), (1800, 1))).convert(
            "RGB"
        ),
    )

    noise = Image.effect_noise((200, 200), 60).convert("RGB")
    rng = random.Random(0)
    bad = {
        "corrupt.jpg": b"\xff\xd8\xff\xe0" + bytes(rng.randrange(256) for _ in range(3000)),
        "truncated.jpg": _jpeg(noise)[:2500],
        "truncated.png": _png(noise)[:3000],
        "zero.png": b"",
        "random.png": bytes(rng.randrange(256) for _ in range(4000)),
        "text.jpg": b"hello, I am not a picture\n",
        "bomb.png": _bomb_png(),
    }
    files, twins, broken = {}, {}, {}
    (root.parent / "twins").mkdir(exist_ok=True)
    for name, (data, picture) in valid.items():
        (root / name).write_bytes(data)
        files[name] = root / name
        twins[name] = root.parent / "twins" / f"{Path(name).stem}.png"
        picture.save(twins[name])
    for name, data in bad.items():
        (root / name).write_bytes(data)
        broken[name] = root / name
    special = {
        "loop.jpg": root / "loop.jpg",
        "dangling.jpg": root / "dangling.jpg",
        "dir.jpg": root / "dir.jpg",
    }
    os.symlink("loop.jpg", special["loop.jpg"])
    os.symlink("nowhere.png", special["dangling.jpg"])
    special["dir.jpg"].mkdir()
    if hasattr(os, "mkfifo"):
        os.mkfifo(root / "fifo.jpg")
        special["fifo.jpg"] = root / "fifo.jpg"
    with socket.socket(socket.AF_UNIX) as server:
        try:
            server.bind(str(root / "socket.png"))
            special["socket.png"] = root / "socket.png"
        except OSError:  # path too long for a socket: fine, the others still count
            pass
    return {"valid": files, "bad": broken, "special": special, "twins": twins}


def _tiff(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "TIFF")
    return buffer.getvalue()


def _with_alpha(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.linspace(40, 255, 48).astype(np.uint8), (40, 1))))
    return rgba


def _on_white(rgba: Image.Image) -> Image.Image:
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")


def _orientation(value: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile") / "corpus"
    return {"root": root, **write_corpus(root)}


@pytest.fixture(scope="module")
def model(tmp_path_factory, tiny_weights) -> Path:
    """A prototype classifier of red / green / blue pictures, trained once for the module."""
    from fewtune.model.training import train

    data = tmp_path_factory.mktemp("colours")
    for c, (name, rgb) in enumerate(COLOURS.items()):
        for i in range(3):
            make_image(data / name / f"{i}.png", rgb, noise_seed=10 * c + i)
    path = tmp_path_factory.mktemp("model") / "colours.fewtune"
    train(data, "prototype", backbone="test_efficientnet", weights=tiny_weights, cache=False).save(path)
    return path


@pytest.fixture
def tiny_flags(tiny_weights) -> list[str]:
    return ["--backbone", "test_efficientnet", "--weights", str(tiny_weights)]


# ---------------------------------------------------------------- decoding and predict


def test_valid_variants_decode_to_their_twin(corpus):
    from fewtune.data import images

    for name, path in corpus["valid"].items():
        decoded = np.asarray(images.load(path), dtype=np.int16)
        expected = np.asarray(Image.open(corpus["twins"][name]).convert("RGB"), dtype=np.int16)
        assert decoded.shape == expected.shape, name
        if name.endswith(".jpg"):
            assert np.abs(decoded - expected).mean() < 4, (
                name
            )  # JPEG is lossy; inverted CMYK would be ~150 off
        else:
            assert np.abs(decoded - expected).max() <= 1, name  # 16-bit rescaling may round by one


def test_predict_each_valid_variant_answers_as_its_twin(capsys, corpus, model):
    paths = list(corpus["valid"].values())
    twins = [corpus["twins"][name] for name in corpus["valid"]]
    code, out, err = run(capsys, "predict", model, *paths, *twins, "--json", "-q")
    assert code == 0, err
    results = json.loads(out)
    assert [r["path"] for r in results] == list(map(str, paths + twins))  # every file answered, in order
    for variant, twin in zip(results, results[len(paths) :]):
        assert variant["label"] == twin["label"], variant["path"]
        for label, p in twin["probabilities"].items():
            assert variant["probabilities"][label] == pytest.approx(p, abs=0.02), variant["path"]


@pytest.mark.parametrize(
    "name",
    ["corrupt.jpg", "truncated.jpg", "truncated.png", "zero.png", "random.png", "text.jpg", "bomb.png"],
)
def test_predict_a_bad_file_is_one_line_naming_it(capsys, corpus, model, name):
    path = corpus["bad"][name]
    code, out, err = run(capsys, "predict", model, path, "-q")
    one_line_error(code, err, str(path))
    assert out == ""


@pytest.mark.parametrize(
    "name, kind",
    [
        ("loop.jpg", "a symlink loop"),
        ("dangling.jpg", "a broken link"),
        ("fifo.jpg", "a FIFO"),
        ("socket.png", "a socket"),
    ],
)
def test_predict_a_special_entry_named_outright_says_what_it_is(capsys, corpus, model, name, kind):
    if name not in corpus["special"]:
        pytest.skip(f"this system can't make {kind}")
    code, _, err = run(capsys, "predict", model, corpus["special"][name], "-q")
    one_line_error(code, err, str(corpus["special"][name]), f"is {kind}, not an image file")


def _python(*argv: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """This checkout's fewtune in a fresh interpreter, with a deadline."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")]
        ),
    }
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=timeout, env=env)


def test_predict_the_whole_corpus_skips_and_counts_never_hangs(corpus, model, tmp_path):
    """A subprocess with a deadline: a FIFO opened by mistake would block forever."""
    done = _python("-m", "fewtune", "predict", str(model), str(corpus["root"]), "--skip-bad", "--json")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    answered = {Path(r["path"]).name for r in json.loads(done.stdout)}
    assert answered == set(corpus["valid"])
    assert f"skipped {len(corpus['bad'])} unreadable images" in done.stderr
    specials = len(corpus["special"])  # loop, dangling, fifo, socket, dir.jpg: counted, never opened
    assert f"skipped {specials} entries that are not image files" in done.stderr


# ---------------------------------------------------------------- train


def _training_folder(corpus, tmp_path: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(
        corpus["root"],
        data / "red",
        symlinks=True,
        ignore=lambda d, names: [n for n in names if n in ("fifo.jpg", "socket.png")],
    )
    for name in ("fifo.jpg",):
        if name in corpus["special"]:
            os.mkfifo(data / "red" / name)
    for i in range(3):
        make_image(data / "blue" / f"{i}.png", COLOURS["blue"], noise_seed=i)
    return data


def test_train_on_the_corpus_stops_at_a_bad_file_naming_it(capsys, corpus, tmp_path, tiny_flags):
    data = _training_folder(corpus, tmp_path)
    code, _, err = run(
        capsys,
        "train",
        data,
        "-o",
        tmp_path / "m",
        "--strategy",
        "prototype",
        "--no-cache",
        "-q",
        *tiny_flags,
    )
    one_line_error(code, err, "more bad files")
    assert any(str(data / "red" / name) in err for name in corpus["bad"]), err
    assert not (tmp_path / "m").exists()


def test_train_with_skip_bad_lists_bad_files_and_counts_special_entries(capsys, corpus, tmp_path, tiny_flags):
    data = _training_folder(corpus, tmp_path)
    code, _, err = run(
        capsys,
        "train",
        data,
        "-o",
        tmp_path / "m",
        "--strategy",
        "prototype",
        "--no-cache",
        "--skip-bad",
        *tiny_flags,
    )
    assert code == 0, err
    assert f"examples per class: blue 3, red {len(corpus['valid'])}" in err
    for name in corpus["bad"]:
        assert str(data / "red" / name) in err, name
    specials = 4 if "fifo.jpg" in corpus["special"] else 3  # loop, dangling, dir.jpg (+ fifo)
    assert f"skipped {specials} entries that are not image files" in err


def test_csv_row_naming_a_folder_says_so(capsys, corpus, tmp_path, tiny_flags):
    listing = tmp_path / "list.csv"
    listing.write_text(
        f"path,label\n{corpus['twins']['alpha.png']},red\n{corpus['special']['dir.jpg']},blue\n"
    )
    code, _, err = run(capsys, "train", listing, "-o", tmp_path / "m", *tiny_flags)
    one_line_error(code, err, "line 3", str(corpus["special"]["dir.jpg"]), "is a folder, not an image")


# ------------------------------------------------------ where the model goes: checked before training


def _unwritable(tmp_path: Path) -> Path:
    if os.geteuid() == 0:  # root writes anywhere chmod allows nothing: sysfs refuses even root
        if not Path("/sys/kernel").is_dir():
            pytest.skip("running as root without /sys: no folder is unwritable")
        return Path("/sys")
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


@pytest.mark.parametrize("where", ["root", "unwritable", "file", "foreign folder"])
def test_output_that_cannot_take_a_model_fails_before_training(
    capsys, monkeypatch, colour_data, tmp_path, tiny_flags, where
):
    import fewtune.model.training

    target = {
        "root": Path("/"),
        "unwritable": _unwritable(tmp_path) / "m.fewtune",
        "file": tmp_path / "notes.txt",
        "foreign folder": tmp_path / "photos",
    }[where]
    if where == "file":
        target.write_text("keep me")
    if where == "foreign folder":
        make_image(target / "keep.png", RED)
    monkeypatch.setattr(
        fewtune.model.training, "train", lambda *a, **k: pytest.fail("trained before checking the output")
    )
    code, _, err = run(capsys, "train", colour_data, "-o", target, *tiny_flags)
    one_line_error(code, err, str(target))
    if where == "file":
        assert target.read_text() == "keep me"
    if where == "foreign folder":
        assert (target / "keep.png").is_file()


# ---------------------------------------------------------------- add


@pytest.mark.parametrize(
    "name", ["corrupt.jpg", "truncated.png", "zero.png", "bomb.png", "loop.jpg", "fifo.jpg"]
)
def test_add_a_bad_file_names_it_and_leaves_the_model_unchanged(capsys, corpus, model, tmp_path, name):
    path = {**corpus["bad"], **corpus["special"]}.get(name)
    if path is None:
        pytest.skip(f"no {name} on this system")
    copy = shutil.copytree(model, tmp_path / "m.fewtune")
    before = {p.name: p.read_bytes() for p in copy.iterdir()}
    code, _, err = run(capsys, "add", copy, path, "--label", "new", "-q")
    one_line_error(code, err, str(path))
    assert {p.name: p.read_bytes() for p in copy.iterdir()} == before


@pytest.mark.parametrize("name", ["cmyk.tif", "grey16.png", "animated.gif", "[bold red]b.png"])
def test_add_odd_but_valid_files_under_a_markup_label(capsys, corpus, model, tmp_path, name):
    copy = shutil.copytree(model, tmp_path / "m.fewtune")
    code, _, err = run(capsys, "add", copy, corpus["valid"][name], "--label", "x[/]y")
    assert code == 0, err
    assert "added class 'x[/]y' with 1 images" in err
    code, out, _ = run(capsys, "info", copy)
    assert code == 0 and "x[/]y (1)" in out


# ---------------------------------------------------------------- tampered configs through info / predict


def _tampered(model: Path, tmp_path: Path, edit) -> Path:
    copy = shutil.copytree(model, tmp_path / "tampered.fewtune")
    config = json.loads((copy / "config.json").read_text())
    edit(config)
    (copy / "config.json").write_text(json.dumps(config))
    return copy


def _drop(key):
    return lambda c: c.pop(key)


def _set(path: str, value):
    def edit(config):
        *parents, last = path.split(".")
        node = config
        for part in parents:
            node = node[part]
        node[last] = value

    return edit


@pytest.mark.parametrize(
    "command, edit, key",
    [
        ("info", _set("format_version", 999), "format"),
        ("info", _set("classes", ["[/]", "[bold red]b", "blue"]), None),  # markup in names prints as typed
        ("info", _set("preprocessing.input_size", [3, 60000, 60000]), "input_size"),
        ("info", _set("classes", "Fac"), "classes"),
        ("info", _drop("backbone"), "backbone"),
        ("info", _drop("calibration"), "calibration"),
        ("predict", _set("calibration.temperature", -1), "temperature"),
        ("predict", _set("classes", ["a", "b", "c", "d", "e"]), "classes"),
    ],
)
def test_tampered_config(capsys, corpus, model, tmp_path, command, edit, key):
    tampered = _tampered(model, tmp_path, edit)
    argv = [command, tampered] + ([corpus["twins"]["alpha.png"], "-q"] if command == "predict" else [])
    code, out, err = run(capsys, *argv)
    if key is None:
        assert code == 0 and "classes:   3: [/] (?), [bold red]b (?), blue (3)" in out, out
    else:
        one_line_error(code, err, key)


def test_config_that_is_not_json_is_one_line(capsys, model, tmp_path):
    copy = shutil.copytree(model, tmp_path / "m.fewtune")
    (copy / "config.json").write_bytes(b"\x00{not json")
    code, _, err = run(capsys, "info", copy)
    one_line_error(code, err, "config.json")


# ---------------------------------------------------------------- the HTTP API


@pytest.fixture(scope="module")
def client(model, tiny_weights, tmp_path_factory):
    from fastapi.testclient import TestClient

    from fewtune.app.server import ServerConfig, create_app
    from fewtune.model.classifier import load

    config = ServerConfig(models_dir=tmp_path_factory.mktemp("served"), max_image_bytes=20_000_000)
    classifier = load(model)
    with TestClient(
        create_app(classifier.backbone, classifier, config), base_url="http://127.0.0.1:8000"
    ) as client:
        yield client


def _upload(path: Path):
    return [("file", (path.name, path.read_bytes(), "image/png"))]


def test_api_valid_variants_answer_as_their_twin(client, corpus):
    for name, path in corpus["valid"].items():
        response = client.post("/predict", files=_upload(path) + _upload(corpus["twins"][name]))
        assert response.status_code == 200, (name, response.text)
        variant, twin = response.json()
        assert variant["path"] == name and variant["label"] == twin["label"], name


@pytest.mark.parametrize(
    "name",
    ["corrupt.jpg", "truncated.jpg", "truncated.png", "zero.png", "random.png", "text.jpg", "bomb.png"],
)
def test_api_bad_file_is_a_4xx_naming_it(client, corpus, name):
    before = client.get("/classes").json()
    for url in ("/predict", "/classes/new/examples"):
        response = client.post(url, files=_upload(corpus["bad"][name]))
        assert 400 <= response.status_code < 500, (url, response.status_code, response.text)
        assert name in response.json()["detail"], response.text
    assert client.get("/classes").json() == before


def test_api_huge_but_legal_16_bit_png_stays_in_bounded_memory(tiny_weights, tmp_path):
    """A 3000x3000 16-bit PNG (18 KB on the wire, 18 MB of pixels) must not cost the server hundreds of MB."""
    data = tmp_path / "big.png"
    data.write_bytes(black_16_bit_png(3000, 3000))
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak RSS")
    script = f"""
from pathlib import Path
from fastapi.testclient import TestClient
import fewtune
from fewtune.app.server import ServerConfig, create_app

def kib(field):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field))

data = Path({str(data)!r}).read_bytes()
backbone = fewtune.create_backbone("test_efficientnet", weights={str(tiny_weights)!r})
app = create_app(backbone, config=ServerConfig(models_dir={str(tmp_path)!r}))
with TestClient(app, base_url="http://127.0.0.1:8000") as client:
    client.get("/healthz")
    with open("/proc/self/clear_refs", "w") as reset:
        reset.write("5")  # the peak RSS starts again from now: startup's peak must not hide the decode's
    before = kib("VmRSS:")
    response = client.post("/classes/big/examples", files=[("file", ("big.png", data, "image/png"))])
    grown = kib("VmHWM:") - before
print(response.status_code, grown // 1024)
"""
    done = _python("-c", script)
    assert done.returncode == 0, done.stderr
    status, grown_mb = map(int, done.stdout.split())
    assert status < 500 and grown_mb < 80, done.stdout
