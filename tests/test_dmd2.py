"""DMD2 (Yin et al., arXiv:2405.14867): options, the one-base LoRA mode's two adapters and their phases, the
distribution matching term at initialisation, and a short CLI run whose LoRA loads in stock diffusers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from distill_diffusion.cli import main
from distill_diffusion.errors import UserError
from distill_diffusion.trainers.methods.dmd2 import DMD2Config
from distill_diffusion.trainers.methods.dmd2.method import FAKE_ADAPTER, classifier_taps


@pytest.mark.parametrize(("options", "message"), [
    ({"fake_updates": 0}, "fake_updates=0 must be >= 1"),
    ({"real_guidance_scale": 0.5}, "real_guidance_scale=0.5 must be >= 1"),
    ({"student_timesteps": [249, 999], "student_timestep_probs": [0.5, 0.5]}, "distinct and descending"),
    ({"dm_timestep_range": [0.9, 0.1]}, "dm_timestep_range"),
    ({"dm_timestep_range": [0.1]}, "dm_timestep_range"),
    ({"gan_weight": -1.0}, "gan_weight=-1.0"),
    ({"student_timestep_probs": [1.0]}, "one probability"),
])
def test_bad_options_are_refused_in_one_line(options: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        DMD2Config(**options)


def test_bad_option_through_the_cli_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    code = main(["train", "dmd2", "--config", "tiny/dmd2", "--output_dir", str(tmp_path / "out"), "--method.fake_updates", "0"])
    assert code == 2 and not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory):
    from distill_diffusion.bench.timing import tiny_engine

    options = {"lora_rank": 4, "lora_alpha": 4, "student_timesteps": [999, 499], "student_timestep_probs": [0.5, 0.5],
               "fake_updates": 2, "head_width": 8}
    return tiny_engine(tmp_path_factory.mktemp("dmd2"), "dmd2", 4, options)[0]


def test_one_base_mode_holds_one_unet_and_splits_its_adapters_between_the_phases(engine) -> None:
    method = engine.method
    assert method.unet is method.teacher_unet is method.fake_unet
    generator, fake = (method.trainable_parameters(p) for p in method.phases())
    names = {id(p): n for n, p in method.unet.named_parameters()}
    assert generator and all(".default." in names[id(p)] for p in generator)
    fake_unet = [p for p in fake if id(p) in names]
    assert fake_unet and all(f".{FAKE_ADAPTER}." in names[id(p)] for p in fake_unet)
    assert {id(p) for p in method.head.parameters()} <= {id(p) for p in fake}
    lora = {id(p) for n, p in method.unet.named_parameters() if ".lora_" in n}
    assert {id(p) for p in generator} | {id(p) for p in fake_unet} == lora and not {id(p) for p in generator} & {id(p) for p in fake}


def test_a_step_without_the_generator_changes_only_the_fake_score_and_the_head(engine) -> None:
    """fake_updates 2: step 0 runs both phases, step 1 only the fake score's (the two time-scale rule)."""
    from distill_diffusion.bench.timing import engine_stepper

    method, step = engine.method, engine_stepper(engine)
    engine.state.global_step = 0
    step()
    engine.state.global_step = 1
    before = {n: p.detach().clone() for n, p in method.unet.named_parameters() if ".lora_" in n}
    head = [p.detach().clone() for p in method.head.parameters()]
    step()
    changed = {n for n, p in method.unet.named_parameters() if ".lora_" in n and not torch.equal(p, before[n])}
    assert changed and all(f".{FAKE_ADAPTER}." in n for n in changed), sorted(changed)[:3]
    assert any(not torch.equal(a, b) for a, b in zip(head, method.head.parameters()))


def test_the_classifier_reads_the_bottleneck_or_the_blocks_named(tmp_path: Path) -> None:
    """DMD2's classifier reads the fake score's mid block; ``disc_blocks`` puts a head on each block named, and every
    head's logits reach the GAN losses (each head gets a gradient from the classifier's loss)."""
    from distill_diffusion.bench.timing import tiny_engine
    from distill_diffusion.models.batch import latents_and_embeddings
    from distill_diffusion.trainers.methods.base import StepContext

    taps = ["down_blocks.1", "mid_block"]
    engine = tiny_engine(tmp_path, "dmd2", 4, {"lora_rank": 4, "lora_alpha": 4, "head_width": 8, "disc_blocks": taps})[0]
    method = engine.method
    assert method.taps == method.head.taps == taps
    x0, c = latents_and_embeddings(next(iter(engine.dataloader)), method.components)
    out = method.fake_score_loss(x0, c, StepContext(step=1, modules={"unet": method.unet, "head": method.head}))
    out.loss.backward()
    assert all(any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.head.heads[t.replace(".", "_")].parameters()) for t in taps)
    assert classifier_taps(DMD2Config(), dict(method.components.unet.config)) == ["mid_block"]


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_the_distribution_matching_gradient_is_zero_while_fake_and_real_scores_agree(tmp_path: Path, guidance: float) -> None:
    """At initialisation the fake-score adapter is zero, so with an unguided real score (guidance 1) both scores are
    the teacher's: the generator's distribution matching loss gives its adapter no gradient. A guided real score
    differs from the fake one, and the gradient is not zero."""
    from distill_diffusion.bench.timing import tiny_engine
    from distill_diffusion.models.batch import latents_and_embeddings
    from distill_diffusion.trainers.methods.base import StepContext

    engine, data = tiny_engine(tmp_path, "dmd2", 4, {"lora_rank": 4, "lora_alpha": 4, "real_guidance_scale": guidance, "gan_weight": 0.0,
                                                     "student_timesteps": [999], "student_timestep_probs": [1.0]})
    method = engine.method
    batch = next(iter(engine.dataloader))
    x0, c = latents_and_embeddings(batch, method.components)
    out = method.generator_loss(x0, c, StepContext(step=0, modules={"unet": method.unet, "head": method.head}))
    out.loss.backward()
    grads = [p.grad for p in method.trainable_parameters(method.phases()[0]) if p.grad is not None]
    assert grads and all(g.isfinite().all() for g in grads)
    # zero up to rounding: the real score's conditional branch runs batched with the unconditional one, the fake
    # score's alone, and CPU kernels may round a batch of 2B differently from one of B (about 1e-8 here)
    largest = max(float(g.abs().max()) for g in grads)
    assert largest > 1e-4 if guidance > 1 else largest < 1e-6


@pytest.mark.e2e
def test_tiny_config_trains_and_its_generator_loads_in_stock_diffusers(tmp_path: Path) -> None:
    from diffusers import LCMScheduler, StableDiffusionPipeline

    from distill_diffusion.toy.tiny import init_toy

    paths = init_toy(tmp_path, num_images=16)
    out = tmp_path / "dmd2"
    assert main(["train", "dmd2", "--config", "tiny/dmd2", "--pretrained_model_name_or_path", str(paths["teacher"]),
                 "--train_data_dir", str(paths["data"]), "--output_dir", str(out), "--max_train_steps", "3",
                 "--train_batch_size", "4", "--checkpointing_steps", "10", "--progress_bar", "false",
                 "--method.fake_updates", "2"]) == 0
    card = (out / "README.md").read_text()
    assert "one-base LoRA mode" in card and "load_lora_weights" in card
    pipe = StableDiffusionPipeline.from_pretrained(paths["teacher"], local_files_only=True)
    pipe.scheduler = LCMScheduler.from_config(json.loads((out / "scheduler_config.json").read_text()))
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(out)
    image = pipe("a red circle", num_inference_steps=1, guidance_scale=1.0, output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 32, 32, 3) and torch.isfinite(torch.from_numpy(image)).all()


def test_the_speed_benchmark_times_a_cycle_of_fake_updates_steps_against_its_passes(tmp_path: Path) -> None:
    from distill_diffusion.trainers.methods.dmd2.bench_speed import ENGINE_KEY, OPTIONS, run_dmd2_benchmark

    result = run_dmd2_benchmark(steps=1, batch_sizes=(2,), output=tmp_path / "speed.json")
    row = result["training"][0]
    n = OPTIONS["fake_updates"]
    assert ENGINE_KEY in row["seconds"] and len(row["seconds"]) == 8 and row["ratio"] > 0
    assert f"fake score: denoising forward+backward (×{n})" in row["seconds"] and f"fresh samples: generator forward, no grad (×{n - 1})" in row["seconds"]
    assert "step / sum" in (tmp_path / "speed.md").read_text()


def test_a_cycle_runs_the_generator_phase_once_on_its_first_step(engine) -> None:
    """The benchmarks' cycle (``engine_stepper(engine, cycle=fake_updates)``) numbers its steps as training does."""
    from distill_diffusion.bench.timing import engine_stepper

    phases, run = [], engine.step

    def step(micro: list) -> dict | None:
        phases.append([p.name for p in engine.phases if engine.state.global_step % p.every == 0])
        return run(micro)

    engine.step = step
    try:
        engine_stepper(engine, cycle=2)()
    finally:
        del engine.step
    assert phases == [["generator", "fake_score"], ["fake_score"]]


def test_the_gpu_benchmark_runs_both_modes_on_a_tiny_unet_and_refuses_a_machine_without_cuda(tmp_path: Path) -> None:
    from diffusers import UNet2DConditionModel

    from distill_diffusion.toy.tiny import tiny_unet_config
    from distill_diffusion.trainers.methods.dmd2.bench_gpu import run_sd15_dmd2_benchmark

    out = tmp_path / "gpu.json"
    result = run_sd15_dmd2_benchmark(batch_size=2, resolution=32, steps=1, mixed_precision="no", output=out,
                                     unet_config=tiny_unet_config(), device="cpu")
    one_base, full = result["modes"]["one-base LoRA"], result["modes"]["full"]
    assert one_base["images_per_second"] > 0 and full["images_per_second"] > 0 and one_base["peak_memory_gib"] is None
    assert one_base["settings"]["lora"] and not full["settings"]["lora"] and one_base["settings"]["steps_per_cycle"] == 5
    unet = sum(p.numel() for p in UNet2DConditionModel.from_config(tiny_unet_config()).parameters())
    assert full["settings"]["generator_parameters"] == unet
    table = out.with_suffix(".md").read_text()
    assert "| one-base LoRA |" in table and "| full |" in table and "cycles of 5 engine steps" in table
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="needs a CUDA GPU"):
            run_sd15_dmd2_benchmark()


@pytest.mark.e2e
def test_a_resume_in_the_middle_of_a_cycle_ends_equal_to_the_uninterrupted_run(tmp_path: Path) -> None:
    """Both adapters, the head, both optimizers and the two time-scale counter come back: a run stopped after step 3 of
    cycles of 2 (the generator's next update is step 4) and resumed ends with the uninterrupted run's weights."""
    from safetensors.torch import load_file

    from distill_diffusion.toy.tiny import init_toy

    paths = init_toy(tmp_path, num_images=16)

    def run(out: Path, steps: int, *extra: str) -> None:
        assert main(["train", "dmd2", "--config", "tiny/dmd2", "--pretrained_model_name_or_path", str(paths["teacher"]),
                     "--train_data_dir", str(paths["data"]), "--output_dir", str(out), "--max_train_steps", str(steps),
                     "--train_batch_size", "4", "--checkpointing_steps", "3", "--progress_bar", "false",
                     "--method.fake_updates", "2", "--lora_rank", "4", "--lora_alpha", "4", "--head_width", "8",
                     "--export_dtype", "fp32", "--use_ema", "false", *extra]) == 0

    whole, part = tmp_path / "whole", tmp_path / "part"
    run(whole, 6)
    run(part, 3)
    run(part, 6, "--resume_from_checkpoint", "latest")
    files = sorted(p.relative_to(whole / "checkpoint-6") for p in (whole / "checkpoint-6").glob("*.safetensors"))
    assert len(files) >= 2  # the UNet's two adapters and the head
    for name in files:
        a, b = load_file(whole / "checkpoint-6" / name), load_file(part / "checkpoint-6" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    a, b = load_file(whole / "pytorch_lora_weights.safetensors"), load_file(part / "pytorch_lora_weights.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
