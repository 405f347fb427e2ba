"""Hostile input to ``generate``, ``eval`` and ``bench quality``: one ``error:`` line, exit 2, nothing written.

Each case is one bad argument on top of an otherwise valid command line, run in-process through
``cli.main``. Every case must fail before a pipeline is sampled (most before any weight loads), so the
whole matrix runs in seconds on one CPU thread.
"""

from __future__ import annotations

import errno
import importlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image

from distill_diffusion.cli import main
from distill_diffusion.eval.generate import image_name, write_manifest
from distill_diffusion.models.export import CardSampling, write_model_card
from distill_diffusion.toy.clip import build_toy_clip, save_toy_clip
from distill_diffusion.toy.tokenizer import build_tokenizer


@dataclass(frozen=True)
class World:
    """Valid inputs (pipeline, real images, CLIP, a generated folder) and bad ones, built once per module."""

    root: Path
    pipeline: Path
    real: Path
    clip: Path
    gen: Path

    def __getattr__(self, name: str) -> Path:  # w.afile, w.empty_dir, ...: paths under root
        if name.startswith("_"):
            raise AttributeError(name)
        return self.root / name


def _pickle_copy(src: Path, dst: Path, subfolder: str) -> Path:
    """A copy of a model folder whose ``subfolder`` weights are a ``.bin`` pickle (never read: refused first)."""
    shutil.copytree(src, dst)
    for weights in (dst / subfolder).glob("*.safetensors"):
        weights.rename(weights.with_suffix(".bin"))
    return dst


def _images(folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (32, 32), (40 * i, 0, 0)).save(folder / image_name(i))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_pipeline_dir: Path, toy_data_dir: Path,
          tiny_sdxl_pipeline_dir: Path) -> World:
    root = tmp_path_factory.mktemp("bad_inputs")
    clip = save_toy_clip(build_toy_clip(build_tokenizer(), projection_dim=8), build_tokenizer(), root / "clip")
    gen = root / "gen"
    _images(gen, 4)
    write_manifest(gen, ["a red circle"] * 4, 0, {"steps": 1})
    w = World(root, tiny_pipeline_dir, toy_data_dir, clip, gen)
    w.afile.write_text("not a folder\n")
    for name in ("empty_dir", "empty_real", "lora_empty"):
        (root / name).mkdir()
    _images(w.no_manifest, 3)
    _images(w.bad_manifest, 1)
    (w.bad_manifest / "manifest.jsonl").write_text("{not json\n")
    _images(w.lost_image, 1)
    write_manifest(w.lost_image, ["a", "b"], 0, {})
    (root / "lora.bin").write_bytes(b"\x80\x04.")
    (w.lora_dir).mkdir()
    (w.lora_dir / "pytorch_lora_weights.safetensors").write_bytes(b"")
    (root / "model.ckpt").write_bytes(b"\x80\x04.")
    (w.empty_prompts).write_text("\n  \n")
    (root / "bad.json").write_text("[\"a\",")
    (w.two_prompts).write_text("a\nb\n")
    _pickle_copy(tiny_pipeline_dir, w.pickle_pipeline, "unet")
    _pickle_copy(clip, w.pickle_clip, ".")
    save_lora_of_another_base(w.other_base_lora)
    _family_loras(w, tiny_pipeline_dir, tiny_sdxl_pipeline_dir)
    _trained(w, tiny_pipeline_dir)
    _cards(w, tiny_pipeline_dir)
    return w


#: What an adversarial student's export writes beside its LoRA (and in a full export's scheduler/): LCMScheduler on the
#: full training grid, and the timesteps the student was trained at (1, 2 or 4 steps visit only those; 3 visit 666, 333).
LADD_SCHEDULER = {"_class_name": "LCMScheduler", "original_inference_steps": 1000, "_trained_timesteps": [999, 749, 499, 249]}


def _trained(w: World, pipeline: Path) -> None:
    """Artefacts that say what they were trained for: an adversarial LoRA and pipeline, and an LCM-LoRA on an 8-step grid."""
    for name, config, sampler in (("ladd_lora", LADD_SCHEDULER, CardSampling("ladd", 1, 1.0)),
                                  ("lcm8_lora", {"_class_name": "LCMScheduler", "original_inference_steps": 8}, CardSampling("lcm", 4, 1.0))):
        (w.root / name).mkdir()
        (w.root / name / "pytorch_lora_weights.safetensors").write_bytes(b"")
        (w.root / name / "scheduler_config.json").write_text(json.dumps(config))
        write_model_card(w.root / name, base_model=str(pipeline), method=name, paper="p", usage="u", sampling=sampler)
    shutil.copytree(pipeline, w.ladd_pipeline)
    scheduler = json.loads((pipeline / "scheduler" / "scheduler_config.json").read_text())
    (w.ladd_pipeline / "scheduler" / "scheduler_config.json").write_text(json.dumps({**scheduler, **LADD_SCHEDULER}))


def _cards(w: World, pipeline: Path) -> None:
    """Model cards that do not say how to sample: front matter that is not YAML (a LoRA's, a pipeline's), an unknown sampler."""
    broken = "---\ndistill_diffusion: {sampler: lcm\n---\n"
    for name, text in (("broken_card_lora", broken), ("turbo_card_lora", "---\ndistill_diffusion: {sampler: turbo}\n---\n")):
        (w.root / name).mkdir()
        (w.root / name / "pytorch_lora_weights.safetensors").write_bytes(b"")
        (w.root / name / "README.md").write_text(text)
    shutil.copytree(pipeline, w.broken_card_pipeline)
    (w.broken_card_pipeline / "README.md").write_text(broken)


def save_lora_of_another_base(out: Path) -> Path:
    """A LoRA trained on a wider UNet than the tiny teacher's (block_out_channels 32, 64, 64 instead of 32, 48, 48)."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict

    from distill_diffusion.toy.tiny import tiny_unet_config

    unet = UNet2DConditionModel(**{**tiny_unet_config(32), "block_out_channels": (32, 64, 64)})
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    StableDiffusionPipeline.save_lora_weights(out, unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)))
    return out


def _family_loras(w: World, sd: Path, xl: Path) -> None:
    """An SD LoRA and an SDXL LoRA as the exports write them (zero adapters: only their keys and shapes matter), and the
    SDXL pipeline beside the SD one."""
    from diffusers import UNet2DConditionModel

    from distill_diffusion.models.lora import attach_lora, save_lora

    for name, base, family in (("sd_lora", sd, "sd1"), ("xl_lora", xl, "sdxl")):
        unet = UNet2DConditionModel.from_pretrained(base / "unet")
        attach_lora(unet, 4, 4, 0.0, ["to_q", "to_k", "to_v", "conv1"])
        (w.root / name).mkdir()
        save_lora(unet, w.root / name, family=family)
    (w.root / "xl_pipeline").symlink_to(xl, target_is_directory=True)


def _readonly(monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only disk: root ignores permission bits, so make the write probe fail as EROFS would."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("distill_diffusion.paths.tempfile.mkstemp", refuse)


def _no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def _one_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


def _no_mps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.mps, "is_available", lambda: False)


Argv = Callable[[World, Path], list[str]]


@dataclass(frozen=True)
class Case:
    id: str
    argv: Argv  # (world, output path) -> command line
    needle: str  # a fragment of the expected error line
    patch: Callable[[pytest.MonkeyPatch], None] | None = None


def gen(*extra: str, model: str | None = None, prompt: tuple[str, ...] = ("--prompt", "a red circle")) -> Argv:
    """``generate`` on the tiny pipeline, writing to the case's output folder, plus ``extra`` (may name w.<path>)."""
    return lambda w, out: [
        "generate", "--model", model and str(getattr(w, model)) or str(w.pipeline), *[_fill(a, w) for a in prompt],
        "--output_dir", str(out), "--device", "cpu", *[_fill(a, w) for a in extra],
    ]  # fmt: skip


def gen_out(output_dir: Callable[[World], str]) -> Argv:
    return lambda w, out: ["generate", "--model", str(w.pipeline), "--prompt", "a", "--steps", "1",
                           "--output_dir", output_dir(w), "--device", "cpu"]  # fmt: skip


def ev(folder: str, *extra: str) -> Argv:
    """``eval`` of ``w.<folder>``, writing its JSON under the case's output folder."""
    return lambda w, out: ["eval", str(getattr(w, folder)), "--output", str(out / "result.json"),
                           *[_fill(a, w) for a in extra]]  # fmt: skip


def bench(*extra: str) -> Argv:
    return lambda w, out: ["bench", "quality", "--prompts", "toy", "--num_images", "2", "--device", "cpu",
                           "--output_dir", str(out), *[_fill(a, w) for a in extra]]  # fmt: skip


def _fill(arg: str, w: World) -> str:
    """``{name}`` in an argument becomes the path ``w.name``, so cases stay one line each."""
    return arg.format_map(_Paths(w)) if "{" in arg else arg


class _Paths(dict):
    def __init__(self, w: World):
        super().__init__()
        self.w = w

    def __missing__(self, key: str) -> str:
        return str(getattr(self.w, key))


CASES = [
    # generate: sampling settings
    Case("gen-steps-2000", gen("--steps", "2000"), "trained with 1000 timesteps; pass 1000 steps or fewer"),
    Case("gen-steps-0", gen("--steps", "0"), "num_inference_steps=0 is invalid"),
    Case("gen-steps-negative", gen("--steps", "-3"), "num_inference_steps=-3 is invalid"),
    Case("gen-steps-not-int", gen("--steps", "four"), "invalid int value"),
    Case("gen-lcm-steps-over-grid", gen("--sampler", "lcm", "--steps", "60"), "distilled on a grid of 50"),
    Case("gen-guidance-nan", gen("--guidance", "nan"), "guidance scale nan is invalid"),
    Case("gen-guidance-inf", gen("--guidance", "inf"), "guidance scale inf is invalid"),
    Case("gen-guidance-negative", gen("--guidance", "-1"), "guidance scale -1.0 is invalid"),
    Case("gen-num-images-0", gen("--num_images", "0"), "num_images=0; pass 1 or more"),
    Case("gen-num-images-negative", gen("--num_images", "-2"), "num_images=-2"),
    Case("gen-batch-size-0", gen("--batch_size", "0"), "--batch_size 0; pass 1 or more"),
    Case("gen-seed-too-large", gen("--seed", str(2**64)), "leaves torch's 64-bit seed range"),
    Case("gen-seed-too-small", gen("--seed", str(-(2**63) - 1)), "leaves torch's 64-bit seed range"),
    Case("gen-unknown-sampler", gen("--sampler", "turbo"), "invalid choice: 'turbo'"),
    Case("gen-lcm-full-on-plain-unet", gen("--sampler", "lcm-full", "--steps", "1"), "needs a UNet with a guidance embedding"),
    Case("gen-lcm-lora-over-grid", gen("--lora", "{lcm8_lora}", "--steps", "16"), "distilled on a grid of 8 timesteps"),
    Case("gen-ladd-lora-untrained-steps", gen("--lora", "{ladd_lora}", "--sampler", "ladd", "--steps", "3"),
         "3 sampling steps with LCMScheduler visit timesteps 666, 333, which this model was not trained at"),
    Case("gen-ladd-lora-untrained-steps-default-sampler", gen("--lora", "{ladd_lora}", "--steps", "8"), "pass 1, 2 or 4 steps"),
    Case("gen-ladd-pipeline-untrained-steps", gen("--sampler", "ladd", "--steps", "3", model="ladd_pipeline"),
         "(it was trained at 999, 749, 499, 249: 1, 2 or 4 steps); pass 1, 2 or 4 steps"),
    Case("gen-ladd-pipeline-with-ddim", gen("--steps", "4", model="ladd_pipeline"), "no step count of DDIMScheduler visits only those); sample it with sampler 'ladd'"),
    # generate: prompts
    Case("gen-prompt-empty", gen(prompt=("--prompt", "")), "holds an empty prompt"),
    Case("gen-prompt-whitespace", gen(prompt=("--prompt", "   ")), "holds an empty prompt"),
    Case("gen-prompts-missing-file", gen(prompt=("--prompts", "/nonexistent/p.txt")), "does not exist"),
    Case("gen-prompts-blank-file", gen(prompt=("--prompts", "{empty_prompts}")), "holds no prompt"),
    Case("gen-prompts-bad-json", gen(prompt=("--prompts", "{root}/bad.json")), "is not valid JSON"),
    Case("gen-prompt-and-prompts", gen("--prompts", "toy"), "not allowed with argument"),
    # generate: devices
    Case("gen-device-cuda-without-gpu", gen("--device", "cuda"), "no cuda device is available", _no_gpu),
    Case("gen-device-cuda-index-too-high", gen("--device", "cuda:7"), "has 1 cuda device(s)", _one_gpu),
    Case("gen-device-unknown", gen("--device", "gpu9"), "'gpu9' is not a device name"),
    Case("gen-device-meta", gen("--device", "meta"), "holds no data"),
    Case("gen-device-mps-unavailable", gen("--device", "mps"), "no mps device is available", _no_mps),
    # generate: output folder
    Case("gen-output-is-file", gen_out(lambda w: str(w.afile)), "afile is a file, not a folder; pass a folder path"),
    Case("gen-output-below-file", gen_out(lambda w: str(w.afile / "run")), "is a file, so no folder can be created"),
    Case("gen-output-under-proc", gen_out(lambda w: "/proc/distill-diffusion/run"), "cannot write in /proc"),
    Case("gen-output-read-only", gen("--steps", "1"), "Read-only file system", _readonly),
    Case("gen-output-empty", gen_out(lambda w: ""), "--output_dir is empty"),
    # generate: model and LoRA
    Case("gen-model-missing", gen(model="no_such_model"), "no such file or folder"),
    Case("gen-model-empty-folder", gen(model="empty_dir"), "not a diffusers pipeline"),
    Case("gen-model-pickle-folder", gen(model="pickle_pipeline"), "pickle weights are not loaded; convert to safetensors"),
    Case("gen-model-ckpt-file", gen(model="model.ckpt"), "is a pickle"),
    Case("gen-model-is-lora", gen(model="lora_dir"), "holds LoRA weights, not a pipeline"),
    Case("gen-lora-missing", gen("--lora", "{no_such_lora}"), "no such file or folder"),
    Case("gen-lora-folder-without-weights", gen("--lora", "{lora_empty}"), "has 0 .safetensors files"),
    Case("gen-lora-pickle-file", gen("--lora", "{root}/lora.bin"), "only .safetensors files are loaded"),
    Case("gen-lora-scale-nan", gen("--lora_scale", "nan"), "LoRA scale nan is invalid"),
    Case("gen-lora-scale-inf", gen("--lora_scale", "inf"), "LoRA scale inf is invalid"),
    Case("gen-lora-of-another-base", gen("--lora", "{other_base_lora}", "--sampler", "lcm"), "does not fit this model's UNet"),
    Case("gen-sdxl-lora-on-sd", gen("--lora", "{xl_lora}", "--sampler", "lcm"), "is an SDXL LoRA (its layers follow that "
         "UNet's layout) and this is an SD 1.x/2.x model"),
    Case("gen-sd-lora-on-sdxl", gen("--lora", "{sd_lora}", "--sampler", "lcm", model="xl_pipeline"),
         "is an SD 1.x/2.x LoRA (its layers follow that UNet's layout) and this is an SDXL model"),
    # generate: image size and SDXL micro-conditioning
    Case("gen-sdxl-time-ids-too-few", gen("--time_ids", "32", "32", "0", "0", "32", model="xl_pipeline"),
         "--time_ids takes 6 numbers ≥ 0, got 5"),
    Case("gen-sdxl-time-ids-too-many", gen("--time_ids", *["32"] * 7, model="xl_pipeline"), "got 7"),
    Case("gen-sdxl-time-ids-negative", gen("--time_ids", "32", "32", "-4", "0", "32", "32", model="xl_pipeline"), "numbers ≥ 0"),
    Case("gen-time-ids-on-sd", gen("--time_ids", "32", "32", "0", "0", "32", "32"), "this model is SD 1.x/2.x, which has no time ids"),
    Case("gen-height-not-a-multiple", gen("--height", "40"), "--height 40 is not a positive multiple of 16"),
    Case("gen-sdxl-width-not-a-multiple", gen("--width", "36", model="xl_pipeline"), "--width 36 is not a positive multiple of 16"),
    Case("gen-width-zero", gen("--width", "0"), "--width 0 is not a positive multiple"),
    # generate: what the artefact's model card says about sampling it
    Case("gen-lora-without-sampler-metadata", gen("--lora", "{lora_dir}"), "lora_dir records no sampler (no 'distill_diffusion' "
         "entry in a README.md front matter), so how to sample it is unknown (an adapter trained elsewhere?); pass --sampler NAME (one of ddim"),
    Case("gen-lora-card-malformed", gen("--lora", "{broken_card_lora}"), "README.md is not valid YAML"),
    Case("gen-lora-card-unknown-sampler", gen("--lora", "{turbo_card_lora}"), "distill_diffusion.sampler 'turbo' is not a sampler"),
    Case("gen-model-card-malformed", gen(model="broken_card_pipeline"), "README.md is not valid YAML"),
    # eval: the generated folder
    Case("eval-generated-missing", ev("no_such_gen", "--real", "{real}"), "no such folder"),
    Case("eval-generated-is-file", ev("afile", "--real", "{real}"), "is a file, not a folder"),
    Case("eval-generated-empty", ev("empty_dir", "--real", "{real}"), "has no manifest.jsonl"),
    Case("eval-generated-without-manifest", ev("no_manifest", "--real", "{real}"), "or --prompts"),
    Case("eval-manifest-not-json", ev("bad_manifest", "--real", "{real}"), "line 1 is not JSON"),
    Case("eval-manifest-image-missing", ev("lost_image", "--real", "{real}"), "is listed in manifest.jsonl but missing"),
    Case("eval-prompt-count-mismatch", ev("no_manifest", "--prompts", "{two_prompts}", "--real", "{real}"), "3 images but 2 prompts"),
    Case("eval-nothing-to-compute", ev("gen"), "nothing to compute"),
    # eval: the real set and the feature space
    Case("eval-real-missing", ev("gen", "--real", "{no_such_real}"), "no such folder"),
    Case("eval-real-is-file", ev("gen", "--real", "{afile}"), "is a file, not a folder; pass a folder of .png/.jpg images"),
    Case("eval-real-empty", ev("gen", "--real", "{empty_real}"), "contains no images"),
    Case("eval-unknown-feature", ev("gen", "--real", "{real}", "--fid_feature", "vgg16"), "FID feature 'vgg16' is unknown"),
    Case("eval-resize-garbage", ev("gen", "--real", "{real}", "--resize", "big"), "resize policy 'big' is not understood"),
    Case("eval-resize-zero", ev("gen", "--real", "{real}", "--resize", "0"), "resize size 0 is invalid"),
    Case("eval-resize-unknown-filter", ev("gen", "--real", "{real}", "--resize", "nearest-64"), "is not understood"),
    Case("eval-inception-weights-missing", ev("gen", "--real", "{real}", "--inception_weights", "{no_weights}.pth"), "Inception weights file"),
    Case("eval-fid-undefined", ev("gen", "--real", "{real}", "--fid_feature", "clip:{clip}"), "FID is undefined with 4 generated"),
    Case("eval-fid-clip-missing", ev("gen", "--real", "{real}", "--fid_feature", "clip:{no_such_clip}"), "no such folder"),
    Case("eval-fid-clip-pickle", ev("gen", "--real", "{real}", "--fid_feature", "clip:{pickle_clip}"), "pickle weights are not loaded"),
    Case("eval-clip-model-pickle", ev("gen", "--clip_model", "{pickle_clip}"), "pickle weights are not loaded; convert to safetensors"),
    Case("eval-clip-model-missing", ev("gen", "--clip_model", "{no_such_clip}"), "no such folder"),
    Case("eval-device-unknown", ev("gen", "--clip_model", "{clip}", "--device", "tpu0"), "'tpu0' is not a device name"),
    # eval: where it writes
    Case("eval-output-below-file", lambda w, out: ["eval", str(w.gen), "--clip_model", str(w.clip), "--output", str(w.afile / "r.json")],
         "afile is a file, not a folder; pass a file path inside a folder"),  # fmt: skip
    Case("eval-output-is-folder", lambda w, out: ["eval", str(w.gen), "--clip_model", str(w.clip), "--output", str(w.empty_dir)],
         "is a folder; pass a file path"),  # fmt: skip
    Case("eval-output-empty", lambda w, out: ["eval", str(w.gen), "--clip_model", str(w.clip), "--output", ""], "--output is empty"),
    Case("eval-stats-cache-below-file", ev("gen", "--real", "{real}", "--stats_cache", "{afile}/s.safetensors"), "--stats_cache"),
    # bench quality: --pipeline specs
    Case("bench-spec-without-equals", bench("--pipeline", "teacher"), "write NAME=PATH"),
    Case("bench-spec-empty-name", bench("--pipeline", "={pipeline}"), "write NAME=PATH"),
    Case("bench-spec-slash-in-name", bench("--pipeline", "a/b={pipeline}"), "without '/'"),
    Case("bench-spec-unknown-key", bench("--pipeline", "p={pipeline},foo=1"), "unknown option 'foo'"),
    Case("bench-spec-option-without-equals", bench("--pipeline", "p={pipeline},lora"), "has no '='"),
    Case("bench-spec-steps-not-number", bench("--pipeline", "p={pipeline},steps=two"), "bad value for steps"),
    Case("bench-spec-steps-zero", bench("--pipeline", "p={pipeline},steps=0|1"), "must be ≥ 1"),
    Case("bench-spec-steps-2000", bench("--pipeline", "p={pipeline},steps=2000"), "p: 2000 sampling steps"),
    Case("bench-spec-unknown-sampler", bench("--pipeline", "p={pipeline},sampler=turbo"), "unknown sampler 'turbo'"),
    Case("bench-spec-lcm-lora-over-grid", bench("--pipeline", "p={pipeline},lora={lcm8_lora},steps=16"), "p: 16 sampling steps, but this model was distilled on a grid of 8"),
    Case("bench-spec-ladd-lora-untrained-steps", bench("--pipeline", "p={pipeline},lora={ladd_lora},sampler=ladd,steps=3|4"), "p: 3 sampling steps"),
    Case("bench-spec-ladd-pipeline-untrained-steps", bench("--pipeline", "p={ladd_pipeline},sampler=ladd,steps=1|2|3"), "p: 3 sampling steps"),
    Case("bench-spec-guidance-nan", bench("--pipeline", "p={pipeline},guidance=nan"), "p: guidance scale nan is invalid"),
    Case("bench-spec-guidance-sweep-nan", bench("--pipeline", "p={pipeline},guidance=1|nan"), "p: guidance scale nan is invalid"),
    Case("bench-spec-guidance-sweep-negative", bench("--pipeline", "p={pipeline},guidance=1|-2"), "p: guidance scale -2.0 is invalid"),
    Case("bench-spec-guidance-sweep-empty", bench("--pipeline", "p={pipeline},guidance="), "bad value for guidance"),
    Case("bench-spec-guidance-sweep-hole", bench("--pipeline", "p={pipeline},guidance=1||2"), "bad value for guidance"),
    Case("bench-spec-guidance-sweep-repeats", bench("--pipeline", "p={pipeline},guidance=1|1"), "guidance scales (1.0, 1.0) repeat"),
    Case("bench-spec-pickle-model", bench("--pipeline", "p={pickle_pipeline}"), "pickle weights are not loaded"),
    Case("bench-spec-names-repeat", bench("--pipeline", "p={pipeline}", "--pipeline", "p={pipeline}"), "pipeline names repeat"),
    Case("bench-spec-key-repeats", bench("--pipeline", "p={pipeline},steps=1,steps=2"), "option 'steps' is given twice"),
    Case("bench-spec-sdxl-lora-on-sd", bench("--pipeline", "p={pipeline},lora={xl_lora},sampler=lcm"), "is an SDXL LoRA"),
    Case("bench-spec-sd-lora-on-sdxl", bench("--pipeline", "p={xl_pipeline},lora={sd_lora},sampler=lcm"), "is an SD 1.x/2.x LoRA"),
    Case("bench-spec-lora-of-another-base", bench("--pipeline", "p={pipeline},lora={other_base_lora},sampler=lcm"), "does not fit this model's UNet"),
    Case("bench-spec-lora-without-sampler-metadata", bench("--pipeline", "p={pipeline},lora={lora_dir}"),
         "records no sampler (no 'distill_diffusion' entry in a README.md front matter)"),
    Case("bench-spec-lora-card-malformed", bench("--pipeline", "p={pipeline},lora={broken_card_lora}"),
         "is not valid YAML (expected ',' or '}', but got '<stream end>' at line 2); repair it or pass sampler=NAME in --pipeline"),
    # bench quality: everything else
    Case("bench-no-pipelines", bench(), "no pipeline to benchmark"),
    Case("bench-teacher-missing", bench("--teacher", "{no_such_teacher}"), "no such file or folder"),
    Case("bench-num-images-0", bench("--teacher", "{pipeline}", "--num_images", "0"), "num_images=0"),
    Case("bench-steps-0", bench("--pipeline", "p={pipeline}", "--steps", "0"), "p: steps (0,) must be ≥ 1"),
    Case("bench-teacher-guidance-nan", bench("--teacher", "{pipeline}", "--teacher_guidance", "nan"), "teacher: guidance scale nan"),
    Case("bench-teacher-guidance-sweep-nan", bench("--teacher", "{pipeline}", "--teacher_guidance", "3", "nan"), "teacher: guidance scale nan"),
    Case("bench-teacher-guidance-sweep-empty", bench("--teacher", "{pipeline}", "--teacher_guidance"), "expected at least one argument"),
    Case("bench-teacher-guidance-negative", bench("--teacher", "{pipeline}", "--teacher_guidance", "-2"), "guidance scale -2.0"),
    Case("bench-batch-size-0", bench("--teacher", "{pipeline}", "--batch_size", "0"), "batch size 0"),
    Case("bench-grid-rows-0", bench("--teacher", "{pipeline}", "--grid_rows", "0"), "grid rows 0"),
    Case("bench-device-unknown", bench("--teacher", "{pipeline}", "--device", "gpu9"), "'gpu9' is not a device name"),
    Case("bench-seed-overflows", bench("--teacher", "{pipeline}", "--seed", str(2**64 - 1)), "64-bit seed range"),
    Case("bench-real-empty", bench("--teacher", "{pipeline}", "--real", "{empty_real}"), "contains no images"),
    Case("bench-output-is-file", lambda w, out: bench("--teacher", "{pipeline}")(w, w.afile), "is a file, not a folder"),
    Case("bench-output-under-proc", lambda w, out: bench("--teacher", "{pipeline}")(w, Path("/proc/dd/q")), "cannot write in /proc"),
]


def _snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*")}


def test_cases_are_distinct_and_many():
    assert len({c.id for c in CASES}) == len(CASES) >= 50


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case: Case, world: World, capsys, monkeypatch):
    if case.patch is not None:
        case.patch(monkeypatch)
    out = world.root / "out" / case.id
    watched = (world.root, world.pipeline, world.real)
    before = [_snapshot(root) for root in watched]
    assert main(case.argv(world, out)) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert case.needle in lines[0], lines[0]
    assert "Traceback" not in captured.err + captured.out
    assert not out.exists()
    assert [_snapshot(root) for root in watched] == before, "a refused command wrote files"


def test_loaders_never_unpickle_even_past_the_folder_check(world: World, monkeypatch):
    """Defence in depth: with the pickle-folder check switched off, use_safetensors=True still refuses the load."""
    from distill_diffusion.errors import UserError
    from distill_diffusion.eval.clip_score import load_clip
    from distill_diffusion.pipelines import load_pipeline

    unpickled: list[object] = []  # diffusers wraps a loader's exception in OSError, so record the calls

    def no_unpickling(*args: object, **kwargs: object) -> None:
        unpickled.append(args)
        raise AssertionError("torch.load was called on a user file")

    monkeypatch.setattr("distill_diffusion.pipelines.loader.reject_pickle_weights", lambda *args: None)
    # (the package exports a function named clip_score, which hides the module from a dotted path)
    monkeypatch.setattr(importlib.import_module("distill_diffusion.eval.clip_score"), "reject_pickle_weights", lambda *args: None)
    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(UserError, match="cannot load model"):
        load_pipeline(str(world.pickle_pipeline), device="cpu")
    with pytest.raises(UserError, match="cannot load CLIP model"):
        load_clip(str(world.pickle_clip))
    assert not unpickled
