"""Checkpoint reading and loading: every official on-disk format, strictness, and refusal of unsafe pickles."""

from __future__ import annotations

import json
import os
import pickle
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from derain_cli.checkpoints import (
    CONFIG_METADATA_KEY,
    convert_checkpoint,
    load_daclip,
    load_strict,
    load_unet,
    read_config,
    read_state_dict,
    save_safetensors,
    with_visual_alias,
)
from derain_cli.daclip import DACLIP, infer_daclip_config
from derain_cli.errors import CardError, CheckpointError, UsageError
from derain_cli.unet import ConditionalUNet, infer_unet_config
from tests.writers import (
    pickle_globals,
    write_malicious_pickle,
    write_module_prefixed_pickle,
    write_plain_pickle,
    write_safetensors,
    write_training_checkpoint,
)

LAYOUTS = Path(__file__).resolve().parents[2] / "shared" / "reference" / "official_checkpoint_layouts.json"
TINY_UNET = {"nf": 32, "ch_mult": [1, 2], "context_dim": 16, "use_degra_context": True, "use_image_context": True}
TINY_DACLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "patch_size": 16, "width": 64, "layers": 2, "head_width": 64},
    "text_cfg": {"context_length": 8, "vocab_size": 50, "width": 64, "heads": 1, "layers": 1},
}
Writer = Callable[[dict, Path], Path]
OFFICIAL_WRITERS: dict[str, Writer] = {
    "plain": write_plain_pickle,
    "module_prefix": write_module_prefixed_pickle,
    "training_numpy1": write_training_checkpoint,
    "training_numpy2": lambda sd, path: write_training_checkpoint(sd, path, numpy_names="2.x"),
    "safetensors": write_safetensors,
}


def random_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A small state dict with float, integer and scalar entries."""
    g = torch.Generator().manual_seed(seed)
    return {
        "conv.weight": torch.randn(4, 3, 3, 3, generator=g),
        "conv.bias": torch.randn(4, generator=g),
        "norm.num_batches_tracked": torch.tensor(7),
        "logit_scale": torch.randn((), generator=g),
    }


def assert_same_tensors(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Same keys, and every tensor equal in dtype, shape and value."""
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        assert actual[key].dtype == value.dtype, key
        assert torch.equal(actual[key], value), key


@pytest.fixture(scope="module")
def tiny_unet() -> ConditionalUNet:
    """A U-Net with both DA-CLIP conditionings, small enough to save in milliseconds."""
    torch.manual_seed(0)
    return ConditionalUNet(**TINY_UNET).eval()


@pytest.fixture(scope="module")
def tiny_daclip() -> DACLIP:
    """A DA-CLIP ViT with random (not zero) controller weights, so that every tensor is distinguishable."""
    torch.manual_seed(0)
    model = DACLIP(**TINY_DACLIP).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(std=0.02)
    return model


# --- reading each on-disk format -------------------------------------------------------------------


@pytest.mark.parametrize("fmt", sorted(OFFICIAL_WRITERS))
def test_every_official_format_reads_back_the_same_tensors(tmp_path: Path, fmt: str) -> None:
    state_dict = random_state_dict()
    path = OFFICIAL_WRITERS[fmt](state_dict, tmp_path / "weights.bin")
    assert_same_tensors(read_state_dict(path), state_dict)


def test_legacy_non_zip_torch_save_file_reads_back(tmp_path: Path) -> None:
    state_dict = random_state_dict()
    torch.save(state_dict, tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    assert_same_tensors(read_state_dict(tmp_path / "old.pth"), state_dict)


def test_module_prefix_is_stripped_from_every_key(tmp_path: Path) -> None:
    path = write_module_prefixed_pickle(random_state_dict(), tmp_path / "ddp.pth")
    assert "module.conv.weight" in torch.load(path, weights_only=True)
    assert sorted(read_state_dict(path)) == sorted(random_state_dict())


def test_key_stored_with_and_without_module_prefix_is_an_error(tmp_path: Path) -> None:
    torch.save({"module.w": torch.zeros(1), "w": torch.ones(1)}, tmp_path / "both.pth")
    with pytest.raises(CheckpointError, match="'w'.*both with and without"):
        read_state_dict(tmp_path / "both.pth")


def test_training_checkpoint_fixture_names_exactly_the_numpy1_globals(tmp_path: Path) -> None:
    path = write_training_checkpoint(random_state_dict(), tmp_path / "daclip.pt")
    non_torch = {name for name in pickle_globals(path) if not name.startswith("torch.")}
    assert non_torch == {"collections.OrderedDict", "numpy.core.multiarray.scalar", "numpy.dtype", "_codecs.encode"}


def test_training_checkpoint_with_numpy_scalars_is_unwrapped_to_its_state_dict(tmp_path: Path) -> None:
    state_dict = random_state_dict()
    path = write_training_checkpoint(state_dict, tmp_path / "daclip.pt")
    with pytest.raises(pickle.UnpicklingError, match="numpy"):  # torch's default allowlist alone refuses it
        torch.load(path, weights_only=True)
    assert_same_tensors(read_state_dict(path), state_dict)


def test_safetensors_content_is_recognised_whatever_the_suffix(tmp_path: Path) -> None:
    state_dict = random_state_dict()
    path = write_safetensors(state_dict, tmp_path / "weights.pth")
    assert_same_tensors(read_state_dict(path), state_dict)


# --- refusing unsafe and damaged files --------------------------------------------------------------


@pytest.mark.parametrize("legacy_format", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("payload", ["os.system", "exec"])
def test_pickle_that_would_run_code_is_refused_and_its_payload_never_runs(
    tmp_path: Path, payload: str, legacy_format: bool
) -> None:
    marker = tmp_path / "payload_ran"
    path = write_malicious_pickle(tmp_path / "evil.pth", marker, payload=payload, legacy_format=legacy_format)
    with pytest.raises(CheckpointError) as caught:
        read_state_dict(path)
    message = str(caught.value)
    assert str(path) in message and "refused as unsafe" in message and "\n" not in message
    assert ("system" if payload == "os.system" else "exec") in message
    assert not marker.exists()


def test_malicious_fixture_really_runs_its_payload_when_unpickled_unsafely(tmp_path: Path) -> None:
    marker = tmp_path / "payload_ran"
    path = write_malicious_pickle(tmp_path / "evil.pth", marker, payload="exec")
    torch.load(path, weights_only=False)  # what the reference's torch.load(path) would do
    assert marker.exists()


def test_missing_file_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"nope\.pth: no such checkpoint file"):
        read_state_dict(tmp_path / "nope.pth")


def _truncate(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _corrupt_pickle(path: Path) -> Path:
    data = bytearray(path.read_bytes())
    start = data.index(b"data.pkl") + 60  # inside the pickle record, past the zip entry header
    data[start : start + 16] = b"\xff" * 16
    path.write_bytes(bytes(data))
    return path


def _legacy(state_dict: dict, path: Path) -> Path:
    torch.save(state_dict, path, _use_new_zipfile_serialization=False)
    return path


DAMAGES: dict[str, Callable[[Path], Path]] = {
    "truncated zip": lambda tmp: _truncate(write_plain_pickle(random_state_dict(), tmp / "a.pth")),
    "truncated legacy": lambda tmp: _truncate(_legacy(random_state_dict(), tmp / "a.pth")),
    "truncated safetensors": lambda tmp: _truncate(write_safetensors(random_state_dict(), tmp / "a.safetensors")),
    "corrupt pickle": lambda tmp: _corrupt_pickle(write_plain_pickle(random_state_dict(), tmp / "a.pth")),
    "text file": lambda tmp: (tmp / "a.pth", (tmp / "a.pth").write_text("not weights"))[0],
    "empty file": lambda tmp: (tmp / "a.pth", (tmp / "a.pth").write_bytes(b""))[0],
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_file_is_a_one_line_error_naming_it(tmp_path: Path, damage: str) -> None:
    path = DAMAGES[damage](tmp_path)
    with pytest.raises(CheckpointError) as caught:
        read_state_dict(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert "truncated" in message and "unsafe" not in message


def test_pickle_of_something_else_than_a_dict_is_not_a_state_dict(tmp_path: Path) -> None:
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="not a state dict.*list"):
        read_state_dict(tmp_path / "list.pth")


def test_non_tensor_entries_are_an_error_naming_them(tmp_path: Path) -> None:
    torch.save({"w": torch.zeros(1), "step": 3, "note": "hi"}, tmp_path / "mixed.pth")
    with pytest.raises(CheckpointError, match=r"2 entries \('step', 'note'\) are not tensors"):
        read_state_dict(tmp_path / "mixed.pth")


# --- strict loading -------------------------------------------------------------------------------


def test_load_strict_names_missing_and_unexpected_keys_with_counts() -> None:
    model = torch.nn.Sequential(*[torch.nn.Linear(2, 2) for _ in range(4)])
    state_dict = dict(model.state_dict())
    for key in ("0.weight", "0.bias", "1.weight", "1.bias", "2.weight", "2.bias"):
        del state_dict[key]
    state_dict["extra.weight"] = torch.zeros(2)
    with pytest.raises(CheckpointError) as caught:
        load_strict(model, state_dict, "tiny.pth")
    message = str(caught.value)
    assert message.startswith("tiny.pth: does not fit Sequential")
    assert "6 keys (0.weight, 0.bias, 1.weight, 1.bias, 2.weight, ...) missing" in message
    assert "1 key (extra.weight) unexpected" in message


def test_load_strict_names_shape_mismatches() -> None:
    model = torch.nn.Linear(3, 2)
    state_dict = {"weight": torch.zeros(2, 4), "bias": torch.zeros(2)}
    with pytest.raises(CheckpointError, match=r"weight: file \[2, 4\] vs model \[2, 3\]"):
        load_strict(model, state_dict, "tiny.pth")


def test_load_strict_copies_values_when_everything_fits() -> None:
    model, source = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    load_strict(model, source.state_dict(), "tiny.pth")
    assert_same_tensors(model.state_dict(), source.state_dict())


# --- building models from files -------------------------------------------------------------------


@pytest.mark.parametrize("fmt", sorted(OFFICIAL_WRITERS))
def test_load_unet_rebuilds_the_architecture_and_weights_from_every_format(
    tmp_path: Path, tiny_unet: ConditionalUNet, fmt: str
) -> None:
    path = OFFICIAL_WRITERS[fmt](tiny_unet.state_dict(), tmp_path / "unet.bin")
    loaded = load_unet(path)
    assert loaded.config == tiny_unet.config and not loaded.training
    assert_same_tensors(loaded.state_dict(), tiny_unet.state_dict())


def test_load_unet_rebuilds_the_plain_irsde_unet_without_context(tmp_path: Path) -> None:
    torch.manual_seed(0)
    plain = ConditionalUNet(nf=8, ch_mult=[1, 2, 2], context_dim=None, use_degra_context=False)
    loaded = load_unet(write_plain_pickle(plain.state_dict(), tmp_path / "irsde.pth"))
    assert loaded.config == plain.config
    assert_same_tensors(loaded.state_dict(), plain.state_dict())


def test_load_unet_refuses_a_daclip_file_saying_what_it_is(tmp_path: Path, tiny_daclip: DACLIP) -> None:
    path = write_training_checkpoint(tiny_daclip.state_dict(), tmp_path / "daclip.pt")
    with pytest.raises(CheckpointError, match=r"daclip\.pt: not a ConditionalUNet state dict"):
        load_unet(path)


def test_load_unet_with_a_missing_tensor_names_it(tmp_path: Path, tiny_unet: ConditionalUNet) -> None:
    state_dict = {key: value for key, value in tiny_unet.state_dict().items() if key != "mid_block1.mlp.1.bias"}
    with pytest.raises(CheckpointError, match=r"1 key \(mid_block1\.mlp\.1\.bias\) missing"):
        load_unet(write_plain_pickle(state_dict, tmp_path / "unet.pth"))


@pytest.mark.parametrize("fmt", ["training_numpy1", "plain", "safetensors"])
def test_load_daclip_rebuilds_the_architecture_and_weights(tmp_path: Path, tiny_daclip: DACLIP, fmt: str) -> None:
    path = OFFICIAL_WRITERS[fmt](tiny_daclip.state_dict(), tmp_path / "daclip.bin")
    loaded = load_daclip(path)
    assert not loaded.training and loaded.visual is loaded.clip.visual
    assert_same_tensors(loaded.state_dict(), tiny_daclip.state_dict())


def test_daclip_file_without_visual_alias_keys_gets_them_from_clip_visual(
    tmp_path: Path, tiny_daclip: DACLIP
) -> None:
    state_dict = {k: v for k, v in tiny_daclip.state_dict().items() if not k.startswith("visual.")}
    loaded = load_daclip(write_safetensors(state_dict, tmp_path / "daclip.safetensors"))
    assert_same_tensors(loaded.state_dict(), tiny_daclip.state_dict())


def test_daclip_file_whose_visual_alias_differs_from_clip_visual_is_an_error(
    tmp_path: Path, tiny_daclip: DACLIP
) -> None:
    state_dict = {key: value.clone() for key, value in tiny_daclip.state_dict().items()}
    state_dict["visual.proj"] += 1
    with pytest.raises(CheckpointError, match=r"visual\.proj differs from clip\.visual\.proj"):
        load_daclip(write_safetensors(state_dict, tmp_path / "daclip.safetensors"))


def test_with_visual_alias_fills_clip_visual_from_a_lone_visual_copy() -> None:
    completed = with_visual_alias({"visual.proj": torch.ones(2), "logit_scale": torch.zeros(())}, "x.pt")
    assert sorted(completed) == ["clip.visual.proj", "logit_scale", "visual.proj"]


# --- writing safetensors ------------------------------------------------------------------------------


def test_save_safetensors_stores_the_daclip_alias_once_and_loads_back(tmp_path: Path, tiny_daclip: DACLIP) -> None:
    path = tmp_path / "out" / "daclip.safetensors"
    save_safetensors(tiny_daclip.state_dict(), path, config=TINY_DACLIP)
    stored = load_file(path)
    assert "clip.visual.proj" in stored and not any(key.startswith("visual.") for key in stored)
    assert json.loads(path.with_suffix(".json").read_text()) == TINY_DACLIP
    assert_same_tensors(load_daclip(path).state_dict(), tiny_daclip.state_dict())


def test_save_safetensors_round_trips_a_unet_without_config(tmp_path: Path, tiny_unet: ConditionalUNet) -> None:
    path = tmp_path / "unet.safetensors"
    save_safetensors(tiny_unet.state_dict(), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unet.safetensors"]  # no config, no leftovers
    assert_same_tensors(load_unet(path).state_dict(), tiny_unet.state_dict())


def test_saved_weights_get_the_usual_file_permissions(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        save_safetensors({"w": torch.ones(2)}, tmp_path / "w.safetensors")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "w.safetensors").stat().st_mode) == 0o644


def test_save_safetensors_casts_floats_only_and_handles_views(tmp_path: Path) -> None:
    base = torch.arange(12.0).reshape(3, 4)
    state_dict = {"t": base.t(), "row": base[1], "steps": torch.tensor([3, 4])}
    save_safetensors(state_dict, tmp_path / "half.safetensors", dtype=torch.float16)
    stored = read_state_dict(tmp_path / "half.safetensors")
    assert stored["t"].dtype == torch.float16 and stored["steps"].dtype == torch.int64
    assert torch.equal(stored["t"].float(), base.t()) and torch.equal(stored["row"].float(), base[1])
    assert torch.equal(stored["steps"], state_dict["steps"])


def test_convert_turns_a_daclip_training_checkpoint_into_safetensors_and_config(
    tmp_path: Path, tiny_daclip: DACLIP
) -> None:
    source = write_training_checkpoint(tiny_daclip.state_dict(), tmp_path / "daclip.pt")
    converted = convert_checkpoint(source, tmp_path / "daclip.safetensors")
    config_path = tmp_path / "daclip.json"
    assert converted.kind == "daclip" and converted.files == (tmp_path / "daclip.safetensors", config_path)
    assert json.loads(config_path.read_text()) == {"daclip": infer_daclip_config(tiny_daclip.state_dict())}
    assert not any(key.startswith("visual.") for key in load_file(tmp_path / "daclip.safetensors"))
    assert_same_tensors(load_daclip(tmp_path / "daclip.safetensors").state_dict(), tiny_daclip.state_dict())


def test_convert_fp16_unet_stores_half_floats_that_load_back(tmp_path: Path, tiny_unet: ConditionalUNet) -> None:
    source = write_module_prefixed_pickle(tiny_unet.state_dict(), tmp_path / "unet.pth")
    converted = convert_checkpoint(source, tmp_path / "unet.safetensors", fp16=True)
    assert converted.kind == "unet" and json.loads(converted.files[1].read_text()) == {"unet": tiny_unet.config}
    assert {value.dtype for value in load_file(tmp_path / "unet.safetensors").values()} == {torch.float16}
    halved = {key: value.half().float() for key, value in tiny_unet.state_dict().items()}
    assert_same_tensors(load_unet(tmp_path / "unet.safetensors").state_dict(), halved)


def test_convert_refuses_an_incomplete_checkpoint_and_writes_nothing(tmp_path: Path, tiny_unet: ConditionalUNet) -> None:
    state_dict = {key: value for key, value in tiny_unet.state_dict().items() if key != "final_conv.bias"}
    source = write_plain_pickle(state_dict, tmp_path / "unet.pth")
    with pytest.raises(CheckpointError, match=r"1 key \(final_conv\.bias\) missing"):
        convert_checkpoint(source, tmp_path / "unet.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unet.pth"]


CARD = {"sde": {"max_sigma": 10, "T": 100, "schedule": "cosine", "eps": 0.005}, "prediction": "x0", "steps": 1,
        "sampler": "posterior", "tile": 64, "passes": 2, "repeat_above": 3.5, "precision": "fp32"}


def test_save_safetensors_embeds_the_config_so_the_file_carries_it_without_its_json(
    tmp_path: Path, tiny_unet: ConditionalUNet
) -> None:
    path = tmp_path / "unet.safetensors"
    config = {**CARD, "unet": tiny_unet.config}
    save_safetensors(tiny_unet.state_dict(), path, config)
    with safe_open(path, framework="pt") as file:
        assert json.loads(file.metadata()[CONFIG_METADATA_KEY]) == config
    assert read_config(path) == (config, str(path.with_suffix(".json")))  # the JSON beside wins
    path.with_suffix(".json").unlink()
    assert read_config(path) == (config, f"{path} (embedded config)")
    save_safetensors(tiny_unet.state_dict(), path)
    assert read_config(path) == (None, "")  # a bare file


def test_saving_the_same_weights_and_config_twice_gives_identical_files(tmp_path: Path, tiny_unet: ConditionalUNet) -> None:
    config = {**CARD, "unet": tiny_unet.config, "training": {"step": 3}}
    for name in ("a", "b", "c"):
        save_safetensors(tiny_unet.state_dict(), tmp_path / f"{name}.safetensors", config)
    data = {(tmp_path / f"{name}.safetensors").read_bytes() for name in ("a", "b", "c")}
    assert len(data) == 1


def test_convert_copies_the_card_of_the_source_into_the_json_and_the_file(
    tmp_path: Path, tiny_unet: ConditionalUNet
) -> None:
    source = write_plain_pickle(tiny_unet.state_dict(), tmp_path / "model.pth")
    source.with_suffix(".json").write_text(json.dumps({**CARD, "training": {"step": 5}}))
    converted = convert_checkpoint(source, tmp_path / "out" / "x.safetensors")
    expected = {**CARD, "training": {"step": 5}, "unet": tiny_unet.config}
    assert json.loads(converted.files[1].read_text()) == expected
    converted.files[1].unlink()
    assert read_config(converted.files[0])[0] == expected


def test_convert_brings_the_further_passes_unet_the_card_names(tmp_path: Path, tiny_unet: ConditionalUNet) -> None:
    source = write_safetensors(tiny_unet.state_dict(), tmp_path / "m.safetensors")
    torch.manual_seed(1)
    second = ConditionalUNet(**TINY_UNET).state_dict()
    write_safetensors(second, tmp_path / "m_second.safetensors")
    source.with_suffix(".json").write_text(json.dumps({**CARD, "repeat_unet": "m_second.safetensors"}))
    converted = convert_checkpoint(source, tmp_path / "copy.safetensors")
    assert converted.files == (tmp_path / "copy.safetensors", tmp_path / "copy.json", tmp_path / "copy_repeat.safetensors")
    assert json.loads(converted.files[1].read_text())["repeat_unet"] == "copy_repeat.safetensors"
    assert_same_tensors(load_unet(converted.files[2]).state_dict(), second)


def test_convert_with_a_missing_further_passes_unet_fails_and_writes_nothing(
    tmp_path: Path, tiny_unet: ConditionalUNet
) -> None:
    source = write_safetensors(tiny_unet.state_dict(), tmp_path / "m.safetensors")
    source.with_suffix(".json").write_text(json.dumps({**CARD, "repeat_unet": "gone.safetensors"}))
    with pytest.raises(CardError, match=r"gone\.safetensors: no such checkpoint file \(named by .*m\.json"):
        convert_checkpoint(source, tmp_path / "copy.safetensors")
    source.with_suffix(".json").write_text(json.dumps({**CARD, "prediction": "eps"}))
    with pytest.raises(CardError, match=r"m\.json: 'prediction' is 'eps'"):
        convert_checkpoint(source, tmp_path / "copy.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.safetensors"]


def test_convert_refuses_to_overwrite_its_source(tmp_path: Path, tiny_unet: ConditionalUNet) -> None:
    source = write_safetensors(tiny_unet.state_dict(), tmp_path / "m.safetensors")
    source.with_suffix(".json").write_text(json.dumps(CARD))
    before = source.read_bytes()
    with pytest.raises(UsageError, match="would overwrite the source file"):
        convert_checkpoint(source, source)
    assert source.read_bytes() == before and json.loads(source.with_suffix(".json").read_text()) == CARD


def test_a_training_resume_state_is_refused_as_weights_to_run_or_convert(tmp_path: Path, tiny_unet: ConditionalUNet) -> None:
    state = {"format": 1, "step": 3, "model": tiny_unet.state_dict(), "ema": tiny_unet.state_dict(), "config": {}}
    path = tmp_path / "last" / "state.pt"
    path.parent.mkdir()
    torch.save(state, path)
    message = r"state\.pt: a `derain train` resume state, not weights to run .*/last/unet\.safetensors$"
    with pytest.raises(CheckpointError, match=message):
        read_config(path)
    with pytest.raises(CheckpointError, match=message):
        convert_checkpoint(path, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()
    assert_same_tensors(load_unet(path).state_dict(), tiny_unet.state_dict())  # still a start for `train --from`


# --- the official architectures (shapes only; skipped without ../shared) ----------------------------


def official_layout(name: str) -> dict[str, torch.Tensor]:
    """Meta tensors with every key and shape of an official checkpoint (skip when the list is absent)."""
    if not LAYOUTS.is_file():
        pytest.skip("../shared/reference/official_checkpoint_layouts.json is not present")
    shapes = json.loads(LAYOUTS.read_text())[name]
    return {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}


def test_official_universal_ir_layout_fits_the_inferred_unet_strictly() -> None:
    state_dict = official_layout("universal-ir")
    config = infer_unet_config(state_dict)
    assert config["nf"] == 64 and config["ch_mult"] == [1, 2, 4, 8] and config["context_dim"] == 512
    with torch.device("meta"):
        model = ConditionalUNet(**config)
    load_strict(model, state_dict, "universal-ir.pth")


def test_official_daclip_layout_fits_the_inferred_daclip_strictly_even_without_alias_keys() -> None:
    full = official_layout("daclip_ViT-B-32")
    without_alias = {key: value for key, value in full.items() if not key.startswith("visual.")}
    state_dict = with_visual_alias(without_alias, "daclip_ViT-B-32.pt")
    assert sorted(state_dict) == sorted(full)
    with torch.device("meta"):
        model = DACLIP(**infer_daclip_config(state_dict))
    load_strict(model, state_dict, "daclip_ViT-B-32.pt")
