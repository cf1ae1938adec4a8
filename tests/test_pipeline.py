"""The pipeline: conditioning once per image, seeds, shapes, tiling, PIL and tensor inputs."""

import pytest
import torch
from PIL import Image

from derain_cli.card import CascadeCard, ModelCard, SDESettings
from derain_cli.cascade import Cascade
from derain_cli.checkpoints import load_daclip, load_unet
from derain_cli.errors import DerainError, NonFiniteError, UsageError
from derain_cli.pipeline import DerainPipeline, SampleOptions, image_seed
from derain_cli.sde import IRSDE

from tests.conftest import TINY_SDE

FEW = SampleOptions(steps=4, tile=None)


@pytest.fixture(scope="module")
def plain(plain_unet_file):
    return DerainPipeline(load_unet(plain_unet_file), IRSDE(**TINY_SDE))


@pytest.fixture(scope="module")
def conditioned(daclip_model_files):
    unet_path, daclip_path = daclip_model_files
    return DerainPipeline(load_unet(unet_path), IRSDE(), load_daclip(daclip_path))


def test_output_has_the_input_size_for_sizes_off_the_model_multiple(plain):
    lq = torch.rand(1, 3, 37, 53)
    out = plain.restore(lq, FEW)
    assert out.shape == lq.shape
    assert out.min() >= 0 and out.max() <= 1


def test_same_seed_same_output_other_seed_other_output(plain):
    lq = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    a = plain.restore(lq, SampleOptions(steps=4, seed=5, tile=None))
    b = plain.restore(lq, SampleOptions(steps=4, seed=5, tile=None))
    c = plain.restore(lq, SampleOptions(steps=4, seed=6, tile=None))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_daclip_embeddings_are_computed_once_from_the_whole_image(conditioned, monkeypatch):
    calls = []
    original = conditioned.daclip.encode_image

    def spy(images, control=True):
        calls.append((images.shape, control))
        return original(images, control=control)

    monkeypatch.setattr(conditioned.daclip, "encode_image", spy)
    unet_calls = []
    unet_forward = conditioned.unet.forward

    def unet_spy(x, mu, t, text_context=None, image_context=None):
        unet_calls.append((text_context is not None, image_context is not None))
        return unet_forward(x, mu, t, text_context=text_context, image_context=image_context)

    monkeypatch.setattr(conditioned.unet, "forward", unet_spy)
    conditioned.restore(torch.rand(1, 3, 40, 70), SampleOptions(steps=5, tile=48, tile_overlap=8))
    assert calls == [((1, 3, 32, 32), True)]  # the tiny tower's input size
    assert len(unet_calls) > 5 and all(both == (True, True) for both in unet_calls)


def test_conditioning_changes_the_result(conditioned):
    lq = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with_ctx = conditioned.restore(lq, FEW)
    cfg = conditioned.conditioning(lq)
    assert set(cfg) == {"image_context", "text_context"}
    assert cfg["image_context"].shape == (1, 16) and cfg["text_context"].shape == (1, 16)
    zeros = {k: torch.zeros_like(v) for k, v in cfg.items()}
    same = conditioned.sde.sample(conditioned.denoiser, lq, steps=4, generator=torch.Generator().manual_seed(0),
                                  **cfg).clamp(0, 1)
    other = conditioned.sde.sample(conditioned.denoiser, lq, steps=4, generator=torch.Generator().manual_seed(0),
                                   **zeros).clamp(0, 1)
    assert torch.equal(with_ctx, same)
    assert not torch.allclose(with_ctx, other)


def test_a_conditioned_unet_without_daclip_is_refused(daclip_model_files):
    with pytest.raises(DerainError, match="DA-CLIP"):
        DerainPipeline(load_unet(daclip_model_files[0]), IRSDE())


def test_pil_image_in_pil_image_out(plain):
    image = Image.new("RGB", (45, 31), (120, 80, 200))
    out = plain(image, FEW)
    assert isinstance(out, Image.Image) and out.size == (45, 31) and out.mode == "RGB"


def test_tensor_without_batch_dimension(plain):
    out = plain(torch.rand(3, 20, 28), FEW)
    assert out.shape == (3, 20, 28)


def test_tiled_and_untiled_restoration_agree_closely(plain):
    """Tiles differ only where the U-Net's global attention sees less context: a small difference."""
    lq = torch.rand(1, 3, 96, 128, generator=torch.Generator().manual_seed(2))
    whole = plain.restore(lq, SampleOptions(steps=10, tile=None))
    tiled = plain.restore(lq, SampleOptions(steps=10, tile=64, tile_overlap=32))
    diff = (whole - tiled).abs()
    assert diff.mean() < 0.01 and diff.max() < 0.1


def test_auto_tiling_keeps_small_images_whole(plain, monkeypatch):
    import derain_cli.pipeline as pipeline_module

    monkeypatch.setattr(pipeline_module, "free_memory_bytes", lambda device: 10**12)
    assert plain._tile_size("auto", 64, 64) is None
    monkeypatch.setattr(pipeline_module, "free_memory_bytes", lambda device: 8 * 1024**2)
    assert plain._tile_size("auto", 2000, 3000) is not None


def test_images_smaller_than_the_unet_multiple_are_restored(plain):
    out = plain.restore(torch.rand(1, 3, 3, 2), FEW)
    assert out.shape == (1, 3, 3, 2)


def test_a_clean_image_predicting_unet_is_sampled_as_such(plain_unet_file):
    """prediction="x0": the U-Net's output is the clean estimate, so one step returns it as it is."""
    unet = load_unet(plain_unet_file)
    pipeline = DerainPipeline(unet, IRSDE(**TINY_SDE), prediction="x0")
    lq = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    out = pipeline.restore(lq, SampleOptions(steps=1, tile=None))
    x_T = pipeline.sde.noise_state(lq, torch.Generator("cpu").manual_seed(0))
    with torch.no_grad():
        direct = unet(x_T, lq, torch.full((1,), pipeline.sde.T)).clamp(0, 1)
    torch.testing.assert_close(out, direct, atol=1e-5, rtol=0)
    with pytest.raises(DerainError, match="unknown prediction"):
        DerainPipeline(unet, IRSDE(**TINY_SDE), prediction="eps")


def cascade(pipeline: DerainPipeline, passes: int, repeat_above=None, further=None) -> Cascade:
    """``pipeline`` in a cascade of ``passes`` runs (thresholds as a card gives them: a tuple or None)."""
    return Cascade(pipeline, CascadeCard(passes, repeat_above), further)


def test_a_second_pass_runs_the_model_on_its_own_output_rounded_to_8_bits(plain):
    lq = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    once = plain.restore(lq, FEW)
    saved = torch.round(once * 255) / 255
    twice = cascade(plain, 2).restore(lq, FEW)
    assert torch.equal(twice, plain.restore(saved, FEW))
    assert not torch.equal(twice, once)


def test_repeat_above_gives_a_second_pass_only_to_images_the_first_changed_enough(plain):
    lq = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    lq[1] = plain.restore(lq[1:], FEW)[0]  # the second image is close to what the model makes of it
    once = plain.restore(lq, FEW)
    saved = torch.round(once * 255) / 255
    change = (saved - lq).abs().flatten(1).mean(1) * 255
    threshold = float(change.mean())
    assert change[0] > threshold > change[1]
    out = cascade(plain, 2, (threshold,)).restore(lq, FEW)
    assert torch.equal(out[0], plain.restore(saved[:1], FEW)[0])  # a second pass for the first image alone
    assert torch.equal(out[1], once[1])
    never = cascade(plain, 3, (255.0,)).restore(lq, FEW)
    assert torch.equal(never, once)


def _change(after: torch.Tensor, before: torch.Tensor) -> float:
    """Mean absolute change of a pass on the 0-255 scale, of the output as saved."""
    return float((torch.round(after * 255) / 255 - before).abs().mean() * 255)


def test_repeat_above_can_give_each_further_pass_its_own_threshold(plain):
    lq = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    chain, x = [], lq
    for _ in range(3):
        chain.append(plain.restore(x, FEW))
        x = torch.round(chain[-1] * 255) / 255
    first, second = _change(chain[0], lq), _change(chain[1], torch.round(chain[0] * 255) / 255)

    def run(thresholds: tuple[float, ...], passes: int = 3) -> torch.Tensor:
        return cascade(plain, passes, thresholds).restore(lq, FEW)

    assert torch.equal(run((first - 0.01, second + 0.01)), chain[1])  # a second pass, not a third
    assert torch.equal(run((first - 0.01, second - 0.01)), chain[2])  # a third pass too
    assert torch.equal(run((first + 0.01, 0.0)), chain[0])  # no second pass, so no third
    # The last threshold serves every further pass.
    assert torch.equal(run((min(first, second) - 0.01,)), chain[2])


def test_a_repeat_unet_runs_the_further_passes_and_only_those(plain_unet_file):
    from derain_cli.unet import ConditionalUNet

    from tests.conftest import TINY_PLAIN_UNET

    torch.manual_seed(5)
    first, other = load_unet(plain_unet_file), ConditionalUNet(**TINY_PLAIN_UNET)
    alone = DerainPipeline(first, IRSDE(**TINY_SDE))
    second = DerainPipeline(other, IRSDE(**TINY_SDE))
    lq = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    once = alone.restore(lq, FEW)
    saved = torch.round(once * 255) / 255
    twice = second.restore(saved, FEW)
    assert torch.equal(cascade(alone, 2, further=second).restore(lq, FEW), twice)
    assert not torch.equal(twice, alone.restore(saved, FEW))  # the second U-Net made a difference
    thrice = second.restore(torch.round(twice * 255) / 255, FEW)
    assert torch.equal(cascade(alone, 3, further=second).restore(lq, FEW), thrice)


def test_a_repeat_unet_must_take_the_same_conditioning(plain_unet_file, daclip_model_files):
    unet_path, daclip_path = daclip_model_files
    with pytest.raises(DerainError, match="same conditioning"):
        cascade(DerainPipeline(load_unet(unet_path), IRSDE(), load_daclip(daclip_path)), 2,
                further=DerainPipeline(load_unet(plain_unet_file), IRSDE()))
    with pytest.raises(DerainError, match="same SDE and prediction"):
        cascade(DerainPipeline(load_unet(plain_unet_file), IRSDE()), 2,
                further=DerainPipeline(load_unet(plain_unet_file), IRSDE(max_sigma=10)))


def test_the_pipeline_samples_with_its_cards_defaults_and_refuses_what_the_card_does_not_support(plain_unet_file):
    card = ModelCard(sde=SDESettings(**TINY_SDE), sampler="ode", steps=3, samplers=("ode", "sde"), steps_range=(2, 5))
    pipeline = DerainPipeline(load_unet(plain_unet_file), card=card)
    lq = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    default = pipeline.restore(lq, SampleOptions(tile=None))
    assert torch.equal(default, pipeline.restore(lq, SampleOptions(steps=3, sampler="ode", tile=None)))
    assert pipeline.options() == SampleOptions(steps=3, sampler="ode")
    for bad, message in (({"steps": 6}, "--steps 6: this model supports 2..5 steps"),
                         ({"sampler": "posterior"}, "--sampler posterior: this model supports ode, sde")):
        with pytest.raises(UsageError, match=message):
            pipeline.restore(lq, SampleOptions(tile=None, **bad))
    with pytest.raises(ValueError, match="either a card or sde"):
        DerainPipeline(load_unet(plain_unet_file), IRSDE(), card=card)


def test_each_image_of_a_batch_gets_what_it_gets_alone_with_its_image_seed(plain):
    lq = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    lq[2] = lq[1]  # the same picture at two positions still gets two noise draws
    batch = plain.restore(lq, SampleOptions(steps=4, seed=7, tile=None))
    for i in range(3):
        alone = plain.restore(lq[i:i + 1], SampleOptions(steps=4, seed=image_seed(7, i), tile=None))
        torch.testing.assert_close(batch[i], alone[0], atol=1e-5, rtol=0)  # batched convolutions round differently
    assert not torch.allclose(batch[1], batch[2])
    assert image_seed(7, 0) == 7 and len({image_seed(7, i) for i in range(3)} | {image_seed(8, 1)}) == 4


def test_the_first_image_of_a_batch_draws_the_noise_of_a_generator_seeded_with_the_seed(plain):
    lq = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    seen = []
    original = plain.sde.noise_state

    def spy(mu, generator=None):
        state = original(mu, generator)
        seen.append(state)
        return state

    plain.sde.noise_state = spy
    try:
        plain.restore(lq, SampleOptions(steps=1, seed=11, tile=None))
    finally:
        del plain.sde.noise_state
    want = lq[:1] + torch.randn((1, 3, 16, 16), generator=torch.Generator().manual_seed(11)) * plain.sde.max_sigma
    assert torch.equal(seen[0][:1], want)


def test_a_further_pass_on_some_images_of_a_batch_keeps_each_images_seed(plain):
    lq = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    lq[0] = plain.restore(lq[:1], FEW)[0]  # the model hardly changes the first image: one pass only
    once = plain.restore(lq, FEW)
    change = (torch.round(once * 255) / 255 - lq).abs().flatten(1).mean(1) * 255
    threshold = float(change[0] + change[1:].min()) / 2
    assert change[0] < threshold < change[1:].min()
    options = SampleOptions(steps=4, seed=9, tile=None)
    model = cascade(plain, 2, (threshold,))
    batch = model.restore(lq, options)
    for i in range(3):
        alone = model.restore(lq[i:i + 1], SampleOptions(steps=4, seed=image_seed(9, i), tile=None))
        torch.testing.assert_close(batch[i], alone[0], atol=1e-5, rtol=0)  # batched convolutions round differently


def test_a_non_finite_sampler_result_is_a_derain_error_naming_the_sampler_and_steps(plain, monkeypatch):
    monkeypatch.setattr(plain, "denoiser", lambda x, mu, t, **context: torch.full_like(x, float("nan")))
    with pytest.raises(NonFiniteError, match="posterior sampler at 4 step"):
        plain.restore(torch.rand(1, 3, 16, 16), FEW)
    assert issubclass(NonFiniteError, DerainError)


def test_fp16_on_the_cpu_warns_that_it_is_slow(plain_unet_file):
    with pytest.warns(UserWarning, match="fp16 on the CPU"):
        DerainPipeline(load_unet(plain_unet_file), IRSDE(**TINY_SDE), dtype=torch.float16)


def test_images_with_a_side_below_the_minimum_are_sampled_edge_padded_and_cropped_back(plain):
    lq = torch.rand(1, 3, 3, 20, generator=torch.Generator().manual_seed(6))
    side = plain.min_side
    assert side == 2 ** (plain.unet.depth + 1)
    padded = torch.nn.functional.pad(lq, (0, 0, 0, side - 3), mode="replicate")
    torch.testing.assert_close(plain.restore(lq, FEW), plain.restore(padded, FEW)[..., :3, :], atol=1e-6, rtol=0)


def test_a_model_working_in_tiles_warns_about_images_many_tiles_wide(plain_unet_file):
    import warnings

    from derain_cli.pipeline import LARGE_IMAGE_TILES

    card = ModelCard(sde=SDESettings(**TINY_SDE), tile=64)
    pipeline = DerainPipeline(load_unet(plain_unet_file), card=card)
    options = SampleOptions(steps=1, tile=None)
    with pytest.warns(UserWarning, match=f"{LARGE_IMAGE_TILES * 64 + 16}x16 is more than"):
        pipeline.restore(torch.rand(1, 3, 16, LARGE_IMAGE_TILES * 64 + 16), options)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipeline.restore(torch.rand(1, 3, 16, LARGE_IMAGE_TILES * 64), options)
