"""The CLI end to end on tiny inputs: data list, data inspect (phantoms and folders), demo, error exits."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from medloop.cli import app

pytestmark = pytest.mark.integration
runner = CliRunner()


def test_data_list_shows_builtins_and_layouts():
    result = runner.invoke(app, ["data", "list"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for name in ("builtin:chest-xray", "builtin:cardiac-mr", "folder", "montgomery", "shenzhen", "jsrt", "acdc", "nifti", "dicom"):
        assert name in result.output


def test_inspect_builtin_with_preview_and_json(tmp_path):
    preview, js = tmp_path / "p.png", tmp_path / "s.json"
    result = runner.invoke(app, ["data", "inspect", "builtin:cardiac-mr", "--size", "32", "-o", "n_volumes=2",
                                 "--preview", str(preview), "--json", str(js)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "myocardium" in result.output and "blood pool" in result.output
    summary = json.loads(js.read_text())
    assert summary["n_cases"] == 2 and summary["working_size"] == [32, 32]
    assert preview.stat().st_size > 10_000


def test_inspect_folder_autodetects_layout(folder_tree):
    result = runner.invoke(app, ["data", "inspect", str(folder_tree)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "[folder]" in result.output and "4 2D samples from 4 images" in result.output
    assert "1 samples; 1 cases (003)" in result.output  # the case without a mask is named


def test_inspect_skip_mode_reports_skips(folder_tree):
    (folder_tree / "images" / "000.png").write_bytes(b"broken")
    result = runner.invoke(app, ["data", "inspect", str(folder_tree), "--on-error", "skip"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "skipped" in result.output and "corrupt: 1" in result.output


def _cli(*args, cwd=None):
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "medloop", *args], capture_output=True, text=True, env=env, cwd=cwd)


def test_user_errors_exit_2_with_one_clear_line_and_no_traceback(folder_tree):
    (folder_tree / "images" / "001.png").write_bytes(b"broken")
    proc = _cli("data", "inspect", str(folder_tree))
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "001.png" in proc.stderr and "re-export" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = _cli("data", "inspect", "builtin:chest", "--size", "32")
    assert proc.returncode == 2 and "did you mean 'chest-xray'" in proc.stderr


def test_inspect_names_damaged_dicoms_and_skips_them_without_reader_noise(tmp_path):
    import shutil

    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    pool = tmp_path / "pool"
    pool.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copy(get_testdata_file(name), pool / name)
    raw = bytearray((pool / "CT_small.dcm").read_bytes())
    at = raw.find(b"\x20\x00\x0d\x00UI")
    raw[at + 4:at + 6] = b"WI"  # a value representation bit flip: a NotImplementedError traceback before
    (pool / "vr_flip.dcm").write_bytes(bytes(raw))
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.Rows = ds.Rows - 1  # read as a 127 x 128 image before
    ds.save_as(pool / "rows.dcm")
    (pool / "notes.txt").write_text("exported by the scanner")
    proc = _cli("data", "inspect", str(pool), "--on-error", "skip")
    assert proc.returncode == 0, proc.stderr
    assert "vr_flip.dcm: cannot read DICOM header" in proc.stderr and "rows.dcm: pixel data holds" in proc.stderr
    assert "Traceback" not in proc.stderr and "pydicom" not in proc.stderr
    assert "corrupt: 2" in proc.stdout and "ignored: " in proc.stdout and "notes.txt" in proc.stdout
    proc = _cli("data", "inspect", str(pool))
    assert proc.returncode == 2 and "error:" in proc.stderr and "vr_flip.dcm" in proc.stderr and "Traceback" not in proc.stderr


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("medloop ")


def test_demo_writes_previews_summaries_splits_experiment_and_run_record(tmp_path):
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--out", str(out), "--size", "32", "--seed", "3", "--quick"], terminal_width=200)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "run.json").read_text())
    assert record["seed"] == 3 and record["medloop_version"] and record["config"]["chest-xray"]["size"] == 32
    for name in ("chest-xray", "cardiac-mr"):
        assert (out / name / "preview.png").stat().st_size > 10_000
        summary = json.loads((out / name / "summary.json").read_text())
        splits = json.loads((out / name / "splits.json").read_text())
        assert sum(len(v) for v in splits.values()) == summary["n_samples"]
    chest = json.loads((out / "chest-xray" / "summary.json").read_text())
    assert chest["class_counts"] == {"normal": 93, "nodule": 154}
    results = json.loads((out / "mahapatra2018" / "results.json").read_text())
    assert set(results["tracks"]) == {"generative", "uncertainty", "random"}
    assert (out / "mahapatra2018" / "report.html").is_file() and (out / "mahapatra2018" / "gallery.png").is_file()
    collab = json.loads((out / "ravanbakhsh2018" / "results.json").read_text())
    assert collab["method"] == "ravanbakhsh2018" and (out / "ravanbakhsh2018" / "correlation.png").is_file()
    assert "test AUC" in result.output and "reports:" in result.output and "Pearson r" in result.output


def test_train_classifier_then_score_pool(tmp_path):
    out = tmp_path / "cls"
    result = runner.invoke(app, ["train", "--task", "classify", "--data", "builtin:chest-xray", "-o", "n_normal=6", "-o", "n_nodule=6",
                                 "--model", "resnet18", "--width", "4", "--size", "32", "--epochs", "2", "--schedule", "cosine",
                                 "--out", str(out)],
                           terminal_width=200)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"auc", "sensitivity", "specificity", "ece"} <= set(metrics["test"]) and len(metrics["history"]) == 2
    assert metrics["history"][0]["lr"] > metrics["history"][1]["lr"] > 0  # --schedule cosine reached the trainer
    assert "| auc |" in (out / "report.md").read_text() and (out / "history.png").is_file()
    scored = tmp_path / "scored"
    result = runner.invoke(app, ["score", "--checkpoint", str(out / "checkpoint.pt"), "--data", "builtin:chest-xray",
                                 "-o", "n_normal=3", "-o", "n_nodule=2", "--out", str(scored), "--mc-samples", "4"],
                           terminal_width=200)
    assert result.exit_code == 0, result.output
    import csv

    rows = list(csv.DictReader(open(scored / "scores.csv")))
    assert len(rows) == 5 and {"combined", "epistemic", "aleatoric", "bald", "entropy", "margin", "variation_ratio", "rank"} <= set(rows[0])
    assert sorted(int(r["rank"]) for r in rows) == [1, 2, 3, 4, 5]


def test_train_unet_then_score_writes_uncertainty_maps(tmp_path):
    out = tmp_path / "seg"
    result = runner.invoke(app, ["train", "--task", "segment", "--data", "builtin:cardiac-mr", "-o", "n_volumes=3",
                                 "-o", "max_slices=10", "--model", "unet", "--size", "32", "--epochs", "1", "--out", str(out)],
                           terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "myocardium" in json.loads((out / "metrics.json").read_text())["test"]["dice"]
    scored = tmp_path / "scored"
    result = runner.invoke(app, ["score", "--checkpoint", str(out / "checkpoint.pt"), "--data", "builtin:cardiac-mr",
                                 "-o", "n_volumes=1", "-o", "max_slices=10", "--out", str(scored), "--mc-samples", "3",
                                 "--max-maps", "2"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert len(list((scored / "maps").glob("*.png"))) == 2
    assert "combined_top_q_mean" in (scored / "scores.csv").read_text().splitlines()[0]


def test_train_rejects_a_model_for_the_wrong_task():
    result = runner.invoke(app, ["train", "--task", "segment", "--model", "resnet18", "--data", "builtin:cardiac-mr"])
    assert result.exit_code != 0 and "does a 'classify' task" in str(result.exception)


def test_train_rejects_a_size_the_unet_cannot_halve(tmp_path):
    result = runner.invoke(app, ["train", "--task", "segment", "--model", "unet", "--data", "builtin:cardiac-mr",
                                 "-o", "n_volumes=2", "-o", "max_slices=10", "--size", "36", "--out", str(tmp_path)])
    assert "working size 36 is not divisible by 16" in str(result.exception) and "--size 32" in str(result.exception)


def test_generate_writes_variants_manifest_and_gallery(folder_tree, tmp_path):
    out = tmp_path / "gen"
    tiny = ["--set", "epochs=1", "--set", "ae_epochs=1", "--set", "vgg_epochs=1", "--set", "vgg_width=4",
            "--set", "g_features=8", "--set", "g_blocks=1", "--set", "d_features=4", "--set", "d_dense=8",
            "--set", "batch_size=2"]
    result = runner.invoke(app, ["generate", "--data", str(folder_tree), "--size", "32", "--per-image", "3",
                                 "--seg-epochs", "1", "--out", str(out), *tiny], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "12 variants of 4 images" in result.output
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(records) == 12
    by_source = {r["source_sample"]: r for r in records}
    assert by_source["003"]["mask_source"] == "predicted" and by_source["000"]["mask_source"] == "manual"
    assert by_source["001"]["label"] == 1 and by_source["000"]["label"] == 0
    assert all(any(op["op"] == "boundary" for op in r["ops"]) for r in records)
    assert len(list((out / "images").glob("*.png"))) == 12 and len(list((out / "masks").glob("*.png"))) == 12
    assert (out / "gallery.png").stat().st_size > 5_000
    run = json.loads((out / "run.json").read_text())
    assert run["command"] == "medloop generate" and "vgg16" in run["config"]["content_vgg"]["vgg"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["masks"] == {"manual": 3, "predicted": 1} and summary["images_per_s"] > 0
    # the output is itself a dataset medloop reads, and a saved generator is reused without training
    from medloop.data import load_dataset

    ds = load_dataset(str(out), progress=False)
    assert len(ds) == 12 and ds.has_mask.all()
    again = runner.invoke(app, ["generate", "--data", str(folder_tree), "--size", "32", "--per-image", "2",
                                "--limit", "1", "--checkpoint", str(out / "generator.pt"), "--out", str(tmp_path / "g2")],
                          terminal_width=200)
    assert again.exit_code == 0, again.output
    assert "loaded from" in again.output


def test_generate_with_the_fine_texture_options(folder_tree, tmp_path):
    from medloop.synth.generator import MaskConditionedSampler

    out = tmp_path / "gen"
    opts = ["epochs=1", "ae_epochs=1", "vgg_weight=0", "g_features=8", "g_blocks=1", "d_features=4", "d_dense=8",
            "batch_size=2", "g_noise=1", "l1_lowpass=1.0", "texture_weight=10", "g_ema=0.9"]
    result = runner.invoke(app, ["generate", "--data", str(folder_tree), "--size", "32", "--per-image", "2",
                                 "--seg-epochs", "1", "--out", str(out), *[a for o in opts for a in ("--set", o)]],
                           terminal_width=200)
    assert result.exit_code == 0, result.output
    config = json.loads((out / "run.json").read_text())["config"]["cgan"]
    assert config["g_noise"] == 1 and config["texture_weight"] == 10
    assert MaskConditionedSampler.load(out / "generator.pt").G.params["noise_channels"] == 1
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 8


def test_generate_with_wrong_size_checkpoint_is_a_clear_error(folder_tree, tmp_path):
    from medloop.models.cgan import MaskConditionedGenerator
    from medloop.models.mask_ae import MaskAutoencoder
    from medloop.synth import PerturbConfig
    from medloop.synth.generator import MaskConditionedSampler

    path = MaskConditionedSampler(MaskAutoencoder(64, 4, (4, 4)), MaskConditionedGenerator(1, 4, 8, 1, 0),
                                  PerturbConfig(), 0.0).save(tmp_path / "g.pt")
    result = subprocess.run([sys.executable, "-m", "medloop", "generate", "--data", str(folder_tree), "--size", "32",
                             "--checkpoint", str(path), "--out", str(tmp_path / "o"), "--set", "ae_epochs=0"],
                            capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 2, result.stderr
    assert "trained at 64 px" in result.stderr and "Traceback" not in result.stderr



def test_pretrain_then_train_from_its_checkpoint(tmp_path):
    out = tmp_path / "ss"
    result = runner.invoke(app, ["pretrain", "--data", "builtin:chest-xray", "-o", "n_normal=10", "-o", "n_nodule=10",
                                 "--size", "32", "--width", "4", "--epochs", "2", "--batch-size", "8", "--out", str(out)],
                           terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "linear probe (test ROC AUC): pretrained" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["history"]) == 2 and metrics["linear_probe"]["random_init"]["n_test"] > 0
    assert (out / "loss.png").is_file() and json.loads((out / "run.json").read_text())["seed"] == 0
    trained = tmp_path / "cls"
    args = ["train", "--data", "builtin:chest-xray", "-o", "n_normal=6", "-o", "n_nodule=6", "--size", "32",
            "--epochs", "1", "--out", str(trained)]
    result = runner.invoke(app, [*args, "--width", "4", "--pretrained", str(out / "selfsup.pt")], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert f"Pretrained: {out / 'selfsup.pt'}" in (trained / "report.md").read_text()
    result = runner.invoke(app, [*args, "--width", "8", "--pretrained", str(out / "selfsup.pt")], terminal_width=200)
    assert result.exit_code != 0 and "width" in str(result.exception)  # another network: refused, naming the mismatch
    result = runner.invoke(app, [*args, "--width", "4", "--pretrained", "selfsup"], terminal_width=200)
    assert result.exit_code != 0 and "medloop pretrain" in str(result.exception)
