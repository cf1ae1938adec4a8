"""Model options to restorers: the card beside a checkpoint, SDE flags for bare files, manifest models."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from derain_cli.card import DEFAULT_SDE
from derain_cli.cascade import Cascade
from derain_cli.errors import CardError, DerainError, UsageError
from derain_cli.pipeline import DerainPipeline
from derain_cli.resolve import ModelSpec, load


def _copy(plain_unet_file, tmp_path, card=None):
    """The tiny U-Net as m.safetensors (weights only), with ``card`` (a dict) as m.json beside it, or none."""
    copy = tmp_path / "m.safetensors"
    save_file(load_file(plain_unet_file), copy)  # without the config derain embeds in the files it writes
    if card is not None:
        copy.with_suffix(".json").write_text(json.dumps(card))
    return copy


def test_sde_settings_come_from_the_json_beside_the_checkpoint(plain_unet_file):
    loaded = load(ModelSpec(unet=plain_unet_file), device="cpu")
    assert loaded.restorer.sde.config["max_sigma"] == 10


def test_bare_files_get_the_universal_defaults_which_the_sde_flags_change(plain_unet_file, tmp_path):
    bare = _copy(plain_unet_file, tmp_path)
    assert load(ModelSpec(unet=bare), device="cpu").restorer.sde.config == DEFAULT_SDE
    loaded = load(ModelSpec(unet=bare, max_sigma=30, schedule="linear"), device="cpu")
    assert loaded.restorer.sde.config == {**DEFAULT_SDE, "max_sigma": 30, "schedule": "linear"}


def test_sde_flags_are_refused_where_a_card_sets_the_sde(plain_unet_file):
    with pytest.raises(UsageError, match="--max-sigma: plain.json beside the checkpoint sets the SDE"):
        load(ModelSpec(unet=plain_unet_file, max_sigma=30), device="cpu")
    with pytest.raises(UsageError, match="are for a bare --unet file"):
        load(ModelSpec(model="compact", eps=0.01), device="cpu")


def test_default_steps_sampler_tile_and_passes_come_from_the_card(plain_unet_file, tmp_path):
    sde = {**DEFAULT_SDE, "max_sigma": 10}
    copy = _copy(plain_unet_file, tmp_path, {"sde": sde, "steps": 7, "sampler": "ode"})
    pipeline = load(ModelSpec(unet=copy), device="cpu").restorer
    assert isinstance(pipeline, DerainPipeline)
    assert (pipeline.card.steps, pipeline.card.sampler, pipeline.prediction) == (7, "ode", "noise")
    assert pipeline.options().steps == 7 and pipeline.options().sampler == "ode"
    _copy(plain_unet_file, tmp_path, {"prediction": "x0", "passes": 2, "repeat_above": 9.5, "tile": 96})
    cascade = load(ModelSpec(unet=copy), device="cpu").restorer
    assert isinstance(cascade, Cascade)
    assert cascade.first.prediction == "x0" and cascade.card.tile == 96
    assert (cascade.cascade.passes, cascade.cascade.repeat_above) == (2, (9.5,))
    _copy(plain_unet_file, tmp_path, {"passes": 3, "repeat_above": [23.4, 11]})
    cascade = load(ModelSpec(unet=copy), device="cpu").restorer
    assert cascade.cascade.repeat_above == (23.4, 11.0) and cascade.cascade.threshold(2) == 11.0
    assert isinstance(load(ModelSpec(unet=copy), device="cpu", passes=1).restorer, DerainPipeline)
    forced = load(ModelSpec(unet=copy), device="cpu", passes=2).restorer
    assert (forced.cascade.passes, forced.cascade.repeat_above) == (2, None)  # every image, no thresholds


def test_the_card_can_name_a_unet_for_the_further_passes_beside_it(plain_unet_file, tmp_path):
    second = tmp_path / "m_repeat.safetensors"
    copy = _copy(plain_unet_file, tmp_path, {"passes": 2, "repeat_unet": "m_repeat.safetensors"})
    with pytest.raises(DerainError, match=r"m_repeat\.safetensors: no such checkpoint file \(named by m\.json"):
        load(ModelSpec(unet=copy), device="cpu")
    second.write_bytes(plain_unet_file.read_bytes())
    cascade = load(ModelSpec(unet=copy), device="cpu").restorer
    assert cascade.further is not cascade.first and cascade.further.unet is not cascade.first.unet
    for bad, message in (("../m_repeat.safetensors", "must be the name of a file beside it"),
                         ("", "must name the further passes' weights"), (3, "must name the further passes' weights")):
        _copy(plain_unet_file, tmp_path, {"passes": 2, "repeat_unet": bad})
        with pytest.raises(CardError, match=rf"m\.json: 'repeat_unet' {message}"):
            load(ModelSpec(unet=copy), device="cpu")
    _copy(plain_unet_file, tmp_path, {})
    assert isinstance(load(ModelSpec(unet=copy), device="cpu").restorer, DerainPipeline)


def test_precision_auto_uses_the_precision_the_model_asks_for(plain_unet_file, tmp_path):
    copy = _copy(plain_unet_file, tmp_path)
    assert load(ModelSpec(unet=copy), device="cpu").restorer.dtype == torch.float32  # auto on a CPU
    _copy(plain_unet_file, tmp_path, {"precision": "bf16"})
    assert load(ModelSpec(unet=copy), device="cpu").restorer.dtype == torch.bfloat16
    assert load(ModelSpec(unet=copy), device="cpu", precision="fp32").restorer.dtype == torch.float32  # a flag wins
    _copy(plain_unet_file, tmp_path, {"precision": "half"})
    with pytest.raises(DerainError, match=r"m\.json: 'precision' must be one of fp32, bf16, fp16 or null, got 'half'"):
        load(ModelSpec(unet=copy), device="cpu")


@pytest.mark.parametrize(("card", "message"), [
    ({"stpes": 4}, r"m\.json: unknown key 'stpes' \(did you mean 'steps'\?\); valid keys: \["),
    ({"sde": {**DEFAULT_SDE, "shedule": "cosine"}}, r"m\.json sde: unknown key 'shedule' \(did you mean 'schedule'\?\)"),
    ({"sampler": "euler"}, r"m\.json: 'sampler' is 'euler'; choose from \['posterior', 'sde', 'ode'"),
    ({"sde": {**DEFAULT_SDE, "schedule": "cosin"}}, r"m\.json sde: 'schedule' is 'cosin'; choose from \['cosine'"),
    ({"tile": 8}, r"m\.json: 'tile' must be a tile size of at least 64 pixels or null, got 8"),
    ({"steps_range": [1, 500]}, r"m\.json: 'steps_range' must be \[lowest, highest\] step counts within 1..T \(100\)"),
    ({"steps": 50, "steps_range": [1, 10]}, r"m\.json: the default sampler 'posterior' at 50 steps is outside"),
    ({"samplers": ["ode"]}, r"m\.json: the default sampler 'posterior' at 100 steps is outside"),
    ("{broken", r"m\.json: cannot read the config beside the checkpoint"),
])
def test_a_bad_card_beside_a_checkpoint_is_one_line_naming_the_file_and_the_key(plain_unet_file, tmp_path, card, message):
    copy = _copy(plain_unet_file, tmp_path)
    copy.with_suffix(".json").write_text(card if isinstance(card, str) else json.dumps(card))
    with pytest.raises(CardError, match=message) as caught:
        load(ModelSpec(unet=copy), device="cpu")
    assert "\n" not in str(caught.value)


def test_steps_outside_the_cards_range_are_refused_before_any_weights_are_read(plain_unet_file, tmp_path):
    copy = _copy(plain_unet_file, tmp_path, {"steps_range": [1, 4], "steps": 2})
    copy.write_bytes(b"not a checkpoint: reading it would fail differently")
    with pytest.raises(UsageError, match=r"--steps 9: this model supports 1..4 steps"):
        load(ModelSpec(unet=copy), device="cpu", steps=9)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(DerainError, match="no such checkpoint"):
        load(ModelSpec(unet=tmp_path / "nope.pth"), device="cpu")
