"""FID-vs-steps benchmark on a tiny random pipeline: CSV, JSON, markdown table, plot, grids; bad input exits 2."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

from distill_diffusion.bench.quality import BenchmarkSettings, run_quality_benchmark
from distill_diffusion.bench.specs import PipelineSpec, parse_pipeline_spec
from distill_diffusion.cli import main
from distill_diffusion.errors import UserError
from distill_diffusion.toy.tokenizer import build_tokenizer


class TinyFeatures(nn.Module):
    """A fixed random conv net standing in for Inception: uint8 images → 4 features."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(x.float() / 127.5 - 1.0)).mean(dim=(2, 3))


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random CLIPModel + processor saved like a real one (16-dim projection)."""
    tok = build_tokenizer()
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=77, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id)  # fmt: skip
    vision = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2)
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}), tokenizer=tok
    )
    out = tmp_path_factory.mktemp("clip")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def test_benchmark_writes_csv_table_plot_and_grids(tiny_pipeline_dir, toy_data_dir, clip_dir, tmp_path):
    specs = [
        PipelineSpec("teacher", str(tiny_pipeline_dir), sampler="ddim", guidance_scale=3.0, steps=(1, 2, 20)),
        PipelineSpec("lcm", str(tiny_pipeline_dir), sampler="lcm", steps=(1, 2)),
    ]
    settings = BenchmarkSettings(prompts="toy", num_images=4, real_dir=str(toy_data_dir), fid_feature=TinyFeatures(),
                                 feature_dim=4, clip_model=str(clip_dir), batch_size=3, device="cpu")  # fmt: skip
    result = run_quality_benchmark(specs, tmp_path, settings)
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert [(r["pipeline"], int(r["steps"])) for r in rows] == [("teacher", 1), ("teacher", 2), ("teacher", 20), ("lcm", 1), ("lcm", 2)]
    for r in rows:
        assert float(r["fid"]) >= 0 and 0 <= float(r["clip_score"]) <= 100
        assert float(r["seconds_per_image"]) > 0 and float(r["images_per_second"]) > 0
        assert r["num_images"] == "4" and r["num_real"] == "256" and r["resize"] == "none"
    assert rows[0]["guidance_scale"] == "3.0" and rows[3]["guidance_scale"] == "1.0"
    assert rows[3]["scheduler"] == "LCMScheduler" and rows[0]["scheduler"] == "DDIMScheduler"
    meta = json.loads((tmp_path / "results.json").read_text())["meta"]
    assert meta["num_images"] == 4 and meta["device"] == "cpu" and meta["dtype"] == "float32" and meta["resize"] == "none"
    table = (tmp_path / "results.md").read_text()
    assert "N = 4 images" in table and "| teacher | ddim | 20 |" in table
    with Image.open(tmp_path / "fid_vs_steps.png") as im:
        assert im.width > 600  # two panels: FID and CLIP
    with Image.open(result["files"]["grid_teacher"]) as im:
        assert im.size == (160 + 3 * 96, 28 + 4 * 96)
    # same prompts and seeds for every pipeline and step count
    a = [json.loads(x) for x in (tmp_path / "images/teacher/steps_001/manifest.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "images/lcm/steps_002/manifest.jsonl").read_text().splitlines()]
    assert [(e["prompt"], e["seed"]) for e in a] == [(e["prompt"], e["seed"]) for e in b]


def test_guidance_sweep_rows_folders_curves_and_equal_fid(tiny_pipeline_dir, toy_data_dir, clip_dir, tmp_path):
    specs = [
        PipelineSpec("teacher", str(tiny_pipeline_dir), sampler="ddim", guidance_scale=(1.0, 3.0), steps=(1, 2)),
        PipelineSpec("lcm", str(tiny_pipeline_dir), sampler="lcm", guidance_scale=(1.0, 1.5), steps=(1,)),
    ]
    settings = BenchmarkSettings(prompts="toy", num_images=4, real_dir=str(toy_data_dir), fid_feature=TinyFeatures(),
                                 feature_dim=4, clip_model=str(clip_dir), batch_size=4, device="cpu")  # fmt: skip
    result = run_quality_benchmark(specs, tmp_path, settings)
    keys = [(r["pipeline"], r["steps"], r["guidance_scale"]) for r in result["rows"]]
    assert keys == [("teacher", 1, 1.0), ("teacher", 1, 3.0), ("teacher", 2, 1.0), ("teacher", 2, 3.0), ("lcm", 1, 1.0), ("lcm", 1, 1.5)]
    assert all(r["fid"] is not None and r["clip_score"] is not None for r in result["rows"])
    manifests = [tmp_path / "images" / p / f"{d}/manifest.jsonl" for p, d in [("teacher", "steps_002_g3"), ("lcm", "steps_001_g1.5")]]
    a, b = ([json.loads(x) for x in m.read_text().splitlines()] for m in manifests)
    assert [(e["prompt"], e["seed"]) for e in a] == [(e["prompt"], e["seed"]) for e in b] and a[0]["guidance_scale"] == 3.0
    assert {"plot", "fid_vs_clip", "grid_teacher", "grid_lcm"} <= set(result["files"])
    with Image.open(result["files"]["grid_teacher"]) as im:
        assert im.width == 160 + 4 * 96  # one column per (steps, guidance)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [(e["pipeline"], e["guidance_scale"], e["teacher_steps"]) for e in saved["equal_fid"]] == [("lcm", 1.0, 2), ("lcm", 1.5, 2)]
    assert "## At equal FID" in (tmp_path / "results.md").read_text()


def test_cli_bench_quality_with_clip_features_and_kid_then_eval(tiny_pipeline_dir, toy_data_dir, clip_dir, tmp_path, capsys):
    out = tmp_path / "bench"
    common = ["--prompts", "toy", "--num_images", "4", "--real", str(toy_data_dir), "--fid_feature", f"clip:{clip_dir}",
              "--device", "cpu"]  # fmt: skip
    code = main(["bench", "quality", "--pipeline", f"lcm={tiny_pipeline_dir},sampler=lcm,steps=1|2", *common, "--kid",
                 "--output_dir", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["fid"] for r in rows] == [None, None] and all(r["kid_mean"] is not None for r in rows)
    assert (out / "fid_vs_steps.png").is_file() and "KID" in (out / "results.md").read_text()
    capsys.readouterr()
    gen = out / "images" / "lcm" / "steps_001"
    assert main(["eval", str(gen), "--real", str(toy_data_dir), "--fid_feature", f"clip:{clip_dir}", "--kid",
                 "--clip_model", str(clip_dir)]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert result["num_fake"] == 4 and result["kid_mean"] is not None and result["clip_score"] >= 0
    # 4 images < 16 CLIP features: FID is undefined, and the error says so and suggests KID
    assert main(["eval", str(gen), "--real", str(toy_data_dir), "--fid_feature", f"clip:{clip_dir}"]) == 2
    err = capsys.readouterr().err
    assert "error: FID is undefined with 4 generated images for 16-dim features" in err and "KID" in err


def _bad_inputs(pipeline: Path, data: Path, clip: Path, tmp: Path) -> list[tuple[list[str], str]]:
    (tmp / "empty.txt").write_text("\n")
    (tmp / "no_images").mkdir()
    ok = ["--pipeline", f"p={pipeline},steps=1", "--prompts", "toy", "--num_images", "4"]
    lora = tmp / "lcm_lora"  # an LCM-LoRA distilled on a 2-timestep grid cannot sample 4 steps
    lora.mkdir()
    (lora / "pytorch_lora_weights.safetensors").write_bytes(b"")
    (lora / "scheduler_config.json").write_text(json.dumps({"_class_name": "LCMScheduler", "original_inference_steps": 2}))
    return [
        (["--pipeline", f"p={pipeline},lora={lora},sampler=lcm,steps=4", "--prompts", "toy"], "p: 4 sampling steps, but this model was distilled on a grid of 2"),
        (["--pipeline", f"p={pipeline}", "--prompts", str(tmp / "empty.txt")], "holds no prompt"),
        ([*ok, "--real", str(tmp / "no_images"), "--kid"], "contains no images"),
        ([*ok, "--real", str(data), "--inception_weights", str(tmp / "w.pth")], "Inception weights file"),
        ([*ok, "--real", str(data), "--fid_feature", f"clip:{clip}"], "FID is undefined"),
        (["--pipeline", f"p={tmp}", "--prompts", "toy"], "not a diffusers pipeline"),
        (["--pipeline", f"p={pipeline},sampler=turbo", "--prompts", "toy"], "unknown sampler"),
        (["--pipeline", f"p={pipeline},lora={tmp / 'nope'}", "--prompts", "toy"], "no such file"),
    ]


def test_bad_input_is_one_line_exit_2_and_writes_nothing(tiny_pipeline_dir, toy_data_dir, clip_dir, tmp_path, capsys):
    for args, needle in _bad_inputs(tiny_pipeline_dir, toy_data_dir, clip_dir, tmp_path):
        out = tmp_path / "out"
        assert main(["bench", "quality", *args, "--output_dir", str(out)]) == 2, args
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert len(err) == 1 and needle in err[0], (args, err)
        assert not out.exists()


def test_eval_with_mismatched_prompts_is_a_user_error(tmp_path, capsys):
    for i in range(3):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{i}.png")
    (tmp_path / "p.txt").write_text("a\nb\n")
    assert main(["eval", str(tmp_path), "--prompts", str(tmp_path / "p.txt"), "--clip_model", str(tmp_path)]) == 2
    assert "3 images but 2 prompts" in capsys.readouterr().err


@pytest.mark.parametrize(
    "text, expected",
    [
        ("lcm=/m,lora=/l,sampler=lcm,guidance=1.5,steps=1|4", PipelineSpec("lcm", "/m", "/l", "lcm", 1.5, (1, 4))),
        ("t=/m", PipelineSpec("t", "/m", steps=(1, 2, 4, 8))),
        ("t=/m,guidance=1|1.5|2,steps=4", PipelineSpec("t", "/m", guidance_scale=(1.0, 1.5, 2.0), steps=(4,))),
        ("t=/m,guidance=2", PipelineSpec("t", "/m", guidance_scale=(2.0,))),  # a sweep of one is one scale
    ],
)
def test_parse_pipeline_spec(text, expected):
    assert parse_pipeline_spec(text) == expected


def test_preset_is_the_deprecated_spelling_of_sampler(capsys):
    assert parse_pipeline_spec("t=/m,preset=lcm") == PipelineSpec("t", "/m", sampler="lcm")
    assert capsys.readouterr().err == "warning: preset= in --pipeline is deprecated and will be removed; use sampler= (the same names)\n"
    with pytest.raises(UserError, match="option 'sampler' is given twice"):
        parse_pipeline_spec("t=/m,sampler=lcm,preset=ddim")


@pytest.mark.parametrize("text", ["=/m", "lcm", "lcm=/m,foo=1", "lcm=/m,steps=a", "lcm=/m,steps=0", "lcm=/m,sampler=x",
                                  "lcm=/m,guidance=1|", "lcm=/m,guidance=1|nan", "lcm=/m,guidance=2|-1", "lcm=/m,guidance=1|1"])
def test_parse_pipeline_spec_errors(text):
    with pytest.raises(UserError):
        parse_pipeline_spec(text)


def test_cli_bench_quality_adds_prompt_accuracy_columns_with_a_toy_classifier(tiny_pipeline_dir, tmp_path, capsys):
    from distill_diffusion.toy.classifier import build_toy_classifier, save_toy_classifier

    classifier = save_toy_classifier(build_toy_classifier(seed=0), tmp_path / "classifier")
    out = tmp_path / "bench"
    args = ["bench", "quality", "--pipeline", f"lcm={tiny_pipeline_dir},sampler=lcm,steps=1|2", "--prompts", "toy",
            "--num_images", "4", "--device", "cpu", "--output_dir", str(out)]  # fmt: skip
    assert main([*args, "--toy_classifier", str(tmp_path / "nowhere")]) == 2
    assert "no toy classifier" in capsys.readouterr().err and not out.exists()
    assert main([*args, "--toy_classifier", str(classifier)]) == 0, capsys.readouterr().err
    heads = ["acc_shape", "acc_colour", "acc_background"]
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert list(rows[0])[-3:] == heads and all(0 <= float(r[h]) <= 1 for r in rows for h in heads)
    saved = json.loads((out / "results.json").read_text())
    assert all(set(heads) <= set(r) for r in saved["rows"]) and saved["meta"]["prompt_scorer"] == "toy_classifier_accuracy"
    assert "| CLIP | acc_shape | acc_colour | acc_background | s / image |" in (out / "results.md").read_text()


def test_rows_are_reused_when_measured_under_the_same_key(tiny_pipeline_dir, toy_data_dir, clip_dir, tmp_path, monkeypatch):
    """A rerun into the same folder, or a new folder given the first run's rows as a reference, loads no pipeline and
    reports the same rows; another seed is another key and generates again; a damaged kept row is measured again."""
    import distill_diffusion.pipelines as pipelines
    from distill_diffusion.bench.row_cache import collect_rows

    specs = [PipelineSpec("teacher", str(tiny_pipeline_dir), sampler="ddim", guidance_scale=3.0, steps=(1, 2))]

    def settings(**kw):
        return BenchmarkSettings(prompts="toy", num_images=4, real_dir=str(toy_data_dir), fid_feature=TinyFeatures(), feature_dim=4,
                                 clip_model=str(clip_dir), batch_size=4, device="cpu", **kw)  # fmt: skip

    first = run_quality_benchmark(specs, tmp_path / "a", settings())
    reference = tmp_path / "reference.json"
    reference.write_text(json.dumps(collect_rows(tmp_path / "a", ["teacher"])))
    real_load = pipelines.load_pipeline

    def refuse(*args, **kwargs):
        raise AssertionError("a reusable row was generated again")

    monkeypatch.setattr(pipelines, "load_pipeline", refuse)
    again = run_quality_benchmark(specs, tmp_path / "a", settings())
    renamed = [PipelineSpec("ddim", str(tiny_pipeline_dir), sampler="ddim", guidance_scale=3.0, steps=(1, 2))]
    elsewhere = run_quality_benchmark(renamed, tmp_path / "b", settings(reference_rows=str(reference)))
    assert again["rows"] == first["rows"]
    assert [r["fid"] for r in elsewhere["rows"]] == [r["fid"] for r in first["rows"]]
    assert {r["pipeline"] for r in elsewhere["rows"]} == {"ddim"}
    assert elsewhere["meta"]["reused_rows"] == ["ddim 1 (reference)", "ddim 2 (reference)"]
    assert "grid_ddim" not in elsewhere["files"]  # no images to show
    with pytest.raises(AssertionError, match="generated again"):
        run_quality_benchmark(specs, tmp_path / "a", settings(seed=1))
    monkeypatch.setattr(pipelines, "load_pipeline", real_load)
    (tmp_path / "a" / "images" / "teacher" / "steps_001" / "row.json").write_text("{broken")
    redone = run_quality_benchmark(specs, tmp_path / "a", settings())
    assert redone["meta"]["reused_rows"] == ["teacher 2 (kept)"]


def test_default_stats_cache_is_per_real_set(tiny_pipeline_dir, toy_data_dir, clip_dir, tmp_path):
    """The same output folder scored against a second real set (here the same images under another path, as when the
    toy world is installed under another cache folder) keeps a statistics file per set instead of refusing the first."""
    import shutil

    copy = tmp_path / "real_copy"
    shutil.copytree(toy_data_dir, copy)
    specs = [PipelineSpec("teacher", str(tiny_pipeline_dir), sampler="ddim", guidance_scale=3.0, steps=(1,))]
    for real in (toy_data_dir, copy):
        settings = BenchmarkSettings(prompts="toy", num_images=4, real_dir=str(real), fid_feature=TinyFeatures(), feature_dim=4,
                                     clip_model=str(clip_dir), batch_size=4, device="cpu")  # fmt: skip
        run_quality_benchmark(specs, tmp_path / "out", settings)
    assert len(list((tmp_path / "out").glob("real_stats_*.safetensors"))) == 2
