"""The sampler an artefact ships: the model card's front matter written by exports, read by ``generate`` and
``bench quality``, overridden by explicit options, and refused or reported when it says nothing or is broken."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from test_pipelines_loader import save_random_lora

from distill_diffusion.cli import main
from distill_diffusion.errors import UserError
from distill_diffusion.models.export import CARD_KEY, TEACHER_SAMPLING, CardSampling, write_model_card
from distill_diffusion.pipelines import SAMPLERS, get_sampler, resolve_sampling
from distill_diffusion.pipelines.card import front_matter, read_card_sampling

LORA_FILE = "pytorch_lora_weights.safetensors"


def card(folder: Path, matter: str) -> Path:
    """``folder`` (created) with a README.md whose front matter is ``matter`` and a LoRA weights file (never read)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LORA_FILE).touch()
    (folder / "README.md").write_text(f"---\n{matter}\n---\n\n# a model\n")
    return folder


def entry(sampler: object = "lcm", steps: object = 4, guidance: object = 1.5) -> str:
    return yaml.safe_dump({"library_name": "diffusers", CARD_KEY: {"method": "lcm-lora", "sampler": sampler,
                                                                    "num_inference_steps": steps, "guidance_scale": guidance}})


def test_the_card_records_the_sampling_under_one_key_and_reads_back(tmp_path: Path) -> None:
    sampling = CardSampling("ladd", 1, 1)
    text = write_model_card(tmp_path, base_model="owner/sd", method="ladd-lora", paper="p", usage="u", sampling=sampling).read_text()
    meta = yaml.safe_load(front_matter(text))
    assert meta["library_name"] == "diffusers" and meta["base_model"] == "owner/sd"
    assert meta[CARD_KEY] == {"method": "ladd-lora", "sampler": "ladd", "num_inference_steps": 1, "guidance_scale": 1.0}
    assert read_card_sampling(str(tmp_path), "model") == sampling


def test_a_student_sampled_as_its_teacher_records_the_ddim_sampler_defaults() -> None:
    ddim = get_sampler(TEACHER_SAMPLING.sampler)
    assert (ddim.num_inference_steps, ddim.guidance_scale) == (TEACHER_SAMPLING.num_inference_steps, TEACHER_SAMPLING.guidance_scale)


def test_a_lora_card_gives_sampler_steps_and_guidance_and_flags_override_each(tmp_path: Path) -> None:
    lora = str(card(tmp_path / "lora", entry()))
    choice = resolve_sampling("teacher", lora, None)
    assert choice.sampler == "lcm" and choice.note is None
    assert choice.call_kwargs() == {"num_inference_steps": 4, "guidance_scale": 1.5}
    assert choice.call_kwargs(2) == {"num_inference_steps": 2, "guidance_scale": 1.5}
    assert choice.call_kwargs(guidance_scale=1.0) == {"num_inference_steps": 4, "guidance_scale": 1.0}
    assert resolve_sampling("teacher", lora, "lcm").call_kwargs() == {"num_inference_steps": 4, "guidance_scale": 1.5}
    # another sampler: the card's numbers were chosen for its own, so this one's defaults
    other = resolve_sampling("teacher", lora, "ddim")
    assert other.sampler == "ddim" and other.call_kwargs() == get_sampler("ddim").call_kwargs()


def test_the_lora_card_wins_over_the_model_card(tmp_path: Path) -> None:
    model = card(tmp_path / "model", yaml.safe_dump({CARD_KEY: {"sampler": "ddim", "num_inference_steps": 50, "guidance_scale": 7.5}}))
    assert resolve_sampling(str(model), None, None).sampler == "ddim"
    assert resolve_sampling(str(model), str(card(tmp_path / "lora", entry())), None).sampler == "lcm"


def test_an_adapter_without_sampler_information_needs_a_sampler(tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / LORA_FILE).touch()
    plain = card(tmp_path / "plain", "library_name: diffusers")  # a card, but not ours
    for lora in (bare, plain, plain / LORA_FILE):
        with pytest.raises(UserError) as info:
            resolve_sampling("teacher", str(lora), None)
        message = str(info.value)
        assert f"LoRA {lora} records no sampler" in message and "\n" not in message
        assert message.endswith(f"pass --sampler NAME (one of {', '.join(SAMPLERS)})")
        given = resolve_sampling("teacher", str(lora), "lcm")
        assert (given.sampler, given.card, given.note) == ("lcm", None, None)
        assert given.call_kwargs() == get_sampler("lcm").call_kwargs()  # today's LCM-LoRA numbers, when asked for


def test_a_teacher_without_sampler_information_keeps_ddim_and_says_so(tiny_pipeline_dir: Path) -> None:
    choice = resolve_sampling(str(tiny_pipeline_dir), None, None)
    assert choice.sampler == "ddim" and choice.call_kwargs() == get_sampler("ddim").call_kwargs()
    assert choice.note.startswith(f"note: model {tiny_pipeline_dir} records no sampler") and "\n" not in choice.note
    assert resolve_sampling(str(tiny_pipeline_dir), None, "dpm").note is None


BROKEN = {
    "yaml": ("sampler: [lcm", "is not valid YAML (expected ',' or ']', but got '<stream end>' at line 2)"),
    "list": ("- lcm\n- 4", "is not a YAML mapping"),
    "entry-not-mapping": (f"{CARD_KEY}: lcm", f"{CARD_KEY} is not a mapping"),
    "unknown-sampler": (entry(sampler="turbo"), f"{CARD_KEY}.sampler 'turbo' is not a sampler this version knows"),
    "no-sampler": (entry(sampler=None), f"{CARD_KEY}.sampler None"),
    "steps-0": (entry(steps=0), f"{CARD_KEY}.num_inference_steps 0 is not a step count"),
    "steps-text": (entry(steps="4"), f"{CARD_KEY}.num_inference_steps '4'"),
    "steps-bool": (entry(steps=True), f"{CARD_KEY}.num_inference_steps True"),
    "guidance-nan": (entry(guidance=float("nan")), f"{CARD_KEY}.guidance_scale nan is not a finite number"),
    "guidance-negative": (entry(guidance=-1), f"{CARD_KEY}.guidance_scale -1 is not a finite number"),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_a_broken_card_is_one_line_unless_a_sampler_is_given(name: str, tmp_path: Path) -> None:
    matter, needle = BROKEN[name]
    lora = str(card(tmp_path / "lora", matter))
    with pytest.raises(UserError) as info:
        resolve_sampling("teacher", lora, None)
    message = str(info.value)
    assert message.startswith(f"LoRA {lora}: ") and needle in message and "\n" not in message, message
    assert "; repair it or pass --sampler NAME (one of " in message
    given = resolve_sampling("teacher", lora, "lcm")
    assert given.sampler == "lcm" and given.card is None and needle in given.note and "ignoring the card" in given.note


def test_a_card_without_closed_front_matter_says_nothing(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text(f"---\n{entry()}\n# no closing line\n")
    assert read_card_sampling(str(tmp_path), "model") is None
    (tmp_path / "README.md").write_text("# no front matter\n")
    assert read_card_sampling(str(tmp_path), "model") is None


def test_a_hub_card_is_fetched_only_for_a_hub_id_and_a_failure_is_no_information(tmp_path: Path, monkeypatch) -> None:
    import huggingface_hub

    calls = []

    def download(repo: str, filename: str, **kwargs: object) -> str:
        calls.append((repo, filename, kwargs))
        if repo == "owner/carded":
            return str(card(tmp_path / "hub", entry()) / "README.md")
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    assert read_card_sampling("owner/carded", "model", local_files_only=True) == CardSampling("lcm", 4, 1.5)
    assert resolve_sampling("owner/missing", None, None).sampler == "ddim"
    assert calls == [("owner/carded", "README.md", {"local_files_only": True}), ("owner/missing", "README.md", {"local_files_only": False})]
    for local in (str(tmp_path), str(tmp_path / "no_such_folder"), "./rel/path", "model.safetensors"):
        assert read_card_sampling(local, "model") is None
    assert len(calls) == 2  # a path is never looked up on the Hub


@pytest.fixture(scope="module")
def carded_lora(tiny_pipeline_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA with the card an LCM-LoRA export writes at today's defaults (lcm, 4 steps, guidance 1)."""
    out = save_random_lora(tiny_pipeline_dir, tmp_path_factory.mktemp("carded"))
    write_model_card(out, base_model=str(tiny_pipeline_dir), method="lcm-lora", paper="p", usage="u", sampling=CardSampling("lcm", 4, 1.0))
    return out


def generate(tmp_path: Path, name: str, teacher: Path, *extra: str) -> tuple[list[dict], Path]:
    out = tmp_path / name
    assert main(["generate", "--model", str(teacher), "--prompt", "a red circle", "--num_images", "2", "--output_dir", str(out),
                 "--device", "cpu", *extra]) == 0
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()], out


def test_generate_samples_a_carded_lora_exactly_as_the_explicit_sampler_did(carded_lora: Path, tiny_pipeline_dir: Path, tmp_path: Path) -> None:
    read, a = generate(tmp_path, "card", tiny_pipeline_dir, "--lora", str(carded_lora))
    asked, b = generate(tmp_path, "flag", tiny_pipeline_dir, "--lora", str(carded_lora), "--sampler", "lcm")
    assert [(m["sampler"], m["steps"], m["guidance_scale"]) for m in read] == [("lcm", 4, 1.0)] * 2
    assert read == asked
    for i in range(2):
        assert (a / f"{i:06d}.png").read_bytes() == (b / f"{i:06d}.png").read_bytes()


def test_generate_flags_override_the_card(carded_lora: Path, tiny_pipeline_dir: Path, tmp_path: Path, capsys) -> None:
    manifest, _ = generate(tmp_path, "ddim", tiny_pipeline_dir, "--lora", str(carded_lora), "--sampler", "ddim",
                           "--num_inference_steps", "1", "--guidance_scale", "2")
    assert (manifest[0]["sampler"], manifest[0]["scheduler"], manifest[0]["steps"], manifest[0]["guidance_scale"]) == ("ddim", "DDIMScheduler", 1, 2.0)
    assert "note:" not in capsys.readouterr().err
