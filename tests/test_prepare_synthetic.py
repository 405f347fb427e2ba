"""``distill-diffusion prepare-synthetic`` and ``data.source: latents``: the latent-cache format in the cache's space,
resuming to identical latents, stale-settings refusal, bad input, and a short training run that reads the folder."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import distill_diffusion.pipelines.synthetic as synthetic
from distill_diffusion.cli import main
from distill_diffusion.data import CachedLatentDataset, build_train_dataset
from distill_diffusion.data.synthetic import check_latents_fit
from distill_diffusion.errors import UserError

PROMPTS = ["a red circle", "a blue square on a white background", "a green star"]


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


def ps_args(teacher: Path, prompts: Path, out: Path, *extra: str) -> list[str]:
    """A valid, fast command line: 5 samples of the tiny teacher, 2 DDIM steps, shards of 2 (the last one short)."""
    return ["prepare-synthetic", "--pretrained_model_name_or_path", str(teacher), "--local_files_only",
            "--prompts", str(prompts), "--num_samples", "5", "--num_inference_steps", "2", "--guidance_scale", "3",
            "--resolution", "32", "--batch_size", "2", "--shard_size", "2", "--device", "cpu", "--output_dir", str(out),
            *extra]


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every shard's tensors, concatenated in order."""
    shards = [load_file(str(folder / s["file"])) for s in json.loads((folder / "index.json").read_text())["shards"]]
    return {key: torch.cat([s[key] for s in shards]) for key in ("latents", "prompt_embeds")}


@pytest.fixture(scope="module")
def made(tiny_pipeline_dir: Path, prompts_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted run, shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("synthetic") / "latents"
    assert main(ps_args(tiny_pipeline_dir, prompts_file, out)) == 0
    return out


def test_folder_is_a_latent_cache(made: Path, tiny_pipeline_dir: Path) -> None:
    from distill_diffusion.models.encode import encode_prompt
    from distill_diffusion.pipelines import load_pipeline

    index = json.loads((made / "index.json").read_text())
    assert index["version"] == 1 and index["num_items"] == 5 and index["resolution"] == 32
    assert [s["count"] for s in index["shards"]] == [2, 2, 1]
    assert index["captions"] == [PROMPTS[i % 3] for i in range(5)]
    assert sorted(p.name for p in made.iterdir()) == ["empty_prompt.safetensors", "index.json", "latents-00000.safetensors",
                                                      "latents-00001.safetensors", "latents-00002.safetensors"]
    ds = CachedLatentDataset(made)
    assert len(ds) == 5 and ds.resolution == 32
    pipe = load_pipeline(str(tiny_pipeline_dir), local_files_only=True)
    with torch.no_grad():
        expected = encode_prompt(pipe.tokenizer, pipe.text_encoder, [PROMPTS[i % 3] for i in range(5)] + [""])
    for i in range(5):
        item = ds[i]
        assert item["latents"].shape == (4, 8, 8) and item["text"] == PROMPTS[i % 3]
        torch.testing.assert_close(item["prompt_embeds"], expected[i])
    torch.testing.assert_close(ds.empty_embeds, expected[5])


def test_latents_are_in_the_space_the_latent_cache_stores(made: Path, tiny_pipeline_dir: Path) -> None:
    """``decode_latents`` (the inverse of the cache's ``encode_images``: divide by scaling_factor, decode) turns a stored
    latent into the image the pipeline itself makes for that prompt and seed: the stored latents are scaled latents."""
    from distill_diffusion.models.encode import decode_latents
    from distill_diffusion.pipelines import load_pipeline

    pipe = load_pipeline(str(tiny_pipeline_dir), local_files_only=True)
    assert pipe.vae.config.scaling_factor != 1.0  # otherwise scaled and unscaled latents would look alike
    stored = CachedLatentDataset(made)[3]["latents"]
    with torch.no_grad():
        image = pipe(PROMPTS[0], num_inference_steps=2, guidance_scale=3.0, height=32, width=32, output_type="pt",
                     generator=torch.Generator().manual_seed(3)).images[0]
        decoded = decode_latents(pipe.vae, stored[None])[0]
    torch.testing.assert_close(decoded, image * 2 - 1, atol=1e-4, rtol=1e-4)


def test_an_interrupted_run_resumes_to_identical_latents(made: Path, tiny_pipeline_dir: Path, prompts_file: Path,
                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    out, calls = tmp_path / "latents", []
    real = synthetic._sampler

    def counting(pipe, cfg, stop_at=None):
        sample, encode = real(pipe, cfg)

        def wrapped(embeds, indices):
            calls.append(indices)
            if len(calls) == stop_at:
                raise KeyboardInterrupt
            return sample(embeds, indices)

        return wrapped, encode

    monkeypatch.setattr(synthetic, "_sampler", lambda pipe, cfg: counting(pipe, cfg, stop_at=2))
    assert main(ps_args(tiny_pipeline_dir, prompts_file, out)) == 130
    assert "run the same command again" in capsys.readouterr().err
    assert (out / "latents-00000.safetensors").is_file() and not (out / "index.json").exists()
    with pytest.raises(UserError, match="no complete index.json"):
        build_train_dataset(_latents_data(out))

    calls.clear()
    monkeypatch.setattr(synthetic, "_sampler", counting)
    assert main(ps_args(tiny_pipeline_dir, prompts_file, out)) == 0
    assert calls == [[2, 3], [4]]  # the finished shard was kept
    resumed, whole = tensors(out), tensors(made)
    for key in whole:
        assert torch.equal(resumed[key], whole[key]), key


def test_more_samples_extend_a_finished_folder(made: Path, tiny_pipeline_dir: Path, prompts_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "latents"
    args = ps_args(tiny_pipeline_dir, prompts_file, out)
    assert main([*args, "--num_samples", "3"]) == 0
    assert main(args) == 0  # 5 samples: shard 1 grows from 1 to 2, shard 2 is new
    grown, whole = tensors(out), tensors(made)
    for key in whole:
        assert torch.equal(grown[key], whole[key]), key


@pytest.mark.parametrize("damage", ["truncated", "short_index"])
def test_a_damaged_shard_is_made_again(damage: str, made: Path, tiny_pipeline_dir: Path, prompts_file: Path, tmp_path: Path) -> None:
    """A folder whose index.json is present but whose shard is cut short (or holds fewer latents than the index says) is
    not complete: the same command makes that shard again, to the latents an uninterrupted run makes."""
    import shutil

    out = tmp_path / "latents"
    shutil.copytree(made, out)
    shard = out / "latents-00001.safetensors"
    if damage == "truncated":
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    else:
        index = json.loads((out / "index.json").read_text())
        index["shards"][1]["count"] = 3
        (out / "index.json").write_text(json.dumps(index))
    assert main(ps_args(tiny_pipeline_dir, prompts_file, out)) == 0
    remade, whole = tensors(out), tensors(made)
    for key in whole:
        assert torch.equal(remade[key], whole[key]), key
    assert json.loads((out / "index.json").read_text()) == json.loads((made / "index.json").read_text())


def test_changed_settings_are_refused_unless_overwrite(made: Path, tiny_pipeline_dir: Path, prompts_file: Path,
                                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import shutil

    out = tmp_path / "latents"
    shutil.copytree(made, out)
    before = (out / "index.json").read_text()
    monkeypatch.setattr(synthetic, "_load_teacher_pipeline", lambda *a: pytest.fail("a finished folder loads no model"))
    assert main(ps_args(tiny_pipeline_dir, prompts_file, out)) == 0
    other_prompts = tmp_path / "other.txt"
    other_prompts.write_text("a yellow ring\n")
    for extra, changed in ((["--num_inference_steps", "3"], "num_inference_steps 2 -> 3"), (["--seed", "1"], "seed 0 -> 1"),
                           (["--guidance_scale", "2"], "guidance_scale 3.0 -> 2.0"), (["--resolution", "64"], "resolution 32 -> 64"),
                           (["--prompts", str(other_prompts)], "prompts")):
        capsys.readouterr()
        assert main([*ps_args(tiny_pipeline_dir, prompts_file, out), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and len(err.splitlines()) == 1 and changed in err, err
        assert "pick another --output_dir, or pass --overwrite" in err
    assert (out / "index.json").read_text() == before
    monkeypatch.undo()
    assert main([*ps_args(tiny_pipeline_dir, prompts_file, out), "--num_inference_steps", "3", "--overwrite"]) == 0
    assert json.loads((out / "index.json").read_text())["fingerprint_data"]["num_inference_steps"] == 3


def _latents_data(folder: Path, resolution: int = 32):
    from distill_diffusion.config import DataConfig

    return DataConfig(source="latents", latents_dir=str(folder), resolution=resolution)


def test_the_latents_source_checks_the_teacher_and_resolution(made: Path) -> None:
    ds = build_train_dataset(_latents_data(made), seed=0)
    assert isinstance(ds, CachedLatentDataset) and len(ds) == 5
    subset = build_train_dataset(dataclasses.replace(_latents_data(made), max_train_samples=3), seed=0)
    assert len(subset) == 3 and len({subset[i]["text"] for i in range(3)}) >= 1
    check_latents_fit(ds, 32, 4, 64)
    with pytest.raises(UserError, match="holds 4-channel latents but the teacher's UNet takes 8"):
        check_latents_fit(ds, 32, 8, 64)
    with pytest.raises(UserError, match="text embeddings of width 64 but the teacher's UNet attends to 768"):
        check_latents_fit(ds, 32, 4, 768)
    with pytest.raises(UserError, match="was made at resolution 32, but data.resolution is 512; pass --data.resolution 32"):
        check_latents_fit(ds, 512, 4, 64)


def test_a_latent_cache_folder_is_a_latents_source_too(toy_data_dir: Path, tmp_path: Path) -> None:
    """``build_latent_cache`` records the pixel resolution, so its folder passes the same checks."""
    from distill_diffusion.config import DataConfig
    from distill_diffusion.data import build_latent_cache

    images = build_train_dataset(DataConfig(train_data_dir=str(toy_data_dir), resolution=32, max_train_samples=4))
    build_latent_cache(images, lambda pixels: pixels[:, :3, ::4, ::4].clone(), lambda texts: torch.zeros(len(texts), 77, 64),
                       tmp_path / "cache", batch_size=2)
    ds = build_train_dataset(_latents_data(tmp_path / "cache"))
    assert len(ds) == 4 and ds.resolution == 32
    with pytest.raises(UserError, match="holds 3-channel latents"):
        check_latents_fit(ds, 32, 4, 64)


# Bad input to prepare-synthetic: (arguments replacing or added to the valid ones, expected fragment of the one line).
BAD_CASES = [
    (["--pretrained_model_name_or_path", "{tmp}/missing_model"], "no such file or folder"),
    (["--prompts", "{tmp}/missing.txt"], "does not exist"),
    (["--prompts", "{tmp}/empty.txt"], "holds no prompt"),
    (["--prompts", "{tmp}/bad.jsonl"], "line 1 is not valid JSON"),
    (["--num_samples", "0"], "--num_samples 0; pass 1 or more"),
    (["--resolution", "100"], "--resolution 100 is not a positive multiple of 8"),
    (["--resolution", "0"], "is not a positive multiple of 8"),
    (["--num_inference_steps", "0"], "--num_inference_steps 0; pass 1 or more"),
    (["--num_inference_steps", "2000"], "2000 sampling steps, but the model was trained with 1000 timesteps"),
    (["--guidance_scale", "nan"], "guidance scale nan is invalid"),
    (["--batch_size", "0"], "--batch_size 0; pass 1 or more"),
    (["--shard_size", "-1"], "--shard_size -1; pass 1 or more"),
    (["--seed", "-1"], "--seed -1 is out of range"),
    (["--scheduler", "lcm"], "--scheduler 'lcm' is not a teacher sampler"),
    (["--mixed_precision", "fp16"], "--mixed_precision fp16 needs a CUDA device"),
    (["--device", "cuda:7"], "device 'cuda:7'"),
    (["--caption_column", "caption"], "--caption_column only apply to dataset captions"),
    (["--output_dir", "{tmp}/a_file"], "is a file"),
    (["--output_dir", "/proc/distill-diffusion-test/latents"], "cannot write in /proc"),
    (["--train_data_dir", "{tmp}/nowhere"], "not allowed with argument --prompts"),
    (["--num_samples", "x"], "invalid int value"),
]


@pytest.mark.parametrize("extra, fragment", BAD_CASES, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_input_is_one_line_and_writes_nothing(extra, fragment, tiny_pipeline_dir: Path, prompts_file: Path,
                                                  tmp_path: Path, capsys) -> None:
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "empty.txt").write_text("\n \n")
    (tmp_path / "bad.jsonl").write_text("{nope\n")
    out = tmp_path / "out"
    argv = ps_args(tiny_pipeline_dir, prompts_file, out, *[a.replace("{tmp}", str(tmp_path)) for a in extra])
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1 and ";" in err, err
    assert fragment in err, err
    assert not out.exists()


def test_captions_of_an_image_folder(tiny_pipeline_dir: Path, toy_data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "latents"
    args = ps_args(tiny_pipeline_dir, Path("unused"), out, "--num_samples", "2", "--shard_size", "4")
    at = args.index("--prompts")
    del args[at : at + 2]
    assert main([*args, "--train_data_dir", str(toy_data_dir)]) == 0
    first = [json.loads(line)["text"] for line in (toy_data_dir / "metadata.jsonl").read_text().splitlines()[:2]]
    assert CachedLatentDataset(out).captions == first


@pytest.mark.e2e
def test_training_reads_the_folder(made: Path, tiny_pipeline_dir: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """``train finetune`` with ``data.source latents``: no image is read and no VAE encodes; wrong folders are refused."""
    import shutil

    from distill_diffusion.models import batch

    wide = tmp_path / "teacher_8ch"
    shutil.copytree(tiny_pipeline_dir, wide)
    config = json.loads((wide / "unet" / "config.json").read_text())
    (wide / "unet" / "config.json").write_text(json.dumps({**config, "in_channels": 8}))
    base = ["train", "finetune", "--config", "tiny/finetune", "--pretrained_model_name_or_path", str(tiny_pipeline_dir),
            "--train_data_dir", "null", "--data.source", "latents", "--train_batch_size", "2", "--max_train_steps", "2",
            "--validation_steps", "0", "--progress_bar", "false", "--lr_warmup_steps", "0"]
    monkeypatch.setattr(batch, "encode_images", lambda *a, **k: pytest.fail("source latents must not encode images"))
    assert main([*base, "--data.latents_dir", str(made), "--output_dir", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "source: latents" in saved and str(made) in saved
    for extra, fragment in ((["--data.resolution", "64"], "was made at resolution 32"),
                            (["--pretrained_model_name_or_path", str(wide)], "holds 4-channel latents but the teacher's UNet takes 8"),
                            (["--data.random_flip", "true"], "has no effect with data.source=latents")):
        capsys.readouterr()
        assert main([*base, "--data.latents_dir", str(made), "--output_dir", str(tmp_path / "bad"), *extra]) == 2
        assert fragment in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_entry_point_help() -> None:
    """The installed command (a subprocess: the real entry point) lists the options."""
    script = Path(sys.executable).with_name("distill-diffusion")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "distill_diffusion.cli"]
    result = subprocess.run([*command, "prepare-synthetic", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--num_samples" in result.stdout and "--overwrite" in result.stdout
