"""`python -m pipeline.predict`: image files of the smoke run's test split classified by its export."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
from PIL import Image

from components.loaded_model import load_exported
from pipeline.predict import main
from tests.conftest import QUIET_ENV, REPO_DIR, read_split

CLASS_NAMES = [str(digit) for digit in range(10)]
# The folder `image_dir` writes, as a recursive, sorted search finds it (upper-case suffixes too, notes.txt not).
FOLDER_ORDER = ["gray_0.png", "gray_1.png", "gray_2.png", "gray_3.png", "gray_7.jpg", "large_5.png",
                "more/gray_9.png", "rgb_4.png", "rgb_6.png", "rgb_8.JPEG"]
# `python -m pipeline.predict ARGS` with TensorFlow's first import recorded; stdout is the command's own.
RUN_AND_REPORT_IMPORTS = """
import json, runpy, sys, traceback
imported_at = []
sys.addaudithook(lambda event, args: imported_at.append("".join(traceback.format_stack()))
                 if event == "import" and args[0] in ("tensorflow", "keras") and not imported_at else None)
codes = []
for args in " ".join(sys.argv[1:]).split(" --next "):  # several commands, one process
    sys.argv = ["pipeline.predict", *args.split()]
    try:
        runpy.run_module("pipeline.predict", run_name="__main__", alter_sys=True)
    except SystemExit as exit:
        codes.append(exit.code)
print(json.dumps({"codes": codes, "imported_at": imported_at,
                  "loaded": sorted(name for name in sys.modules if name in ("tensorflow", "keras", "tf2onnx"))}),
      file=sys.stderr)
"""


@pytest.fixture(scope="module")
def version_dir(smoke_run) -> Path:
    return smoke_run.workdir / "saved_models" / "digits" / "1"


@pytest.fixture(scope="module")
def test_images(smoke_run) -> np.ndarray:
    return read_split(Path(smoke_run.manifest["run_dir"]) / "ingest", limit=10)[0]


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory, test_images) -> Path:
    """Ten test images as files: grayscale and RGB, PNG and JPEG, 8x8 and other sizes, one in a sub-folder."""
    folder = tmp_path_factory.mktemp("images")
    gray = [Image.fromarray(image[..., 0], "L") for image in test_images]
    for index in range(4):
        gray[index].save(folder / f"gray_{index}.png")
    gray[4].convert("RGB").save(folder / "rgb_4.png")
    gray[5].resize((24, 24), Image.Resampling.NEAREST).save(folder / "large_5.png")
    gray[6].convert("RGB").resize((11, 17), Image.Resampling.BICUBIC).save(folder / "rgb_6.png")
    gray[7].save(folder / "gray_7.jpg", quality=95)
    gray[8].convert("RGB").resize((32, 32)).save(folder / "rgb_8.JPEG", format="JPEG")
    (folder / "more").mkdir()
    gray[9].save(folder / "more" / "gray_9.png")
    (folder / "notes.txt").write_text("not an image, and not searched for")
    return folder


@pytest.fixture
def bad_files(tmp_path) -> dict[str, Path]:
    """A text file named .png and a JPEG cut short."""
    (tmp_path / "notes.png").write_text("not an image")
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buffer, format="JPEG")
    (tmp_path / "cut.jpg").write_bytes(buffer.getvalue()[:40])
    return {"text": tmp_path / "notes.png", "cut": tmp_path / "cut.jpg"}


def predict(capsys, *args: object) -> tuple[int, str, str]:
    """`python -m pipeline.predict ARGS` in this process: exit code, stdout, stderr."""
    code = main([str(arg) for arg in args])
    out, err = capsys.readouterr()
    return code, out, err


def expected_pixels(path: Path) -> np.ndarray:
    """What the model should be fed for a file: Pillow's grayscale, resized bilinearly to 8x8 if need be."""
    with Image.open(path) as image:
        gray = image.convert("L")
        if gray.size != (8, 8):
            gray = gray.resize((8, 8), Image.Resampling.BILINEAR)
    return np.asarray(gray, dtype=np.uint8)[..., None]


def onnx_probabilities(version_dir: Path, pixels: np.ndarray) -> np.ndarray:
    """ONNX Runtime run directly on the exported model.onnx, no project code."""
    session = onnxruntime.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(["probabilities"], {"pixels": pixels.astype(np.float32)})[0]


def test_json_gives_each_file_the_probabilities_onnx_runtime_and_the_loaded_model_give(
        capsys, version_dir, image_dir, test_images):
    paths = [image_dir / name for name in reversed(FOLDER_ORDER)]  # the order given is kept
    code, out, err = predict(capsys, version_dir, *paths, "--format", "json", "--top-k", "10", "--batch-size", "3")
    assert code == 0, err
    results = json.loads(out)
    assert [result["path"] for result in results] == [str(path) for path in paths]
    pixels = np.stack([expected_pixels(path) for path in paths])
    for name in ("gray_0.png", "gray_3.png", "rgb_4.png", "more/gray_9.png"):  # same size, lossless: untouched
        assert np.array_equal(pixels[paths.index(image_dir / name)], test_images[int(name[-5])])
    direct = onnx_probabilities(version_dir, pixels)
    loaded = load_exported(version_dir).predict(pixels)
    for result, row, prediction in zip(results, direct, loaded):
        labels = [entry["label"] for entry in result["predictions"]]
        probabilities = [entry["probability"] for entry in result["predictions"]]
        assert probabilities == sorted(probabilities, reverse=True) and sorted(labels) == CLASS_NAMES
        assert dict(zip(labels, probabilities)) == pytest.approx(dict(zip(CLASS_NAMES, row.tolist())), abs=1e-6)
        assert dict(zip(labels, probabilities)) == pytest.approx(
            dict(zip(prediction.labels, prediction.probabilities)), abs=1e-6)
        assert labels[0] == CLASS_NAMES[row.argmax()] == prediction.label


@pytest.mark.parametrize("backend, file_name", [("litert", "model.tflite"), ("litert-int8", "model_int8.tflite")])
def test_the_litert_backends_give_what_litert_itself_gives_on_the_file(capsys, version_dir, image_dir, backend,
                                                                       file_name):
    from ai_edge_litert.interpreter import Interpreter

    paths = [image_dir / name for name in FOLDER_ORDER]
    code, out, err = predict(capsys, version_dir, *paths, "--format", "json", "--top-k", "10", "--backend", backend)
    assert code == 0, err
    runner = Interpreter(model_path=str(version_dir / file_name)).get_signature_runner("serving_default")
    direct = runner(pixels=np.stack([expected_pixels(path) for path in paths]).astype(np.float32))["probabilities"]
    for result, row in zip(json.loads(out), direct):
        given = {entry["label"]: entry["probability"] for entry in result["predictions"]}
        assert given == pytest.approx(dict(zip(CLASS_NAMES, row.tolist())), abs=1e-6)


def test_a_backend_whose_file_the_version_lacks_exits_2_with_one_line_saying_why(capsys, version_dir, image_dir,
                                                                                  tmp_path):
    copy = tmp_path / "digits" / "1"
    shutil.copytree(version_dir, copy)
    (copy / "model_int8.tflite").unlink()
    code, out, err = predict(capsys, copy, image_dir, "--backend", "litert-int8")
    assert (code, out, err.count("\n")) == (2, "", 1)
    assert err.startswith(f"error: {copy} has no model_int8.tflite (") and "choose another backend: onnx," in err


def test_top_k_keeps_the_k_most_probable_classes_best_first(capsys, version_dir, image_dir):
    paths = [image_dir / name for name in FOLDER_ORDER]
    code, out, _ = predict(capsys, version_dir, *paths, "--format", "json", "--top-k", "3")
    direct = onnx_probabilities(version_dir, np.stack([expected_pixels(path) for path in paths]))
    assert code == 0
    for result, row in zip(json.loads(out), direct):
        best = np.argsort(-row)[:3]
        assert [entry["label"] for entry in result["predictions"]] == [CLASS_NAMES[i] for i in best]
        assert [entry["probability"] for entry in result["predictions"]] == pytest.approx(row[best], abs=1e-6)


def test_a_folder_means_its_image_files_found_recursively_in_sorted_order(capsys, version_dir, image_dir):
    code, out, _ = predict(capsys, version_dir, image_dir, "--format", "json")
    assert code == 0
    assert [result["path"] for result in json.loads(out)] == [str(image_dir / name) for name in FOLDER_ORDER]


def test_a_file_named_explicitly_is_read_whatever_its_extension(capsys, version_dir, image_dir, tmp_path):
    shutil.copy(image_dir / "gray_0.png", tmp_path / "digit.bin")
    code, out, _ = predict(capsys, version_dir, tmp_path / "digit.bin", image_dir / "gray_0.png", "--format", "json")
    first, second = json.loads(out)
    assert code == 0 and first["path"] == str(tmp_path / "digit.bin") and first["predictions"] == second["predictions"]


def test_csv_has_a_row_per_image_and_rank_with_the_json_values(capsys, version_dir, image_dir):
    code, out, _ = predict(capsys, version_dir, image_dir, "--format", "csv", "--top-k", "2")
    assert code == 0 and out.splitlines()[0] == "path,rank,label,probability"
    rows = [{**row, "probability": float(row["probability"])} for row in csv.DictReader(io.StringIO(out))]
    expected = [{"path": result["path"], "rank": str(rank), "label": entry["label"],
                 "probability": entry["probability"]}
                for result in json.loads(_json(capsys, version_dir, image_dir))
                for rank, entry in enumerate(result["predictions"], 1)]
    assert rows == expected and len(rows) == 2 * len(FOLDER_ORDER)


def _json(capsys, version_dir: Path, image_dir: Path) -> str:
    """The command's JSON for the folder, its two most probable classes per image."""
    return predict(capsys, version_dir, image_dir, "--format", "json", "--top-k", "2")[1]


def test_table_is_aligned_with_an_images_further_classes_on_their_own_lines(capsys, version_dir, image_dir):
    code, out, _ = predict(capsys, version_dir, image_dir, "--top-k", "2")
    results = json.loads(_json(capsys, version_dir, image_dir))
    header, *lines = out.splitlines()
    assert code == 0 and header.split() == ["path", "label", "probability"]
    assert len(lines) == 2 * len(results) and {len(line) for line in lines} == {len(header)}
    label_at = header.index("label")
    for index, result in enumerate(results):
        for rank, entry in enumerate(result["predictions"]):
            line = lines[2 * index + rank]
            assert line[:label_at].strip() == (result["path"] if rank == 0 else "")
            assert line[label_at:].split()[0] == entry["label"]
            assert float(line[-len("probability"):]) == pytest.approx(entry["probability"], abs=5e-5)


def test_a_model_folder_means_its_newest_version(capsys, version_dir, image_dir, tmp_path):
    model_dir = tmp_path / "digits"
    shutil.copytree(version_dir, model_dir / "1")
    shutil.copytree(version_dir, model_dir / "2")
    metadata = json.loads((model_dir / "2" / "metadata.json").read_text())
    metadata["class_names"] = [f"digit {name}" for name in CLASS_NAMES]  # tells version 2 from version 1
    (model_dir / "2" / "metadata.json").write_text(json.dumps(metadata))
    image = image_dir / "gray_0.png"
    newest = json.loads(predict(capsys, model_dir, image, "--format", "json")[1])
    first = json.loads(predict(capsys, model_dir / "1", image, "--format", "json")[1])
    original = json.loads(predict(capsys, version_dir.parent, image, "--format", "json")[1])
    assert newest[0]["predictions"][0]["label"] == "digit " + first[0]["predictions"][0]["label"]
    assert first == original


def test_a_file_that_is_no_image_stops_the_command_with_one_line_naming_it(capsys, version_dir, image_dir, bad_files):
    reasons = {"notes.png": "not an image in PNG or JPEG format", "cut.jpg": "truncated or corrupt"}
    for bad in bad_files.values():
        code, out, err = predict(capsys, version_dir, image_dir / "gray_0.png", bad)
        assert (code, out) == (2, "") and len(err.splitlines()) == 1, err
        assert err.startswith(f"error: {bad}: {reasons[bad.name]}") and "--skip-bad" in err


def test_skip_bad_classifies_the_others_and_lists_what_it_skipped(capsys, version_dir, image_dir, bad_files):
    good = [image_dir / "gray_0.png", image_dir / "rgb_4.png"]
    code, out, err = predict(capsys, version_dir, good[0], bad_files["text"], good[1], bad_files["cut"],
                             "--skip-bad", "--format", "json", "--batch-size", "2")
    assert code == 0
    assert [result["path"] for result in json.loads(out)] == [str(path) for path in good]
    first, *reasons = err.splitlines()
    assert first == "skipped 2 of 4 files, not readable images:"
    assert [reason.split(": ")[0].strip() for reason in reasons] == [str(bad_files["text"]), str(bad_files["cut"])]


def test_skip_bad_with_nothing_readable_exits_2(capsys, version_dir, bad_files):
    code, out, err = predict(capsys, version_dir, *bad_files.values(), "--skip-bad")
    assert (code, out) == (2, "") and err.splitlines()[-1] == "error: none of the 2 files is a readable image"


@pytest.mark.parametrize("inputs, message", [
    (["empty"], "error: no image files (.png, .jpg, .jpeg) in {tmp}/empty; give image files or folders"),
    (["missing.png"], "error: {tmp}/missing.png: no such file or folder"),
])
def test_no_images_to_classify_exits_2_with_one_line(capsys, version_dir, tmp_path, inputs, message):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no image")
    code, out, err = predict(capsys, version_dir, *(tmp_path / name for name in inputs))
    assert (code, out) == (2, "") and len(err.splitlines()) == 1
    assert err.startswith(message.format(tmp=tmp_path))


def test_an_unknown_model_dir_exits_2_with_one_line_naming_it(capsys, image_dir, tmp_path):
    (tmp_path / "model" / "1").mkdir(parents=True)  # a numbered folder without metadata.json is no export
    for model_dir in (tmp_path / "nowhere", tmp_path / "model", tmp_path / "model" / "1"):
        code, out, err = predict(capsys, model_dir, image_dir)
        assert (code, out) == (2, "") and len(err.splitlines()) == 1
        assert err.startswith(f"error: {model_dir}: not an exported model")


@pytest.mark.parametrize("option", [["--top-k", "0"], ["--batch-size", "many"], ["--format", "xml"]])
def test_a_bad_option_exits_2_with_one_line(capsys, version_dir, image_dir, option):
    with pytest.raises(SystemExit) as exited:
        main([str(version_dir), str(image_dir), *option])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and len(err.splitlines()) == 1 and err.startswith(f"error: argument {option[0]}")


def test_the_command_loads_no_tensorflow_with_any_backend_but_savedmodel(version_dir, image_dir):
    backends = ("onnx", "litert", "onnx-int8", "litert-int8")
    commands = " --next ".join(f"{version_dir.parent} {image_dir} --format json --backend {backend}"
                               for backend in backends)  # one process: the first to load TensorFlow is caught
    result = subprocess.run([sys.executable, "-c", RUN_AND_REPORT_IMPORTS, *commands.split()], cwd=REPO_DIR,
                            env=QUIET_ENV, capture_output=True, text=True, timeout=120)
    report = json.loads(result.stderr.splitlines()[-1])
    assert report["codes"] == [0] * len(backends), result.stderr
    decoder, outputs, at = json.JSONDecoder(), [], 0
    while at < len(result.stdout.rstrip()):
        output, at = decoder.raw_decode(result.stdout, at)
        outputs.append(output)
        at += len(result.stdout[at:]) - len(result.stdout[at:].lstrip())
    assert [len(output) for output in outputs] == [len(FOLDER_ORDER)] * len(backends)
    assert report["loaded"] == [], "".join(report["imported_at"]) or report["loaded"]
