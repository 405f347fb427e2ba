"""Bad input to `distill-diffusion train`: exactly one `error: <problem>; <fix>` line, exit 2, nothing written.

Every case runs the real CLI in-process and must fail before any weights load (stderr holds the error line
and nothing else), except the few marked ``after_load`` whose problem only the loader can see. The bad data
folders, model files and YAML configs are built once per session, so each case takes milliseconds.
"""

from __future__ import annotations

import errno
import io
import json
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from distill_diffusion.cli import main

R = 32  # data.resolution of every case (the toy teacher's)


def png_bytes(seed: int) -> bytes:
    array = np.random.default_rng(seed).integers(0, 256, (R, R, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def image_folder(root: Path, files: dict[str, bytes], lines: list[str] | None = None) -> Path:
    """``root`` with ``files`` and a metadata.jsonl (one line per file unless ``lines`` is given)."""
    root.mkdir(parents=True)
    for name, data in files.items():
        (root / name).write_bytes(data)
    if lines is None:
        lines = [json.dumps({"file_name": name, "text": "a red circle"}) for name in files]
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


def line(**record: object) -> str:
    return json.dumps(record)


def build_data(root: Path) -> None:
    """Good and bad image folders under ``root``."""
    good = {f"{i}.png": png_bytes(i) for i in range(4)}
    cut = {name: data[: len(data) // 2] for name, data in good.items()}
    image_folder(root / "good", good)
    (root / "empty").mkdir()
    (root / "csv_only").mkdir()
    (root / "csv_only" / "metadata.csv").write_text("file_name,text\n0.png,x\n")
    (root / "a_file").write_text("not a folder")
    image_folder(root / "blank_metadata", good, ["", "  "])
    image_folder(root / "bad_json", good, [line(file_name="0.png", text="x"), "{not json"])
    image_folder(root / "json_array", good, ['["0.png", "x"]'])
    image_folder(root / "no_file_name", good, [line(image="0.png", text="x")])
    image_folder(root / "no_text", good, [line(file_name="0.png", caption="x")])
    image_folder(root / "missing_image", good, [line(file_name="0.png", text="x"), line(file_name="gone.png", text="y")])
    image_folder(root / "caption_object", good, [line(file_name="0.png", text={"en": "a cat"})])
    image_folder(root / "caption_number", good, [line(file_name="0.png", text=42)])
    image_folder(root / "caption_null", good, [line(file_name="0.png", text=None)])
    image_folder(root / "caption_list_number", good, [line(file_name="0.png", text=["a cat", 7])])
    image_folder(root / "caption_bool", good, [line(file_name="0.png", text=True)])
    (root / "outside").mkdir()
    (root / "outside" / "x.png").write_bytes(png_bytes(9))
    image_folder(root / "escape_dotdot", good, [line(file_name="../outside/x.png", text="x")])
    image_folder(root / "escape_absolute", good, [line(file_name=str(root / "outside" / "x.png"), text="x")])
    image_folder(root / "escape_nested", good, [line(file_name="sub/../../outside/x.png", text="x")])
    image_folder(root / "file_name_number", good, [line(file_name=3, text="x")])
    image_folder(root / "file_name_empty", good, [line(file_name="", text="x")])
    image_folder(root / "file_name_folder", good, [line(file_name="sub", text="x")])
    (root / "file_name_folder" / "sub").mkdir()
    image_folder(root / "all_truncated", cut)
    image_folder(root / "all_garbage", {f"{i}.png": b"not an image" for i in range(4)})
    image_folder(root / "mostly_truncated", {**dict(list(cut.items())[:3]), "3.png": good["3.png"]})
    jpeg = io.BytesIO()
    Image.fromarray(np.zeros((R, R, 3), np.uint8)).save(jpeg, format="JPEG")
    image_folder(root / "truncated_jpeg", {f"{i}.jpg": jpeg.getvalue()[:200] for i in range(4)})
    image_folder(root / "metadata_latin1", good)
    (root / "metadata_latin1" / "metadata.jsonl").write_bytes(b'{"file_name": "0.png", "text": "caf\xe9"}\n')
    split = root / "split_only" / "train"
    image_folder(split, good)
    image_folder(root / "caption_empty_list", good, [line(file_name="0.png", text=[])])
    build_latents(root)


def build_latents(root: Path) -> None:
    """Latent folders (``data.source latents``) for the toy teacher, each damaged one way after it was written."""
    from distill_diffusion.data.synthetic import write_synthetic_latents

    def make(name: str) -> Path:
        return write_synthetic_latents(root / name, ["a red circle"] * 4, lambda embeds, indices: torch.zeros(len(indices), 4, 8, 8),
                                       lambda texts: torch.zeros(len(texts), 77, 64), {"seed": 0}, shard_size=2, progress=False,
                                       index_extra={"resolution": R})

    from distill_diffusion.models.conditioning import Conditioning

    def sdxl_text(texts: list[str]) -> Conditioning:  # the tiny SDXL teacher's widths: 80 wide, pooled 40
        return Conditioning(torch.zeros(len(texts), 77, 80), torch.zeros(len(texts), 40), torch.zeros(len(texts), 6))

    make("latents_sd")  # made for the SD toy teacher: no pooled text embeddings
    write_synthetic_latents(root / "latents_xl", ["a red circle"] * 4, lambda embeds, indices: torch.zeros(len(indices), 4, 8, 8),
                            sdxl_text, {"seed": 0}, shard_size=2, progress=False, index_extra={"resolution": R})
    shard = make("latents_truncated") / "latents-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    for name, change in (("latents_more_captions", {"captions": ["a red circle"] * 6, "num_items": 6}),
                         ("latents_shard_count", {"shards": [{"file": "latents-00000.safetensors", "count": 3},
                                                             {"file": "latents-00001.safetensors", "count": 1}]})):
        index = make(name) / "index.json"
        index.write_text(json.dumps({**json.loads(index.read_text()), **change}))


def build_models(root: Path, teacher: Path) -> None:
    """Bad teachers under ``root``: copies of the tiny pipeline with one thing broken, and bad weight files."""
    from diffusers import AutoencoderKL
    from helpers_sd import save_ldm_single_file
    from safetensors.torch import load_file

    from distill_diffusion.toy.tiny import save_toy_dinov2
    from distill_diffusion.toy.tiny_sdxl import save_tiny_sdxl_pipeline

    (root / "empty_model").mkdir()
    for suffix in (".ckpt", ".bin", ".pt"):
        (root / f"model{suffix}").write_bytes(b"pickle")
    (root / "garbage.safetensors").write_bytes(b"garbage")
    (root / "weights.onnx").write_bytes(b"x")
    full = load_file(str(save_ldm_single_file(teacher, root / "full.safetensors")))
    save_file({k: v for k, v in full.items() if k.startswith("model.diffusion_model.")}, str(root / "unet_only.safetensors"))
    save_file({k: v for k, v in full.items() if not k.startswith("cond_stage_model.")}, str(root / "no_text.safetensors"))
    junk = {k: v for k, v in full.items() if not k.startswith("cond_stage_model.")} | {"cond_stage_model.junk": torch.zeros(1)}
    save_file(junk, str(root / "junk_text.safetensors"))
    save_file({"conditioner.embedders.1.model.positional_embedding": torch.zeros(1), "model.diffusion_model.x": torch.zeros(1)},
              str(root / "xl.safetensors"))
    edit_copy(teacher, root / "xl_text_time", "unet/config.json", addition_embed_type="text_time")
    edit_copy(teacher, root / "w_teacher", "unet/config.json", time_cond_proj_dim=32)
    edit_copy(teacher, root / "bad_unet_config", "unet/config.json", block_out_channels="wide")
    edit_copy(teacher, root / "one_layer_per_block", "unet/config.json", layers_per_block=1)
    edit_copy(teacher, root / "wide_inner_stage", "unet/config.json", block_out_channels=[32, 48, 64])
    student = json.loads((teacher / "unet" / "config.json").read_text())
    (root / "wide_student.json").write_text(json.dumps({**student, "layers_per_block": 1, "block_out_channels": [32, 64, 64]}))
    shutil.copytree(teacher, root / "no_vae", ignore=shutil.ignore_patterns("vae"))
    shutil.copytree(teacher, root / "no_unet_config", ignore=shutil.ignore_patterns("config.json"))
    (root / "no_unet_config" / "vae" / "config.json").write_text((teacher / "vae" / "config.json").read_text())
    save_toy_dinov2(root / "dinov2", resolution=R, hidden_size=16, layers=4)
    edit_copy(root / "dinov2", root / "dinov2_patch_0", "config.json", patch_size=0)
    edit_copy(root / "dinov2", root / "dinov2_layers_text", "config.json", num_hidden_layers="four")
    save_tiny_sdxl_pipeline(root / "xl")
    refiner = save_tiny_sdxl_pipeline(root / "xl_refiner")
    index = json.loads((refiner / "model_index.json").read_text())
    (refiner / "model_index.json").write_text(json.dumps({**index, "text_encoder": [None, None], "tokenizer": [None, None]}))
    AutoencoderKL(block_out_channels=(32,), norm_num_groups=8, latent_channels=3).save_pretrained(root / "vae_3_channels")
    shutil.copytree(teacher, root / "broken_index")
    (root / "broken_index" / "model_index.json").write_text("{oops")


def edit_copy(teacher: Path, dst: Path, config: str, **changes: object) -> None:
    shutil.copytree(teacher, dst)
    data = json.loads((dst / config).read_text())
    (dst / config).write_text(json.dumps({**data, **changes}))


YAML_FILES = {
    "list.yaml": "- a\n- b\n",
    "train_int.yaml": "train: 5\n",
    "train_list.yaml": "train: [1, 2]\n",
    "model_str.yaml": "model: some/model\n",
    "unknown_section.yaml": "trainer:\n  seed: 1\n",
    "int_key.yaml": "train:\n  1: 2\n",
    "tabs.yaml": "train:\n\tseed: 1\n",
    "bad_date.yaml": "train:\n  output_dir: 2001-13-45\n",
    "seed_inf.yaml": "train:\n  seed: .inf\n",
    "lr_list.yaml": "train:\n  learning_rate: [1]\n",
    "prompts_map.yaml": "train:\n  validation_prompts: {a: 1}\n",
    "flip_maybe.yaml": "data:\n  random_flip: maybe\n",
    "snr_negative.yaml": "method:\n  snr_gamma: -1\n",
    "lcm_method.yaml": "method:\n  lora_rank: 8\n",
    "w_and_guidance_scale.yaml": "method:\n  w_max: 4.0\n  guidance_scale_max: 5.0\n",
    "add_named.yaml": "method_name: add\n",
    "unclosed.yaml": "train: {seed: 1\n",
}


@pytest.fixture(scope="session")
def bad(tmp_path_factory: pytest.TempPathFactory, tiny_pipeline_dir: Path) -> Path:
    """Every bad input, built once: data folders, model folders and files, YAML configs, prompt files."""
    root = tmp_path_factory.mktemp("bad_inputs")
    build_data(root)
    build_models(root, tiny_pipeline_dir)
    for name, text in YAML_FILES.items():
        (root / name).write_text(text)
    (root / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    (root / "prompts_empty.txt").write_text("\n  \n")
    (root / "prompts.txt").write_text("a red circle, small\n")
    (root / "prompts_latin1.txt").write_bytes(b"caf\xe9\n")
    (root / "config_dir").mkdir()
    return root


# (method, extra arguments, expected fragment). {bad} is the session folder above, {teacher} the tiny pipeline.
# Later arguments override the defaults in BASE (the last value of an option wins).
CONFIG_CASES = [
    ("finetune", ["--train.seed", "-1"], "train.seed=-1 is out of range"),
    ("finetune", ["--seed", "4294967296"], "is out of range"),
    ("finetune", ["--seed", "abc"], "is not a number"),
    ("finetune", ["--seed", "1.5"], "must be a whole number"),
    ("finetune", ["--learning_rate", "inf"], "is not a finite number"),
    ("finetune", ["--learning_rate", "nan"], "is not a finite number"),
    ("finetune", ["--learning_rate", "-inf"], "is not a finite number"),
    ("finetune", ["--learning_rate", "0"], "learning_rate=0.0 must be > 0"),
    ("finetune", ["--learning_rate", "1e-4x"], "is not a number"),
    ("finetune", ["--train.adam_epsilon", "nan"], "adam_epsilon='nan' is not a finite number"),
    ("finetune", ["--train.adam_beta1", "1.0"], "adam_beta1/adam_beta2 must be in [0, 1)"),
    ("finetune", ["--train.adam_beta2", "-0.1"], "adam_beta1/adam_beta2 must be in [0, 1)"),
    ("finetune", ["--train.adam_weight_decay", "-1"], "adam_weight_decay=-1.0 must be >= 0"),
    ("finetune", ["--train.max_grad_norm", "-1"], "max_grad_norm=-1.0 must be >= 0"),
    ("finetune", ["--train.max_grad_norm", "inf"], "is not a finite number"),
    ("finetune", ["--train_batch_size", "0"], "train_batch_size=0 must be > 0"),
    ("finetune", ["--train_batch_size", "-4"], "train_batch_size=-4 must be > 0"),
    ("finetune", ["--train_batch_size", "2.5"], "must be a whole number"),
    ("finetune", ["--max_train_steps", "0"], "max_train_steps=0 must be > 0"),
    ("finetune", ["--max_train_steps", "1e400"], "is not a finite number"),
    ("finetune", ["--gradient_accumulation_steps", "0"], "gradient_accumulation_steps=0 must be > 0"),
    ("finetune", ["--lr_warmup_steps", "-1"], "lr_warmup_steps=-1 must be >= 0"),
    ("finetune", ["--train.lr_num_cycles", "0"], "lr_num_cycles=0 must be > 0"),
    ("finetune", ["--train.lr_power", "nan"], "is not a finite number"),
    ("finetune", ["--train.lr_power", "0"], "lr_power=0.0 must be > 0"),
    ("finetune", ["--checkpointing_steps", "0"], "checkpointing_steps=0 must be > 0"),
    ("finetune", ["--checkpoints_total_limit", "0"], "checkpoints_total_limit=0 must be > 0"),
    ("finetune", ["--validation_steps", "-5"], "validation_steps=-5 must be >= 0"),
    ("finetune", ["--train.num_validation_images", "0"], "num_validation_images=0 must be > 0"),
    ("finetune", ["--train.validation_inference_steps", "0"], "validation_inference_steps=0 must be > 0"),
    ("finetune", ["--train.max_nonfinite_steps", "0"], "max_nonfinite_steps=0 must be > 0"),
    ("finetune", ["--train.ema_decay", "1.0"], "ema_decay=1.0 must be in (0, 1)"),
    ("finetune", ["--train.ema_decay", "nan"], "is not a finite number"),
    ("finetune", ["--mixed_precision", "fp32"], "use one of: no, fp16, bf16"),
    ("finetune", ["--lr_scheduler", "cosine_annealing"], "lr_scheduler='cosine_annealing' is not valid"),
    ("finetune", ["--report_to", "mlflow"], "report_to='mlflow' is not valid"),
    ("finetune", ["--train.optimizer", "sgd"], "optimizer='sgd' is not valid"),
    ("finetune", ["--gradient_checkpointing", "maybe"], "must be true or false"),
    ("finetune", ["--train.scale_lr", "2"], "must be true or false"),
    ("finetune", ["--train.validation_prompts", '["a, b"'], "is not a valid JSON list"),
    ("finetune", ["--train.validation_prompts", '[["a"]]'], "must be a string"),
    ("finetune", ["--train.validation_prompts_file", "{bad}/missing.txt"], "does not exist"),
    ("finetune", ["--train.validation_prompts_file", "{bad}/prompts_empty.txt"], "holds no prompt"),
    ("finetune", ["--train.validation_prompts_file", "{bad}/prompts_latin1.txt"], "is not UTF-8"),
    ("finetune", ["--train.validation_prompts_file", "{bad}/prompts.txt", "--validation_prompts", "a dog"], "both given and differ"),
    ("finetune", ["--data.resolution", "0"], "data.resolution=0 must be > 0"),
    ("finetune", ["--data.resolution", "-64"], "data.resolution=-64 must be > 0"),
    ("finetune", ["--data.resolution", "100"], "must be a multiple of 8"),
    ("finetune", ["--data.resolution", "64.5"], "must be a whole number"),
    ("finetune", ["--data.source", "parquet"], "data.source='parquet' is not valid"),
    ("finetune", ["--data.proportion_empty_prompts", "1.5"], "proportion_empty_prompts=1.5 must be in [0, 1]"),
    ("finetune", ["--data.proportion_empty_prompts", "nan"], "is not a finite number"),
    ("finetune", ["--data.max_bad_fraction", "-0.1"], "max_bad_fraction=-0.1 must be in [0, 1]"),
    ("finetune", ["--data.max_bad_fraction", "inf"], "is not a finite number"),
    ("finetune", ["--data.dataloader_num_workers", "-1"], "dataloader_num_workers=-1 must be >= 0"),
    ("finetune", ["--data.max_train_samples", "0"], "max_train_samples=0 must be > 0"),
    ("finetune", ["--data.center_crop", "perhaps"], "must be true or false"),
    ("finetune", ["--data.source", "hf"], "data.source=hf needs data.dataset_name"),
    ("finetune", ["--data.source", "webdataset"], "data.source=webdataset needs data.shards"),
    ("finetune", ["--data.dataset_name", "some/dataset"], "has no effect with data.source=imagefolder"),
    ("finetune", ["--data.caption_column", "caption"], "has no 'caption' caption key"),
    ("finetune", ["--data.source", "latents"], "data.source=latents needs data.latents_dir"),
    ("finetune", ["--data.latents_dir", "{bad}/empty"], "has no effect with data.source=imagefolder"),
    ("finetune", ["--data.source", "latents", "--data.latents_dir", "{bad}/empty"], "has no effect with data.source=latents"),
    ("finetune", ["--method.snr_gamma", "-5"], "snr_gamma must be > 0"),
    ("finetune", ["--method.noise_offset", "-0.1"], "noise_offset must be >= 0"),
    ("finetune", ["--method.noise_offset", "inf"], "is not a finite number"),
    ("finetune", ["--method.lora_rank", "8"], "unknown method option(s) lora_rank"),
    ("finetune", ["--train.learning_rat", "1"], "unknown train option(s) learning_rat"),
    ("finetune", ["--seeds", "1"], "unknown option --seeds"),
    ("finetune", ["--Train.seed", "1"], "unknown section 'Train'"),
    ("finetune", ["stray"], "unexpected argument 'stray'"),
    ("finetune", ["--"], "unexpected argument '--'"),
    ("finetune", ["--config"], "--config needs a YAML file path"),
    ("lcm", ["--method.lora_rank", "-1"], "lora_rank=-1 must be >= 1"),
    ("lcm", ["--method.lora_alpha", "0"], "lora_alpha=0 must be > 0"),
    ("lcm", ["--method.lora_dropout", "1.0"], "lora_dropout=1.0 must be in [0, 1)"),
    ("lcm", ["--method.num_ddim_timesteps", "0"], "num_ddim_timesteps=0 must be >= 1"),
    ("lcm", ["--method.guidance_scale_min", "0"], "guidance_scale_min=0.0 must be >= 1"),
    ("lcm", ["--method.guidance_scale_max", "inf"], "method.guidance_scale_max='inf' is not a finite number"),
    ("lcm", ["--method.w_max", "inf"], "method.w_max='inf' is not a finite number"),
    ("lcm", ["--method.w_min", "1", "--method.guidance_scale_min", "3"], "method.w_min and method.guidance_scale_min are both given"),
    ("progressive", ["--config", "{bad}/w_and_guidance_scale.yaml"], "method.w_max and method.guidance_scale_max are both given"),
    ("lcm", ["--method.huber_c", "0"], "huber_c=0.0 must be > 0"),
    ("lcm", ["--method.timestep_scaling", "-10"], "timestep_scaling=-10.0 must be > 0"),
    ("lcm", ["--method.time_cond_proj_dim", "2"], "time_cond_proj_dim=2 must be >= 4"),
    ("lcm", ["--method.uncond_embedding", "random"], "uncond_embedding='random'"),
    ("lcm", ["--method.export_dtype", "int8"], "export_dtype='int8'"),
    ("lcm", ["--method.validation_guidance_scale", "-1"], "validation_guidance_scale=-1.0 must be >= 0"),
    ("lcm", ["--method.loss_type", "huberr"], "loss_type='huberr'"),
    ("lcm", ["--method.lora_target_modules", ""], "lora_target_modules is empty"),
    ("lcm", ["--method.lora_target_modules", "conv_inn"], "'conv_inn' matches no layer"),
    ("lcm", ["--method.lora_target_modules", "time_embedding"], "matches only TimestepEmbedding modules"),
    ("lcm", ["--method.lora_target_modules", '["to_q", "to_kv"]'], "'to_kv' matches no layer"),
    ("lcm", ["--method.solver_substeps", "500"], "solver_substeps=500 is more than the k=20 timesteps"),
    ("lcm", ["--method.num_ddim_timesteps", "1001"], "fewer than method.num_ddim_timesteps=1001"),
    ("lcm", ["--validation_steps", "1", "--validation_prompts", "a", "--validation_inference_steps", "60"],
     "validation_inference_steps=60 is more than LCMScheduler allows"),
    ("lcm", ["--method.snr_gamma", "5"], "unknown method option(s) snr_gamma"),
    ("bksdm", ["--method.variant", "huge"], "method.variant='huge' is not valid; use one of: base, small, tiny"),
    ("bksdm", ["--method.lambda_feat", "-1"], "KD weights must be >= 0"),
    ("bksdm", ["--method.variant", "koala_700m"], "keeps 5 transformer layers in the innermost stage and needs a teacher with more"),
    ("bksdm", ["--method.feature_targets", "cross_attention"], "feature_targets='cross_attention' is not valid"),
    ("bksdm", ["--method.feature_loss", "l1"], "feature_loss='l1' is not valid"),
    ("bksdm", ["--method.snr_gamma", "0"], "snr_gamma must be > 0"),
    ("bksdm", ["--method.feature_pairs", "down_blocks.0=down_blocks.1"], "the student's output is (1, 32, 2, 2) and the teacher's"),
    ("bksdm", ["--method.feature_pairs", "down_blocks.0"], "'down_blocks.0' is not a pair"),
    ("bksdm", ["--method.feature_pairs", "up_blocks.9=up_blocks.0"], "the student UNet has no module 'up_blocks.9'"),
    ("bksdm", ["--method.student_config", "{bad}/nope.json"], "no such file"),
    ("bksdm", ["--method.student_config", "{bad}/prompts_latin1.txt"], "not valid JSON"),
    ("bksdm", ["--method.student_config", "{bad}/wide_student.json"], "cannot be initialised from the teacher"),
    ("ladd", ["--train_batch_size", "1"], "collapses at batch 1"),
    ("ladd", ["--method.disc_blocks", "up_blocks.0"], "['up_blocks.0'] are not blocks of this UNet; tap one or more of: down_blocks.0"),
    ("ladd", ["--method.student_timesteps", "1500,999", "--method.student_timestep_probs", "0.5,0.5"], "must lie in 0..999"),
    ("ladd", ["--method.student_timestep_probs", "0.5,0.5"], "give one probability >= 0 per student timestep (4)"),
    ("ladd", ["--method.student_timesteps", "749,499", "--method.student_timestep_probs", "0.5,0.5", "--method.first_step_pure_noise",
              "true"], "the sampler's input at t = 999, but it is 749; start method.student_timesteps at 999"),
    ("ladd", ["--method.first_step_pure_noise", "maybe"], "first_step_pure_noise"),
    ("ladd", ["--method.student_timesteps", "249,999", "--method.student_timestep_probs", "0.5,0.5"], "list them from the noisiest down"),
    ("ladd", ["--method.backward_simulation", "true", "--method.student_timesteps", "749,499", "--method.student_timestep_probs", "0.5,0.5"],
     "runs the student's sampler from pure noise at t = 999, but method.student_timesteps starts at 749"),
    ("ladd", ["--method.backward_simulation", "true", "--method.student_timesteps", "999,749,499", "--method.student_timestep_probs", "0.4,0.3,0.3"],
     "that sampler visits [999, 666, 333], not method.student_timesteps=[999, 749, 499]; pass --method.student_timesteps 999,666,333"),
    ("add", ["--method.feature_network", "{bad}/dinov2", "--method.backward_simulation", "true", "--method.student_timesteps", "999,749",
             "--method.student_timestep_probs", "0.5,0.5"], "that sampler visits [999, 499]"),
    ("ladd", ["--method.backward_simulation", "sometimes"], "backward_simulation"),
    ("ladd", ["--method.adv_weight", "0"], "are both 0"),
    ("ladd", ["--method.adv_loss", "wgan"], "adv_loss='wgan' is not valid"),
    ("ladd", ["--method.disc_updates", "0"], "disc_updates=0 must be >= 1"),
    ("ladd", ["--method.r1_approximate_sigma", "-1"], "r1_approximate_sigma=-1.0 must be >= 0"),
    ("ladd", ["--method.lora_target_modules", "to_qq"], "'to_qq' matches no layer"),
    ("add", ["--method.feature_network", "{teacher}"], "is not a transformers model folder (no config.json)"),
    ("add", ["--method.feature_network", "{teacher}/unet"], "is a UNet2DConditionModel model, not a DINOv2 ViT"),
    ("add", ["--method.feature_network", "{teacher}/text_encoder"], "is a clip_text_model model, not a DINOv2 ViT"),
    ("add", ["--method.feature_network", "{bad}/prompts.txt"], "is not a transformers model folder"),
    ("add", ["--method.feature_network", "{bad}/dinov2", "--method.feature_layers", "2,9"], "has blocks 1..4; pick among them"),
    ("add", ["--method.feature_network", "{bad}/dinov2", "--method.feature_layers", "0"], "blocks are numbered from 1"),
    ("add", ["--method.feature_network", "{bad}/dinov2", "--method.feature_resolution", "30"], "not a multiple of the ViT's patch size 4"),
    ("add", ["--pretrained_model_name_or_path", "{bad}/xl", "--method.feature_network", "{bad}/dinov2", "--method.feature_resolution", "30"],
     "not a multiple of the ViT's patch size 4"),
    ("add", ["--method.feature_network", "{bad}/dinov2", "--train_batch_size", "1"], "collapses at batch 1"),
    ("add", ["--method.feature_network", "{bad}/dinov2", "--method.student_timesteps", "1500,999", "--method.student_timestep_probs",
             "0.5,0.5"], "must lie in 0..999"),
    ("add", ["--method.feature_network", "{bad}/dinov2_patch_0"], "config.json has patch_size=0"),
    ("add", ["--method.feature_network", "{bad}/dinov2_layers_text"], "config.json has num_hidden_layers='four'"),
    ("ladd", ["--method.disc_blocks", ""], "method.disc_blocks is empty"),
    ("dmd2", ["--method.disc_blocks", ""], "method.disc_blocks is empty"),
    ("dmd2", ["--method.disc_blocks", "up_blocks.0"], "['up_blocks.0'] are not blocks of this UNet; tap one or more of: down_blocks.0"),
    # DMD2 (arXiv:2405.14867): the generator's timesteps must be the teacher's, the two time-scale rule and the real
    # score's guidance in range; the GAN always has real latents (every data source yields one per example)
    ("dmd2", ["--method.student_timesteps", "1500,999", "--method.student_timestep_probs", "0.5,0.5"],
     "must start at 999 (the generator's first input is pure noise, the sampler's at t = 999) and lie in 0..999"),
    ("dmd2", ["--method.student_timesteps", "749,499", "--method.student_timestep_probs", "0.5,0.5"], "must start at 999"),
    ("dmd2", ["--method.student_timesteps", "999,749,499", "--method.student_timestep_probs", "0.4,0.3,0.3"],
     "that sampler visits [999, 666, 333], not method.student_timesteps=[999, 749, 499]"),
    ("dmd2", ["--method.student_timesteps", "249,999", "--method.student_timestep_probs", "0.5,0.5"], "must be distinct and descending"),
    ("dmd2", ["--method.fake_updates", "0"], "method.fake_updates=0 must be >= 1"),
    ("dmd2", ["--method.real_guidance_scale", "0.5"], "method.real_guidance_scale=0.5 must be >= 1"),
    ("dmd2", ["--method.dm_timestep_range", "0.9,0.1"], "must be two fractions 0 <= min < max <= 1"),
    ("dmd2", ["--method.gan_weight", "-1"], "method.gan_weight=-1.0"),
    ("progressive", ["--method.steps_per_round", "2", "--method.guidance_steps", "1", "--max_train_steps", "5"],
     "train.max_train_steps=5 is not used: method.steps_per_round"),
    ("progressive", ["--method.steps_per_round", "2", "--method.guidance", "none", "--max_train_steps", "5"],
     "train.max_train_steps=5 is not used: method.steps_per_round"),
    ("finetune", ["--validation_steps", "1", "--validation_prompts", ""], "no validation prompt"),
    ("finetune", ["--validation_steps", "1", "--validation_prompts", "[]"], "no validation prompt"),
    ("finetune", ["--validation_prompts", "{bad}/prompts_empty.txt"], "holds no prompt"),
]

CONFIG_FILE_CASES = [
    ("finetune", ["--config", "{bad}/missing.yaml"], "does not exist"),
    ("finetune", ["--config", "{bad}/config_dir"], "is not a file"),
    ("finetune", ["--config", "{bad}/binary.yaml"], "is not UTF-8 text"),
    ("finetune", ["--config", "{bad}/list.yaml"], "must hold a mapping of sections"),
    ("finetune", ["--config", "{bad}/train_int.yaml"], "config section 'train' holds 5, not a mapping"),
    ("finetune", ["--config", "{bad}/train_list.yaml"], "config section 'train' holds [1, 2], not a mapping"),
    ("finetune", ["--config", "{bad}/model_str.yaml"], "config section 'model' holds 'some/model'"),
    ("finetune", ["--config", "{bad}/unknown_section.yaml"], "unknown config section(s) trainer"),
    ("finetune", ["--config", "{bad}/int_key.yaml"], "train option name 1 is not a name"),
    ("finetune", ["--config", "{bad}/tabs.yaml"], "is not valid YAML"),
    ("finetune", ["--config", "{bad}/unclosed.yaml"], "is not valid YAML"),
    ("finetune", ["--config", "{bad}/bad_date.yaml"], "is not valid YAML"),
    ("finetune", ["--config", "{bad}/seed_inf.yaml"], "train.seed=inf is not a finite number"),
    ("finetune", ["--config", "{bad}/lr_list.yaml"], "train.learning_rate=[1] must be a float"),
    ("finetune", ["--config", "{bad}/prompts_map.yaml"], "must be a list"),
    ("finetune", ["--config", "{bad}/flip_maybe.yaml"], "must be true or false"),
    ("finetune", ["--config", "{bad}/snr_negative.yaml"], "snr_gamma must be > 0"),
    ("finetune", ["--config", "{bad}/lcm_method.yaml"], "unknown method option(s) lora_rank"),
    ("ladd", ["--config", "tiny/add"], "this config is for method 'add' (method_name: add), not 'ladd'; run 'distill-diffusion "
     "train add' with it, or pass a ladd config (ladd_sd15, ladd_sdxl, tiny/ladd, tiny/ladd_xl)"),
    ("ladd", ["--config", "{bad}/add_named.yaml"], "this config is for method 'add' (method_name: add), not 'ladd'"),
    ("finetune", ["--config", "tiny/lcm_lora"], "run 'distill-diffusion train lcm' with it, or pass a finetune config"),
    ("dmd2", ["--config", "tiny/ladd"], "run 'distill-diffusion train ladd' with it, or pass a dmd2 config (dmd2_sd15, dmd2_sdxl, "
     "tiny/dmd2, tiny/dmd2_xl)"),
]

DATA_CASES = [
    ("finetune", ["--train_data_dir", "{bad}/nowhere"], "no such folder"),
    ("finetune", ["--train_data_dir", "{bad}/a_file"], "no such folder"),
    ("finetune", ["--train_data_dir", "{bad}/empty"], "no metadata.jsonl in it"),
    ("finetune", ["--train_data_dir", "{bad}/csv_only"], "convert it to metadata.jsonl"),
    ("finetune", ["--train_data_dir", "{bad}/split_only", "--data.dataset_split", "val"], "no metadata.jsonl in it"),
    ("finetune", ["--train_data_dir", "{bad}/blank_metadata"], "lists no images"),
    ("finetune", ["--train_data_dir", "{bad}/bad_json"], "line 2 is not valid JSON"),
    ("finetune", ["--train_data_dir", "{bad}/json_array"], "line 1 is not a JSON object"),
    ("finetune", ["--train_data_dir", "{bad}/no_file_name"], 'has no "file_name" key'),
    ("finetune", ["--train_data_dir", "{bad}/no_text"], "has no 'text' caption key"),
    ("finetune", ["--train_data_dir", "{bad}/missing_image"], "1 listed image file(s) do not exist"),
    ("finetune", ["--train_data_dir", "{bad}/caption_object"], "line 1: caption 'text' is dict"),
    ("finetune", ["--train_data_dir", "{bad}/caption_number"], "line 1: caption 'text' is int 42"),
    ("finetune", ["--train_data_dir", "{bad}/caption_null"], "caption 'text' is NoneType null"),
    ("finetune", ["--train_data_dir", "{bad}/caption_list_number"], "caption 'text' is list"),
    ("finetune", ["--train_data_dir", "{bad}/caption_bool"], "caption 'text' is bool"),
    ("finetune", ["--train_data_dir", "{bad}/escape_dotdot"], "points outside the dataset folder"),
    ("finetune", ["--train_data_dir", "{bad}/escape_absolute"], "points outside the dataset folder"),
    ("finetune", ["--train_data_dir", "{bad}/escape_nested"], "points outside the dataset folder"),
    ("finetune", ["--train_data_dir", "{bad}/file_name_number"], '"file_name" is 3, not a file name'),
    ("finetune", ["--train_data_dir", "{bad}/file_name_empty"], "not a file name"),
    ("finetune", ["--train_data_dir", "{bad}/file_name_folder"], "do not exist"),
    ("finetune", ["--train_data_dir", "{bad}/metadata_latin1"], "line 1 is not UTF-8 text"),
    ("finetune", ["--train_data_dir", "{bad}/all_truncated"], "none of the 4 images could be read"),
    ("finetune", ["--train_data_dir", "{bad}/all_garbage"], "none of the 4 images could be read"),
    ("finetune", ["--train_data_dir", "{bad}/truncated_jpeg"], "none of the 4 images could be read"),
    ("finetune", ["--train_data_dir", "{bad}/mostly_truncated"], "3 of 4 images (75.0%) are unreadable"),
    ("lcm", ["--train_data_dir", "{bad}/all_truncated"], "none of the 4 images could be read"),
    ("finetune", ["--train_data_dir", "null", "--data.source", "latents", "--data.latents_dir", "{bad}/empty"],
     "has no complete index.json (an unfinished `prepare-synthetic` run?)"),
    ("finetune", ["--train_data_dir", "null", "--data.source", "latents", "--data.latents_dir", "{bad}/nowhere"],
     "no such folder; make it with `distill-diffusion prepare-synthetic"),
    ("finetune", ["--train_data_dir", "null", "--data.source", "latents", "--data.latents_dir", "{bad}/latents_truncated"],
     "latents-00001.safetensors is damaged"),
    ("finetune", ["--train_data_dir", "null", "--data.source", "latents", "--data.latents_dir", "{bad}/latents_more_captions"],
     "index.json lists 6 captions but its shards hold 4 latents"),
    ("finetune", ["--train_data_dir", "null", "--data.source", "latents", "--data.latents_dir", "{bad}/latents_shard_count"],
     "latents-00000.safetensors holds 2 latents, index.json says 3"),
    ("finetune", ["--train_data_dir", "{bad}/caption_empty_list"], "caption 'text' is an empty list"),
    # latents made for the other family: an SD folder lacks SDXL's pooled embeddings (its time ids are built from them)
    ("ladd", ["--pretrained_model_name_or_path", "{bad}/xl", "--train_data_dir", "null", "--data.source", "latents",
              "--data.latents_dir", "{bad}/latents_sd"], "holds no pooled text embeddings (text_embeds), so it was made for an SD 1.x/2.x"),
    ("progressive", ["--pretrained_model_name_or_path", "{bad}/xl", "--train_data_dir", "null", "--data.source", "latents",
                     "--data.latents_dir", "{bad}/latents_sd"], "so it was made for an SD 1.x/2.x teacher, but this SDXL teacher"),
    ("finetune", ["--train_data_dir", "null", "--data.source", "latents", "--data.latents_dir", "{bad}/latents_xl"],
     "holds pooled text embeddings (text_embeds), so it was made for an SDXL teacher"),
]

MODEL_CASES = [
    ("finetune", ["--pretrained_model_name_or_path", "{bad}/missing.safetensors"], "no such file or folder"),
    ("finetune", ["--pretrained_model_name_or_path", "not a valid id!"], "neither an existing path nor a hub id"),
    ("finetune", ["--pretrained_model_name_or_path", "{bad}/empty_model"], "no model_index.json"),
    ("finetune", ["--pretrained_model_name_or_path", "{teacher}/unet"], "has a single model (config.json)"),
    ("finetune", ["--pretrained_model_name_or_path", "{bad}/no_vae"], "has no vae/ subfolder"),
    ("finetune", ["--pretrained_model_name_or_path", "{bad}/broken_index"], "model_index.json (JSONDecodeError)"),
    ("finetune", ["--pretrained_model_name_or_path", "{bad}/no_unet_config"], "config.json (FileNotFoundError)"),
    ("lcm", ["--pretrained_model_name_or_path", "{bad}/bad_unet_config"], "does not build a UNet2DConditionModel"),
    ("finetune", ["--pretrained_model_name_or_path", "{bad}/model.ckpt"], "is a pickle (.ckpt)"),
    ("finetune", ["--pretrained_model_name_or_path", "{bad}/model.bin"], "is a pickle (.bin)"),
    ("finetune", ["--pretrained_model_name_or_path", "{bad}/model.pt"], "is a pickle (.pt)"),
    ("finetune", ["--pretrained_model_name_or_path", "{bad}/weights.onnx"], "unknown weights format '.onnx'"),
    ("finetune", ["--pretrained_model_name_or_path", "{bad}/garbage.safetensors"], "is not a readable safetensors file"),
    ("finetune", ["--pretrained_model_name_or_path", "{bad}/unet_only.safetensors", "--model.original_config", "{teacher}"],
     "has no VAE weights"),
    ("finetune", ["--pretrained_model_name_or_path", "{bad}/no_text.safetensors", "--model.original_config", "{teacher}"],
     "has no text encoder weights"),
    ("finetune", ["--pretrained_model_name_or_path", "{bad}/full.safetensors"], "needs model.original_config"),
    ("finetune", ["--pretrained_model_name_or_path", "{bad}/full.safetensors", "--model.original_config", "{bad}/nope"],
     "model.original_config {bad}/nope: no such folder"),
    ("finetune", ["--pretrained_model_name_or_path", "{bad}/full.safetensors", "--model.original_config", "{bad}/empty_model"],
     "no model_index.json"),
    ("finetune", ["--pretrained_model_name_or_path", "{bad}/xl.safetensors", "--model.original_config", "{teacher}"],
     "is an SDXL refiner (no first text encoder, no conditioner.embedders.0.* keys)"),
    ("finetune", ["--pretrained_model_name_or_path", "{bad}/xl_text_time"], "has no text_encoder_2/ subfolder"),
    ("lcm", ["--pretrained_model_name_or_path", "{bad}/xl_refiner"], "is an SDXL refiner (no first text encoder, model_index.json"),
    ("finetune", ["--pretrained_vae_model_name_or_path", "{bad}/missing_vae"], "missing_vae: no such folder"),
    ("finetune", ["--pretrained_vae_model_name_or_path", "{bad}/a_file"], "is not a model folder with a config.json"),
    ("lcm", ["--pretrained_model_name_or_path", "{bad}/w_teacher", "--method.lora", "false", "--method.time_cond_proj_dim", "16"],
     "already has time_cond_proj_dim=32"),
    ("finetune", ["--pretrained_model_name_or_path", "nobody/no-such-model-xyz"], "cannot load model 'nobody/no-such-model-xyz'"),
    ("finetune", ["--pretrained_model_name_or_path", ""], "no teacher given"),
    ("bksdm", ["--pretrained_model_name_or_path", "{bad}/one_layer_per_block"], "already has layers_per_block=1"),
    ("bksdm", ["--pretrained_model_name_or_path", "{bad}/wide_inner_stage", "--method.variant", "tiny"], "needs them equal"),
    ("bksdm", ["--pretrained_model_name_or_path", "{bad}/xl", "--method.variant", "koala_1b"], "this teacher UNet has 1: use base"),
    ("finetune", ["--pretrained_model_name_or_path", "  "], "model.pretrained_model_name_or_path is empty"),
]

#: Problems only the loader can see: an error line after the loader's progress bars.
AFTER_LOAD_CASES = [
    ("finetune", ["--pretrained_model_name_or_path", "{bad}/junk_text.safetensors", "--model.original_config", "{teacher}"],
     "Failed to load CLIPTextModel"),
    ("add", ["--method.feature_network", "{bad}/missing_dinov2"], "missing_dinov2: no such folder"),
    ("finetune", ["--pretrained_vae_model_name_or_path", "{bad}/vae_3_channels"], "has latent_channels=3 but the teacher UNet "
     "takes in_channels=4"),
]

OUTPUT_CASES = [
    ("finetune", ["--output_dir", ""], "train.output_dir is empty"),
    ("finetune", ["--output_dir", "   "], "train.output_dir is empty"),
    ("finetune", ["--output_dir", "{bad}/a_file"], "is a file"),
    ("finetune", ["--output_dir", "{bad}/a_file/run"], "is a file, so no folder can be created below it"),
    ("finetune", ["--output_dir", "/proc/distill-diffusion-test/run"], "cannot write in /proc"),
    ("lcm", ["--output_dir", "/sys/distill-diffusion-test"], "cannot write in /sys"),
]

CASES = CONFIG_CASES + CONFIG_FILE_CASES + DATA_CASES + MODEL_CASES + OUTPUT_CASES + AFTER_LOAD_CASES


def case_id(case: tuple[str, list[str], str]) -> str:
    method, extra, _ = case
    return f"{method}:{' '.join(a.replace('{bad}/', '') for a in extra)[:70] or 'empty'}"


def run_cli(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str]:
    """Exit code and stderr, with Python warnings written to stderr as the console would (pytest records them)."""
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(argv)
    err = capsys.readouterr().err
    return code, "".join(f"warning: {w.message}\n" for w in caught) + err


def argv_for(method: str, extra: list[str], bad: Path, teacher: Path, out: Path) -> list[str]:
    base = ["train", method, "--pretrained_model_name_or_path", str(teacher), "--train_data_dir", str(bad / "good"),
            "--output_dir", str(out), "--data.resolution", str(R), "--max_train_steps", "1", "--train_batch_size", "2",
            "--progress_bar", "false", "--model.local_files_only", "true"]
    return base + [a.replace("{bad}", str(bad)).replace("{teacher}", str(teacher)) for a in extra]


def test_the_matrix_is_large_and_distinct() -> None:
    keys = [(m, tuple(e)) for m, e, _ in CASES]
    assert len(set(keys)) == len(keys) >= 110


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_bad_input_is_one_line_and_writes_nothing(case, capsys, bad: Path, tiny_pipeline_dir: Path, tmp_path: Path) -> None:
    method, extra, fragment = case
    out = tmp_path / "out"
    code, err = run_cli(capsys, argv_for(method, extra, bad, tiny_pipeline_dir, out))
    lines = err.strip().splitlines()
    errors = [x for x in lines if x.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    if case not in AFTER_LOAD_CASES:
        assert lines == errors, f"output before the error line: {err}"
    assert ";" in errors[0], errors[0]  # "<problem>; <fix>"
    assert fragment.replace("{bad}", str(bad)) in errors[0], errors[0]
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_read_only_output_folder(capsys, bad: Path, tiny_pipeline_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """A read-only mount: tests run as root, where only an actual write attempt fails, so that one is faked."""
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    real = tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        if Path(kwargs.get("dir", "")) == readonly:
            raise OSError(errno.EROFS, "Read-only file system")
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    code, err = run_cli(capsys, argv_for("finetune", [], bad, tiny_pipeline_dir, readonly / "run"))
    assert code == 2 and err.strip().splitlines() == [err.strip()], err
    assert "cannot write in" in err and "Read-only file system" in err
    assert list(readonly.iterdir()) == []


def test_mostly_good_data_with_a_few_truncated_images_is_accepted(bad: Path) -> None:
    """Under max_bad_fraction the truncated files are skipped and counted, not fatal."""
    from distill_diffusion.config import DataConfig
    from distill_diffusion.data import build_train_dataset

    ds = build_train_dataset(DataConfig(train_data_dir=str(bad / "mostly_truncated"), resolution=R, max_bad_fraction=0.8))
    assert len(ds) == 1 and ds.bad_count == 3


def test_validation_prompts_keep_their_commas(bad: Path) -> None:
    from distill_diffusion.config import build_run_config
    from distill_diffusion.trainers.methods.finetune import FineTuneConfig

    from_json = build_run_config("finetune", FineTuneConfig, {}, [("validation_prompts", '["a cat, small", "a dog"]')])
    assert from_json.train.validation_prompts == ["a cat, small", "a dog"]
    from_file = build_run_config("finetune", FineTuneConfig, {}, [("validation_prompts_file", str(bad / "prompts.txt"))])
    assert from_file.train.validation_prompts == ["a red circle, small"]
    again = build_run_config("finetune", FineTuneConfig, {"train": from_file.to_dict()["train"]})
    assert again.train.validation_prompts == ["a red circle, small"]  # the saved config.yaml loads again


def test_a_prompt_file_given_as_validation_prompts_is_read(bad: Path) -> None:
    """``--validation_prompts prompts.txt`` reads the file (as ``generate --prompts`` does): its path is not the prompt."""
    from distill_diffusion.config import build_run_config
    from distill_diffusion.trainers.methods.finetune import FineTuneConfig

    run = build_run_config("finetune", FineTuneConfig, {}, [("validation_prompts", str(bad / "prompts.txt"))])
    assert run.train.validation_prompts == ["a red circle, small"]
    assert run.train.validation_prompts_file == str(bad / "prompts.txt")
    again = build_run_config("finetune", FineTuneConfig, {"train": run.to_dict()["train"]})
    assert again.train.validation_prompts == ["a red circle, small"]  # the saved config.yaml loads again
