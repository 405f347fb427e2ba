"""The adversarial methods' discriminator (LADD, arXiv:2403.12015; ADD, arXiv:2311.17042): which fake samples each
discriminator update sees through the engine, and the hinge loss per head and per position (ADD §3.2, eqs. 2-3)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch


def adversarial_engine(tmp: Path, teacher: Path, name: str, **method: Any) -> Any:
    """A real LADD or ADD engine on the tiny pipeline: batch 2, gradient accumulation 2, two discriminator updates."""
    from distill_diffusion.bench.timing import latent_engine

    options = {"lora_rank": 4, "lora_alpha": 4, "head_width": 8, "disc_updates": 2, **method}
    if name == "add":
        options.update(feature_network=str(teacher.parent / "dinov2"), feature_resolution=32)
    sections = {"model": {"pretrained_model_name_or_path": str(teacher), "local_files_only": True},
                "train": {"gradient_accumulation_steps": 2}, "method": options}
    return latent_engine(tmp, name, 2, sections)[0]


def record_fakes(engine: Any, name: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Lists filled, call by call, with the fakes the generator made and the fakes each discriminator call scored.

    LADD: the latents given to ``features`` (the generator scores its fakes alone, ``own_rows`` 0; the discriminator
    reals then fakes). ADD: the heads' inputs (the discriminator reuses the generator's features of its fakes, so the
    fakes are told apart by their ViT tokens)."""
    m, made, scored = engine.method, [], []
    if name == "ladd":
        features = m.features

        def spy(latents: torch.Tensor, c: torch.Tensor, source: Any, own_rows: int) -> Any:
            (scored if own_rows else made).append(latents[own_rows:].detach().clone())
            return features(latents, c, source, own_rows)

        m.features = spy
    else:
        forward = m.heads.forward

        def spy(features: dict[str, torch.Tensor], cond: torch.Tensor) -> Any:
            tokens = next(iter(features.values())).detach().clone()
            (made if torch.is_grad_enabled() and tokens.shape[0] == 2 else scored).append(tokens[-2:])
            return forward(features, cond)

        m.heads.forward = spy
    return made, scored


@pytest.mark.parametrize("name", ["ladd", "add"])
def test_every_discriminator_update_sees_unseen_fakes_from_every_micro_batch(name: str, tiny_pipeline_dir: Path,
                                                                             tmp_path: Path) -> None:
    """Accumulation 2, two discriminator updates: the first update's micro-batch i scores the generator's fakes of
    micro-batch i, the second update scores fakes of the updated student that no update has seen."""
    engine = adversarial_engine(tmp_path, tiny_pipeline_dir, name)
    made, scored = record_fakes(engine, name)
    sample, sources = engine.method.student_sample, []

    def spy(x0: torch.Tensor, *args: Any) -> torch.Tensor:
        sources.append((x0.clone(), torch.is_grad_enabled()))
        return sample(x0, *args)

    engine.method.student_sample = spy
    torch.manual_seed(0)
    assert engine.step(engine.next_micro()) is not None
    # the student sampled each generator micro-batch with gradients, then the second update's own micro-batches without
    assert [grad for _, grad in sources] == [True, True, False, False]
    assert not any(torch.equal(sources[i][0], sources[j][0]) for i in range(4) for j in range(i))
    assert len(made) == 2 and len(scored) == 4, (len(made), len(scored))
    assert torch.equal(scored[0], made[0]) and torch.equal(scored[1], made[1])
    for i, later in enumerate(scored):
        for earlier in scored[:i]:
            assert not torch.allclose(later, earlier), "a discriminator call scored fakes an earlier one had seen"
    assert engine.state.batches_seen == 4  # the second update read two fresh micro-batches (the engine's repeats)


def identity_heads() -> Any:
    """Discriminator heads whose logit at each position is the feature's value there (body and projection off): head
    ``a`` reads 4 positions, head ``b`` 2."""
    from distill_diffusion.trainers.methods.adversarial.heads import DiscriminatorHeads

    heads = DiscriminatorHeads({"a": 1, "b": 1}, cond_dim=1, width=1)
    for head in heads.heads.values():
        head.body = torch.nn.Identity()
        torch.nn.init.ones_(head.out.weight), torch.nn.init.zeros_(head.out.bias)
        torch.nn.init.zeros_(head.project.weight), torch.nn.init.zeros_(head.project.bias)
    return heads.requires_grad_(False)


def per_position(a: list[float], b: list[float], rows: int) -> dict[str, torch.Tensor]:
    return {"a": torch.tensor(a).view(1, 1, 2, 2).repeat(rows, 1, 1, 1), "b": torch.tensor(b).view(1, 1, 1, 2).repeat(rows, 1, 1, 1)}


#: Real logits whose mean over positions and heads is 1.2 (outside the margin) while two of head a's are inside it;
#: fake logits whose mean is −1.25 while one of head b's is inside the margin.
REAL_A, REAL_B, FAKE_A, FAKE_B = [2.0, 2.0, 0.4, 0.4], [1.2, 1.2], [-1.5] * 4, [-2.0, 0.0]


def discriminator_on(m: Any, monkeypatch: Any) -> dict[str, float]:
    """The discriminator's loss and logs on the logits above (batch 2: two reals, then two fakes)."""
    from test_ladd import batch, ctx

    features = {k: torch.cat([per_position(REAL_A, REAL_B, 2)[k], per_position(FAKE_A, FAKE_B, 2)[k]]) for k in ("a", "b")}
    monkeypatch.setattr(m, "discriminator_inputs", lambda *args: (features, torch.zeros(4, 1)))
    m.heads = m.models["disc"] = identity_heads().requires_grad_(True)
    out = m.compute_loss("discriminator", batch(2), ctx(m))
    return {"loss": float(out.loss.detach()), **out.logs}


def test_the_hinge_is_per_head_and_per_position_and_summed_over_heads(tiny_pipeline_dir: Path, monkeypatch: Any) -> None:
    """ADD eqs. 2-3 (StyleGAN-T's heads): max(0, 1 ∓ D_k) per head k and position, mean over positions and batch, sum
    over heads. Averaging first gave 0 here: the real logits' mean 1.2 meets the margin, the fakes' −1.25 too."""
    from test_ladd import batch, ctx, method

    m = method(tiny_pipeline_dir)
    # head a: mean(0, 0, 0.6, 0.6) for the reals; head b: mean(0, 1) for the fakes
    assert discriminator_on(m, monkeypatch)["d_loss"] == pytest.approx(0.3 + 0.5)
    # the generator's −D(fake): −Σ_k mean D_k = 1.5 + 1.0 (not their mean 1.25)
    fake = per_position(FAKE_A, FAKE_B, 2)
    monkeypatch.setattr(m, "features", lambda *args, **kw: (fake, torch.zeros(2, 1)))
    assert m.compute_loss("generator", batch(2), ctx(m)).logs["g_adv"] == pytest.approx(2.5)


def test_the_softplus_loss_is_per_head_and_per_position_too(tiny_pipeline_dir: Path, monkeypatch: Any) -> None:
    from test_ladd import method
    from torch.nn.functional import softplus

    m = method(tiny_pipeline_dir, adv_loss="non_saturating")
    expected = sum(float(softplus(-torch.tensor(r)).mean() + softplus(torch.tensor(f)).mean())
                   for r, f in ((REAL_A, FAKE_A), (REAL_B, FAKE_B)))
    assert discriminator_on(m, monkeypatch)["d_loss"] == pytest.approx(expected)


def test_r1_penalises_the_gradient_of_the_sum_over_heads(tiny_pipeline_dir: Path, monkeypatch: Any) -> None:
    """D = Σ_k mean over positions of D_k: with identity heads ∂D/∂f_k = 1/P_k at each of head k's P_k positions, so the
    exact R1's ‖∇D‖² = 1/4 + 1/2 (γ = 2: the loss adds it once)."""
    from test_ladd import method

    logs = discriminator_on(method(tiny_pipeline_dir, r1_gamma=2.0), monkeypatch)
    assert logs["r1"] == pytest.approx(0.75) and logs["loss"] == pytest.approx(0.8 + 0.75)


def test_approximate_r1_is_per_head_and_per_position_too(tiny_pipeline_dir: Path, monkeypatch: Any) -> None:
    """γ·‖D(f) − D(f + σn)‖² per head and position, summed over heads: with n = 1 every position moves by σ, so 2σ²."""
    from test_ladd import method

    m = method(tiny_pipeline_dir, r1_gamma=1.0, r1_approximate_sigma=0.1)
    monkeypatch.setattr(torch, "randn_like", torch.ones_like)
    assert discriminator_on(m, monkeypatch)["r1"] == pytest.approx(2 * 0.1**2)


def record_conditions(engine: Any) -> list[torch.Tensor]:
    """Each heads call's condition (the generator's on its fakes, the discriminator's on reals and fakes: twice the rows)."""
    forward, calls = engine.method.heads.forward, []

    def spy(features: dict[str, torch.Tensor], cond: torch.Tensor) -> Any:
        calls.append(cond.detach().clone())
        return forward(features, cond)

    engine.method.heads.forward = spy
    return calls


@pytest.mark.parametrize("name", ["ladd", "add"])
def test_the_discriminator_can_be_conditioned_on_each_fakes_student_timestep(name: str, tiny_pipeline_dir: Path,
                                                                             tmp_path: Path) -> None:
    """``disc_student_timestep``: the heads' condition ends with the embedding of the student timestep each fake was made
    at, the generator's and the discriminator's calls agree on it, and a real sample carries its fake's timestep (so the
    label says nothing of which rows are real); off, the condition is unchanged."""
    from distill_diffusion.trainers.methods.adversarial import method as adversarial
    from distill_diffusion.trainers.methods.adversarial.heads import TIME_DIM, timestep_condition

    widths = {}
    for on in (False, True):
        engine = adversarial_engine(tmp_path / str(on), tiny_pipeline_dir, name, disc_student_timestep=on, disc_updates=1)
        drawn: list[torch.Tensor] = []

        def spy(*args: Any, drawn: list[torch.Tensor] = drawn, sample: Any = adversarial.sample_student_timesteps) -> torch.Tensor:
            drawn.append(sample(*args))
            return drawn[-1]

        calls = record_conditions(engine)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(adversarial, "sample_student_timesteps", spy)
            torch.manual_seed(0)
            assert engine.step(engine.next_micro()) is not None
        generator = [cond for cond in calls if cond.shape[0] == 2]
        discriminator = [cond for cond in calls if cond.shape[0] == 4]
        assert len(generator) == len(discriminator) == 2 == len(drawn)  # accumulation 2
        widths[on] = generator[0].shape[1]
        if on:
            for t, g, d in zip(drawn, generator, discriminator, strict=True):
                label = timestep_condition(t)
                assert torch.equal(g[:, -TIME_DIM:], label)
                assert torch.equal(d[:, -TIME_DIM:], torch.cat([label, label]))  # reals first, then their fakes
    assert widths[True] == widths[False] + TIME_DIM
