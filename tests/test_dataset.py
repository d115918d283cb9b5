import pytest
from conftest import make_image

from fewtune import load_dataset
from fewtune.data.dataset import collect_inputs
from fewtune.errors import FewtuneError


def test_folder_layout(colour_data):
    (colour_data / "red" / "notes.txt").write_text("not an image")
    (colour_data / "red" / ".DS_Store").write_bytes(b"\0")
    (colour_data / ".hidden_class").mkdir()
    data = load_dataset(colour_data)
    assert data.classes == ["blue", "green", "red"]
    assert data.counts() == {"blue": 3, "green": 3, "red": 3}
    assert data.skipped == 2
    assert all(data.classes[label] == path.parent.name for path, label in zip(data.paths, data.labels))


def test_csv_layout(colour_data, tmp_path):
    csv = tmp_path / "labels.csv"
    rows = [f"{p.relative_to(tmp_path)},{p.parent.name}" for p in sorted(colour_data.rglob("*.png"))]
    csv.write_text("path,label\n" + "\n".join(rows) + "\n")
    data = load_dataset(csv)
    assert data.classes == ["blue", "green", "red"] and len(data.paths) == 9


@pytest.mark.parametrize(
    "header, row, message",
    [
        ("file,class", "x.png,a", "expected a header row with 'path' and 'label'"),
        ("path,label", "missing.png,a", r"line 2: .*missing\.png does not exist"),
        ("path,label", ",a", "line 2: empty path or label"),
    ],
)
def test_csv_errors(tmp_path, header, row, message):
    csv = tmp_path / "labels.csv"
    csv.write_text(f"{header}\n{row}\n")
    with pytest.raises(FewtuneError, match=message):
        load_dataset(csv)


def test_missing_source(tmp_path):
    with pytest.raises(FewtuneError, match="no such file or folder"):
        load_dataset(tmp_path / "nope")


def test_empty_folder(tmp_path):
    with pytest.raises(FewtuneError, match="no class subfolders found"):
        load_dataset(tmp_path)


def test_loose_images_get_a_hint(tmp_path):
    make_image(tmp_path / "a.png", (0, 0, 0))
    with pytest.raises(FewtuneError, match="1 loose images: move them into one subfolder per class"):
        load_dataset(tmp_path)


def test_class_without_images(colour_data):
    (colour_data / "pear").mkdir()
    (colour_data / "pear" / "readme.txt").write_text("")
    with pytest.raises(
        FewtuneError, match=r"pear: class 'pear' has no images .* add at least one or remove the folder"
    ):
        load_dataset(colour_data)


def test_only_one_class(tmp_path):
    make_image(tmp_path / "apple" / "a.png", (0, 0, 0))
    with pytest.raises(
        FewtuneError, match=r"found one class \(only 'apple'\); a classifier needs at least two"
    ):
        load_dataset(tmp_path)


def test_collect_inputs_takes_files_folders_and_globs(colour_data):
    one = colour_data / "red" / "0.png"
    assert collect_inputs([one]) == [one]
    assert len(collect_inputs([colour_data])) == 9
    assert len(collect_inputs([str(colour_data / "*" / "1.png")])) == 3


def test_a_label_is_not_a_path(colour_data):
    with pytest.raises(
        FewtuneError,
        match="^red: not a file, folder or glob that matches images; predict takes image paths, not labels",
    ):
        collect_inputs(["red"])
