"""config.json is data from disk: every tampered value is one FewtuneError naming the key, never a
crash, a wrong answer or a runaway allocation; plus a bounded fuzz of the loaders."""

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import COLOURS, make_image
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

import fewtune
from fewtune.app.cli import main
from fewtune.errors import FewtuneError

NAN, INF = math.nan, math.inf
DELETE = object()


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_backbone) -> Path:
    """One saved prototype model (three colour classes) and its pristine files, shared by the module."""
    root = tmp_path_factory.mktemp("schema")
    for c, (name, rgb) in enumerate(COLOURS.items()):
        for i in range(3):
            make_image(root / "data" / name / f"{i}.png", rgb, noise_seed=10 * c + i)
    return fewtune.train(root / "data", "prototype", backbone=tiny_backbone).save(root / "m.fewtune")


@pytest.fixture
def model(saved, tmp_path) -> Path:
    """A fresh copy of the saved model to tamper with."""
    copy_ = tmp_path / "m.fewtune"
    copy_.mkdir()
    for file in saved.iterdir():
        (copy_ / file.name).write_bytes(file.read_bytes())
    return copy_


def _tamper(model: Path, key: str, value) -> dict:
    config = json.loads((model / "config.json").read_text())
    *parents, last = key.split(".")
    node = config
    for part in parents:
        node = node[part]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    (model / "config.json").write_text(json.dumps(config))
    return config


def _info(capsys, model: Path, *flags: str) -> tuple[int, str, str]:
    try:
        main(["info", str(model), *flags])
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


TAMPERED = [
    ("classes", "Faces", r"classes: expected a JSON array, got str 'Faces'"),
    ("classes", ["blue", "blue", "red"], r"classes: names are not distinct"),
    ("classes", ["blue", " ", "red"], r"classes\[1\]: expected a non-empty name"),
    ("classes", ["blue", 3, "red"], r"classes\[1\]: expected a non-empty name"),
    (
        "calibration.temperature",
        -1,
        r"calibration.temperature: expected a number in \[1e-06, 1e\+06\], got int -1",
    ),
    ("calibration.temperature", NAN, r"calibration.temperature: is nan; every number must be finite"),
    ("calibration.temperature", "1", r"calibration.temperature: expected a number"),
    (
        "preprocessing.input_size",
        [3, 60000, 60000],
        r"preprocessing.input_size: expected \[3, height, width\] with sides 32-1024",
    ),
    ("preprocessing.input_size", [3, 160.0, 160], r"preprocessing.input_size: expected \[3, height, width\]"),
    ("preprocessing.mean", [0.4, "x", 0.4], r"preprocessing.mean: expected 3 numbers in \[-10, 10\]"),
    ("preprocessing.std", [0, 1, 1], r"preprocessing.std: expected 3 numbers in \[1e-06, 10\]"),
    ("preprocessing.crop_pct", INF, r"preprocessing.crop_pct: is inf; every number must be finite"),
    (
        "preprocessing.interpolation",
        "magic",
        r"preprocessing.interpolation: expected one of bicubic, bilinear",
    ),
    ("preprocessing.extra", 1, r"preprocessing.extra: unknown setting"),
    ("open_set.threshold", NAN, r"open_set.threshold: is nan; every number must be finite"),
    ("open_set.threshold", -INF, r"open_set.threshold: is -inf; every number must be finite"),
    ("open_set.threshold", "high", r"open_set.threshold: expected a number >= 0 or Infinity"),
    ("open_set.enabled", "yes", r"open_set.enabled: expected a JSON true/false, got str 'yes'"),
    ("open_set.unknown_label", "red", r"open_set.unknown_label: 'red' is also a class name"),
    ("open_set.colour", "red", r"open_set: expected the keys enabled, threshold, unknown_label, calibration"),
    ("backbone.weights_sha256", "abc", r"backbone.weights_sha256: expected a sha256 of 64 hex digits"),
    ("backbone.embedding_dim", True, r"backbone.embedding_dim: expected a whole number in \[1, 65536\]"),
    (
        "strategy.hyperparameters.temperature",
        -1,
        r"config.json: strategy.hyperparameters: strategy 'prototype': temperature must be > 0",
    ),
    (
        "strategy.hyperparameters.bogus",
        1,
        r"strategy.hyperparameters: strategy 'prototype': .*unexpected keyword argument 'bogus'",
    ),
    ("strategy.name", "nope", r"config.json: strategy.name: unknown strategy 'nope': use one of"),
    ("strategy.fit", [1], r"strategy.fit: expected a JSON object"),
    ("training.per_class", [1], r"training.per_class: expected a JSON object"),
    ("training.per_class.red", -3, r"training.per_class.red: expected a count >= 0"),
    ("format_version", "2", r"format_version: expected a whole number >= 1, got '2'"),
    ("format", "other", r"format: is not 'fewtune-classifier'"),
    ("save_id", 7, r"save_id: expected a string"),
    *(
        (key, DELETE, rf"{key}: expected .*got nothing \(missing\)")
        for key in (
            "classes",
            "backbone",
            "preprocessing",
            "strategy",
            "calibration",
            "open_set",
            "fewtune_version",
        )
    ),
]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    TAMPERED,
    ids=[f"{k}={'missing' if v is DELETE else v!r:.30}" for k, v, _ in TAMPERED],
)
def test_a_tampered_config_is_one_error_naming_the_key(model, tiny_backbone, capsys, key, value, message):
    _tamper(model, key, value)
    with pytest.raises(FewtuneError, match=message) as raised:
        fewtune.load(model, backbone=tiny_backbone)
    assert "\n" not in str(raised.value) and str(raised.value).startswith(str(model))
    code, out, err = _info(capsys, model)
    assert code == 2 and "error:" in err and "internal error" not in err, err


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "classes",
            ["blue", "green", "red", "x", "y"],
            r"support.safetensors: labels do not match the 5 classes of config.json",
        ),
        (
            "classes",
            ["blue", "green"],
            r"support.safetensors: labels do not match the 2 classes of config.json",
        ),
        ("backbone.embedding_dim", 999, r"backbone.embedding_dim is 999 but test_efficientnet gives 256"),
    ],
)
def test_counts_must_match_the_tensors(model, tiny_backbone, key, value, message):
    _tamper(model, key, value)
    with pytest.raises(FewtuneError, match=message):
        fewtune.load(model, backbone=tiny_backbone)


def test_non_finite_tensors_are_refused(model, tiny_backbone):
    from safetensors.torch import load_file

    for name, key in (("support.safetensors", "features"), ("strategy.safetensors", "prototypes")):
        original = (model / name).read_bytes()
        tensors = load_file(model / name)
        tensors[key][0, 0] = NAN
        save_id = json.loads((model / "config.json").read_text())["save_id"]
        save_file(tensors, model / name, metadata={"save_id": save_id})
        with pytest.raises(FewtuneError, match=rf"^{model}/{name} {key}: holds NaN or infinite values"):
            fewtune.load(model, backbone=tiny_backbone)
        (model / name).write_bytes(original)
    assert fewtune.load(model, backbone=tiny_backbone).classes == ["blue", "green", "red"]


def test_not_measured_numbers_in_reports_read_as_null(model, tiny_backbone):
    """Older fine-tuning reports wrote NaN for "not measured": such models still load."""
    _tamper(model, "calibration.nll_before", NAN)
    _tamper(model, "training.seconds", INF)
    loaded = fewtune.load(model, backbone=tiny_backbone)
    assert loaded.calibration["nll_before"] is None and loaded.training["seconds"] is None


def test_json_output_is_valid_json_even_with_an_infinite_threshold(model, capsys):
    _tamper(model, "open_set.threshold", INF)  # "never reject": the one non-finite number allowed
    code, out, err = _info(capsys, model, "--json")

    def refuse(constant):
        raise ValueError(f"bare {constant} is not JSON")

    assert code == 0, err
    assert json.loads(out, parse_constant=refuse)["open_set"]["threshold"] == "Infinity"
    code, out, _ = _info(capsys, model)
    assert code == 0 and "open set: inputs with novelty > inf" in out


def test_info_describes_a_report_edited_out_of_shape(model, capsys):
    _tamper(model, "strategy.fit", {"body": "x"})
    _tamper(model, "calibration.nll_before", DELETE)
    code, out, err = _info(capsys, model)
    assert code == 0, err
    out = " ".join(out.split())  # rich wraps long lines
    assert "fit: {'body': 'x'}" in out  # shown raw
    assert "probabilities: temperature" in out  # the calibration line needs no NLL: described as usual


# --- bounded fuzz: only FewtuneError, whatever the files hold ------------------------------------

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, (*prefix, i))


@st.composite
def mutated_configs(draw, base: dict) -> dict:
    config = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(config) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = config
        for part in path[:-1]:
            parent = parent[part]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(JSON)
    return config


def _only_fewtune_errors(action) -> None:
    try:
        action()
    except FewtuneError as exc:
        assert "\n" not in str(exc)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_fuzz_mutated_configs(saved, model, tiny_backbone, data):
    base = json.loads((saved / "config.json").read_text())
    config = data.draw(mutated_configs(base))
    (model / "config.json").write_text(json.dumps(config))
    _only_fewtune_errors(lambda: fewtune.model.classifier.read_config(model))
    _only_fewtune_errors(lambda: fewtune.load(model, backbone=tiny_backbone))


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_fuzz_mutated_backbone_sections_without_a_given_backbone(saved, model, data):
    base = json.loads((saved / "config.json").read_text())
    config = data.draw(mutated_configs({"backbone": base["backbone"]}))
    (model / "config.json").write_text(json.dumps({**base, **config}))
    _only_fewtune_errors(lambda: fewtune.load(model))


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    name=st.sampled_from(["support.safetensors", "strategy.safetensors", "config.json"]),
    cut=st.integers(0, 2**31),
    flips=st.lists(st.tuples(st.integers(0, 2**31), st.integers(1, 255)), max_size=6),
)
def test_fuzz_truncated_and_corrupted_files(saved, model, tiny_backbone, name, cut, flips):
    data = bytearray((saved / name).read_bytes())
    data = data[: cut % (len(data) + 1)] if cut % 3 == 0 else data
    for position, xor in flips:
        if data:
            data[position % len(data)] ^= xor
    (model / name).write_bytes(bytes(data))
    _only_fewtune_errors(lambda: fewtune.load(model, backbone=tiny_backbone))
    (model / name).write_bytes((saved / name).read_bytes())


DTYPES = [torch.float32, torch.float16, torch.float64, torch.int64, torch.int32, torch.uint8, torch.bool]


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    name=st.sampled_from(["support.safetensors", "strategy.safetensors"]),
    tensors=st.dictionaries(
        st.sampled_from(["features", "labels", "prototypes", "sums", "support", "weight", "bias", "x"]),
        st.tuples(st.sampled_from(DTYPES), st.lists(st.integers(0, 5), max_size=3), st.integers(0, 2**16)),
        max_size=4,
    ),
)
def test_fuzz_well_formed_tensor_files_of_the_wrong_shape(saved, model, tiny_backbone, name, tensors):
    save_id = json.loads((model / "config.json").read_text())["save_id"]
    made = {}
    for key, (dtype, shape, seed) in tensors.items():
        values = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 3
        made[key] = values.to(dtype) if dtype != torch.bool else values > 0
    save_file(made, model / name, metadata={"save_id": save_id})
    _only_fewtune_errors(lambda: fewtune.load(model, backbone=tiny_backbone))
    (model / name).write_bytes((saved / name).read_bytes())
