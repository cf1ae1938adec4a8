"""Model options to pipelines: config beside a checkpoint, flags overriding it, manifest models."""

import json

import pytest
import torch

from derain_cli.errors import DerainError
from derain_cli.resolve import DEFAULT_SDE, ModelSpec, load


def test_sde_settings_come_from_the_json_beside_the_checkpoint(plain_unet_file):
    loaded = load(ModelSpec(unet=plain_unet_file), device="cpu")
    assert loaded.pipeline.sde.config["max_sigma"] == 10


def test_flags_override_the_json_and_bare_files_get_the_universal_defaults(plain_unet_file, tmp_path):
    loaded = load(ModelSpec(unet=plain_unet_file, max_sigma=30, schedule="linear"), device="cpu")
    assert loaded.pipeline.sde.config == {**DEFAULT_SDE, "max_sigma": 30, "schedule": "linear"}
    bare = tmp_path / "bare.safetensors"
    bare.write_bytes(plain_unet_file.read_bytes())
    assert load(ModelSpec(unet=bare), device="cpu").pipeline.sde.config == DEFAULT_SDE


def test_default_steps_and_sampler_come_from_the_sidecar(plain_unet_file, tmp_path):
    copy = tmp_path / "m.safetensors"
    copy.write_bytes(plain_unet_file.read_bytes())
    copy.with_suffix(".json").write_text(json.dumps({"sde": {"max_sigma": 10}, "steps": 7, "sampler": "ode"}))
    loaded = load(ModelSpec(unet=copy), device="cpu")
    assert (loaded.steps, loaded.sampler) == (7, "ode")
    assert loaded.pipeline.prediction == "noise"
    assert (loaded.passes, loaded.repeat_above, loaded.tile) == (1, None, None)
    copy.with_suffix(".json").write_text(json.dumps({"prediction": "x0", "passes": 2, "repeat_above": 9.5, "tile": 96}))
    loaded = load(ModelSpec(unet=copy), device="cpu")
    assert loaded.pipeline.prediction == "x0"
    assert (loaded.passes, loaded.repeat_above, loaded.tile) == (2, 9.5, 96)
    copy.with_suffix(".json").write_text(json.dumps({"passes": 3, "repeat_above": [23.4, 11]}))
    loaded = load(ModelSpec(unet=copy), device="cpu")
    assert (loaded.passes, loaded.repeat_above) == (3, (23.4, 11.0))  # one threshold per further pass
    assert loaded.options().repeat_threshold(2) == 11.0


def test_the_sidecar_can_name_a_unet_for_the_further_passes_beside_it(plain_unet_file, tmp_path):
    copy, second = tmp_path / "m.safetensors", tmp_path / "m_repeat.safetensors"
    copy.write_bytes(plain_unet_file.read_bytes())
    copy.with_suffix(".json").write_text(json.dumps({"passes": 2, "repeat_unet": "m_repeat.safetensors"}))
    with pytest.raises(DerainError, match=r"m_repeat\.safetensors: no such checkpoint file \(named by m\.json"):
        load(ModelSpec(unet=copy), device="cpu")
    second.write_bytes(plain_unet_file.read_bytes())
    loaded = load(ModelSpec(unet=copy), device="cpu")
    assert loaded.pipeline.repeat_unet is not None and loaded.pipeline.repeat_unet is not loaded.pipeline.unet
    for bad in ("../m_repeat.safetensors", "", 3):
        copy.with_suffix(".json").write_text(json.dumps({"repeat_unet": bad}))
        with pytest.raises(DerainError, match=r"m\.json: 'repeat_unet' must be the name of a file beside it"):
            load(ModelSpec(unet=copy), device="cpu")
    copy.with_suffix(".json").write_text("{}")
    assert load(ModelSpec(unet=copy), device="cpu").pipeline.repeat_unet is None


def test_precision_auto_uses_the_precision_the_model_asks_for(plain_unet_file, tmp_path):
    copy = tmp_path / "m.safetensors"
    copy.write_bytes(plain_unet_file.read_bytes())
    assert load(ModelSpec(unet=copy), device="cpu").pipeline.dtype == torch.float32  # auto on a CPU
    copy.with_suffix(".json").write_text(json.dumps({"precision": "bf16"}))
    assert load(ModelSpec(unet=copy), device="cpu").pipeline.dtype == torch.bfloat16
    assert load(ModelSpec(unet=copy), device="cpu", precision="fp32").pipeline.dtype == torch.float32  # a flag wins
    copy.with_suffix(".json").write_text(json.dumps({"precision": "half"}))
    with pytest.raises(DerainError, match=r"m\.json: 'precision' must be one of fp32, bf16, fp16 or null, got 'half'"):
        load(ModelSpec(unet=copy), device="cpu")


def test_missing_checkpoint_and_bad_sidecar_are_clear_errors(plain_unet_file, tmp_path):
    with pytest.raises(DerainError, match="no such checkpoint"):
        load(ModelSpec(unet=tmp_path / "nope.pth"), device="cpu")
    copy = tmp_path / "m.safetensors"
    copy.write_bytes(plain_unet_file.read_bytes())
    copy.with_suffix(".json").write_text("{broken")
    with pytest.raises(DerainError, match="m.json"):
        load(ModelSpec(unet=copy), device="cpu")
    copy.with_suffix(".json").write_text(json.dumps({"tile": 8}))
    with pytest.raises(DerainError, match=r"m\.json: 'tile' must be a tile size of at least 64 pixels or null, got 8"):
        load(ModelSpec(unet=copy), device="cpu")
