"""DA-CLIP on upstream open_clip against the official layout and the reference fork's numbers."""

import ast
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from derain_cli.daclip import DACLIP, clip_preprocess, infer_daclip_config
from derain_cli.errors import CheckpointError

GOLDEN = Path(__file__).parent / "golden"
SHARED_LAYOUTS = Path(__file__).resolve().parents[2] / "shared" / "reference" / "official_checkpoint_layouts.json"

VITB32 = {
    "embed_dim": 512,
    "vision_cfg": {"image_size": 224, "patch_size": 32, "width": 768, "head_width": 64, "layers": 12},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12},
}
VITL14 = {
    "embed_dim": 768,
    "vision_cfg": {"image_size": 224, "patch_size": 14, "width": 1024, "head_width": 64, "layers": 24},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 768, "heads": 12, "layers": 12},
}
TINY_B32_LIKE = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 64, "patch_size": 32, "width": 128, "head_width": 64, "layers": 2},
    "text_cfg": {"context_length": 8, "vocab_size": 50, "width": 64, "heads": 1, "layers": 3},
}
TINY_L14_LIKE = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": 42, "patch_size": 14, "width": 192, "head_width": 64, "layers": 3, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 6, "vocab_size": 40, "width": 128, "heads": 2, "layers": 1, "mlp_ratio": 3.0},
}


def meta_state_dict(config: dict) -> dict[str, torch.Tensor]:
    """State dict of a DACLIP built on the meta device (shapes only, no memory)."""
    with torch.device("meta"):
        return DACLIP(**config).state_dict()


def load_tiny_golden() -> tuple[DACLIP, dict[str, torch.Tensor]]:
    """The tiny fork-made DA-CLIP, loaded strictly, and its recorded inputs/outputs."""
    path = GOLDEN / "daclip_tiny.safetensors"
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    golden = load_file(path)
    state = {key[2:]: value for key, value in golden.items() if key.startswith("w.")}
    state |= {key[len("clip."):]: value for key, value in state.items() if key.startswith("clip.visual.")}
    model = DACLIP(int(meta["embed_dim"]), ast.literal_eval(meta["vision_cfg"]), ast.literal_eval(meta["text_cfg"]))
    model.load_state_dict(state, strict=True)
    return model.eval(), golden


def test_state_dict_keys_and_shapes_equal_official_vitb32_file():
    layout = json.loads((GOLDEN / "daclip_vitb32_layout.json").read_text())
    assert len(layout) == 631
    ours = meta_state_dict(VITB32)
    assert {key: list(value.shape) for key, value in ours.items()} == layout
    with torch.device("meta"):
        assert sum(p.numel() for p in DACLIP(**VITB32).parameters()) == 246_213_634


def test_committed_layout_equals_shared_reference_listing():
    if not SHARED_LAYOUTS.is_file():
        pytest.skip("../shared/reference/official_checkpoint_layouts.json is not present")
    official = json.loads(SHARED_LAYOUTS.read_text())["daclip_ViT-B-32"]
    assert json.loads((GOLDEN / "daclip_vitb32_layout.json").read_text()) == official


def test_visual_alias_is_the_clip_image_tower_and_controller_is_a_copy():
    model = DACLIP(**TINY_B32_LIKE)
    assert model.visual is model.clip.visual
    assert model.visual_control is not model.clip.visual
    state = model.state_dict()
    assert state["visual.proj"].data_ptr() == state["clip.visual.proj"].data_ptr()
    assert torch.equal(state["visual_control.proj"], state["clip.visual.proj"])


def test_fresh_controller_leaves_clip_unchanged_because_zero_modules_start_at_zero():
    torch.manual_seed(0)
    model = DACLIP(**TINY_B32_LIKE).eval()
    assert all(not p.any() for p in model.visual_control.transformer.zero_modules.parameters())
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        content, degradation = model.encode_image(images, control=True)
        plain = model.encode_image(images, control=False)
    torch.testing.assert_close(content, plain, rtol=0, atol=0)
    torch.testing.assert_close(degradation, plain, rtol=0, atol=0)


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_embeddings_equal_reference_fork(grad):
    model, golden = load_tiny_golden()
    with torch.set_grad_enabled(grad):
        content, degradation = model.encode_image(golden["images"], control=True)
        plain = model.encode_image(golden["images"], control=False)
        text = model.encode_text(golden["tokens"])
    # no_grad: torch's fused MultiheadAttention fast path (upstream is batch_first) differs in the last ulps
    for ours, name in ((content, "content"), (degradation, "degradation"), (plain, "plain"), (text, "text")):
        torch.testing.assert_close(ours, golden[name], rtol=0, atol=1e-5, msg=name)
    assert (golden["content"] - golden["plain"]).abs().max() > 0.1  # the golden control path is not a no-op


def test_clip_block_i_receives_controller_output_of_block_L_minus_1_minus_i():
    model, golden = load_tiny_golden()
    blocks = model.clip.visual.transformer.resblocks
    zeros = model.visual_control.transformer.zero_modules
    seen: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda m, a, out, k=f"zero{i}": seen.setdefault(k, out))
             for i, m in enumerate(zeros)]
    hooks += [m.register_forward_hook(lambda m, a, out, k=f"block{i}": seen.setdefault(k, out))
              for i, m in enumerate(blocks)]
    hooks += [m.register_forward_pre_hook(lambda m, a, k=f"into{i}": seen.setdefault(k, a[0]))
              for i, m in enumerate(blocks)]
    hooks.append(model.clip.visual.ln_post.register_forward_pre_hook(lambda m, a: seen.setdefault("pool", a[0])))
    with torch.no_grad():
        model.encode_image(golden["images"], control=True)
    for hook in hooks:
        hook.remove()
    last = len(blocks) - 1
    for i in range(last):
        torch.testing.assert_close(seen[f"into{i + 1}"], seen[f"block{i}"] + seen[f"zero{last - i}"])
    torch.testing.assert_close(seen["pool"], (seen[f"block{last}"] + seen["zero0"])[:, 0])
    assert not torch.allclose(seen["into1"], seen["block0"] + seen["zero0"], atol=1e-3)


@pytest.mark.parametrize("config", [VITB32, VITL14, TINY_B32_LIKE, TINY_L14_LIKE],
                         ids=["ViT-B-32", "ViT-L-14", "tiny-B-32-like", "tiny-L-14-like"])
def test_infer_config_recovers_constructor_kwargs_from_shapes(config):
    assert infer_daclip_config(meta_state_dict(config)) == config


def test_infer_config_refuses_a_plain_clip_state_dict():
    with torch.device("meta"):
        import open_clip

        plain = open_clip.CLIP(**TINY_B32_LIKE).state_dict()
    with pytest.raises(CheckpointError, match="zero_modules"):
        infer_daclip_config(plain)
    with pytest.raises(CheckpointError, match="not a DA-CLIP"):
        infer_daclip_config({"input_blocks.0.weight": torch.zeros(1)})


def test_infer_config_refuses_a_non_square_patch_grid():
    state = meta_state_dict(TINY_B32_LIKE)
    state["clip.visual.positional_embedding"] = torch.empty(6, 128, device="meta")
    with pytest.raises(CheckpointError, match="square grid"):
        infer_daclip_config(state)


@pytest.mark.parametrize("case", ["a", "b"])
def test_clip_preprocess_equals_reference_clip_transform(case):
    golden = load_file(GOLDEN / "daclip_preprocess.safetensors")
    ours = clip_preprocess(golden[f"{case}_input"], size=int(golden[f"{case}_size"]))
    # one uint8 level is 1 / 255 / std > 0.014 after normalisation: any pixel off by a level fails
    torch.testing.assert_close(ours, golden[f"{case}_output"], rtol=0, atol=1e-6)


def test_clip_preprocess_crops_any_aspect_to_a_square_batch():
    images = torch.rand(2, 3, 50, 23)
    out = clip_preprocess(images, size=16)
    assert out.shape == (2, 3, 16, 16) and out.dtype == torch.float32
    torch.testing.assert_close(out[1], clip_preprocess(images[1:], size=16)[0])


def test_clip_preprocess_rejects_non_rgb_batches():
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        clip_preprocess(torch.rand(3, 20, 20))
