"""ConditionalUNet: reference state-dict layouts, golden reference outputs, config inference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from derain_cli.errors import CheckpointError
from derain_cli.unet import ConditionalUNet, infer_unet_config

GOLDEN = Path(__file__).parent / "golden"
SHARED_REFERENCE = Path(__file__).parents[2] / "shared" / "reference"
GOLDEN_SEED = 2024
TOLERANCE = 1e-5  # max abs error per unit of output size (reference run-to-run noise: ~1e-6)


def unet_config(
    nf: int,
    ch_mult: list[int],
    context_dim: int | None = None,
    degra: bool = False,
    image: bool = False,
    in_nc: int = 3,
    out_nc: int = 3,
) -> dict:
    """ConditionalUNet constructor kwargs, spelt out in full."""
    return dict(
        in_nc=in_nc,
        out_nc=out_nc,
        nf=nf,
        ch_mult=ch_mult,
        context_dim=context_dim,
        use_degra_context=degra,
        use_image_context=image,
    )


UNIVERSAL_IR = unet_config(64, [1, 2, 4, 8], 512, degra=True, image=True)
IRSDE_DERAINING = unet_config(64, [2, 4, 8, 16])


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Run this file's tiny forwards on one thread (contended OpenMP on shared cores is slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def layout(model: torch.nn.Module) -> dict[str, list[int]]:
    """Ordered key -> shape map of a model's state dict."""
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def meta_unet(**config) -> ConditionalUNet:
    """A ConditionalUNet on the meta device (shapes only: no memory, instant)."""
    with torch.device("meta"):
        return ConditionalUNet(**config)


def golden_weights(shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """Golden weights: RandomState(2024) normals by sorted key, x fan_in^-1/2 (2+ dims) or 0.5."""
    rng = np.random.RandomState(GOLDEN_SEED)
    weights = {}
    for key in sorted(shapes):
        shape = shapes[key]
        scale = (int(np.prod(shape)) // shape[0]) ** -0.5 if len(shape) >= 2 else 0.5
        weights[key] = torch.from_numpy((rng.standard_normal(shape) * scale).astype(np.float32))
    return weights


def read_golden(name: str) -> tuple[dict, dict[str, list[int]], dict[str, torch.Tensor]]:
    """Config, reference state-dict layout and tensors of tests/golden/unet_<name>.safetensors."""
    with safe_open(str(GOLDEN / f"unet_{name}.safetensors"), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return json.loads(meta["config"]), json.loads(meta["layout"]), tensors


def golden_model(name: str) -> tuple[ConditionalUNet, dict[str, torch.Tensor]]:
    """Our U-Net for a golden case, strictly loaded with the golden weights; the golden tensors."""
    config, shapes, tensors = read_golden(name)
    if "depth" in config:  # image-restoration-sde's ConditionalUNet(in_nc, out_nc, nf, depth)
        ch_mult = [2 ** (i + 1) for i in range(config["depth"])]
        config = unet_config(config["nf"], ch_mult, in_nc=config["in_nc"], out_nc=config["out_nc"])
    model = ConditionalUNet(**config).eval()
    assert list(layout(model).items()) == list(shapes.items())
    weights = golden_weights(shapes)
    checksum = torch.stack([weights[k].double().sum() for k in sorted(weights)])
    torch.testing.assert_close(checksum, tensors["weights.checksum"], rtol=1e-12, atol=1e-9)
    model.load_state_dict(weights, strict=True)
    return model, tensors


def contexts(g: dict[str, torch.Tensor], sign: tuple[int, int] = (1, 1)) -> dict[str, torch.Tensor]:
    """The golden DA-CLIP embeddings as forward kwargs (empty for a context-free case)."""
    if "input.text_context" not in g:
        return {}
    return {
        "text_context": sign[0] * g["input.text_context"],
        "image_context": sign[1] * g["input.image_context"],
    }


def test_universal_ir_config_has_the_official_keys_and_shapes_in_order():
    expected = json.loads((GOLDEN / "universal_ir_layout.json").read_text())
    assert len(expected) == 224
    assert sum(torch.Size(s).numel() for s in expected.values()) == 48_975_747
    assert list(layout(meta_unet(**UNIVERSAL_IR)).items()) == list(expected.items())


def test_universal_ir_config_matches_the_shared_official_checkpoint_layout():
    path = SHARED_REFERENCE / "official_checkpoint_layouts.json"
    if not path.exists():
        pytest.skip("../shared/reference/official_checkpoint_layouts.json is not present")
    official = json.loads(path.read_text())["universal-ir"]
    assert layout(meta_unet(**UNIVERSAL_IR)) == official


def test_irsde_deraining_unet_is_the_context_free_config_with_ch_mult_2_4_8_16():
    expected = json.loads((GOLDEN / "irsde_deraining_layout.json").read_text())
    assert len(expected) == 151
    assert list(layout(meta_unet(**IRSDE_DERAINING)).items()) == list(expected.items())


@pytest.mark.parametrize("name", ["context", "degra", "plain", "irsde"])
def test_outputs_equal_the_reference_unet_for_tensor_and_python_time(name):
    model, g = golden_model(name)
    x_t, mu = g["input.x_t"], g["input.mu"]
    times = {"output.t": g["input.t"], "output.t_float": g["input.t_float"], "output.t_int5": 5}
    for key, t in times.items():
        with torch.no_grad():
            out = model(x_t, mu, t, **contexts(g))
        assert out.shape == x_t.shape
        error = (out - g[key]).abs().max().item()
        bound = TOLERANCE * max(1.0, g[key].abs().max().item())
        assert error < bound, f"{name} {key}: max abs error {error:.3g}"


def test_both_context_embeddings_change_the_prediction():
    model, g = golden_model("context")
    args = (g["input.x_t"], g["input.mu"], g["input.t"])
    with torch.no_grad():
        both = model(*args, **contexts(g))
        other_text = model(*args, **contexts(g, sign=(-1, 1)))
        other_image = model(*args, **contexts(g, sign=(1, -1)))
    assert (both - other_text).abs().max() > 1e-3
    assert (both - other_image).abs().max() > 1e-2


ROUND_TRIP_CONFIGS = [
    UNIVERSAL_IR,
    IRSDE_DERAINING,
    unet_config(32, [1, 1, 2, 2], 24, degra=True, image=True),
    unet_config(8, [1, 3, 5], in_nc=1, out_nc=2),
    unet_config(16, [2, 4], 16, degra=True),
    unet_config(32, [1, 2], 20, image=True),
    unet_config(6, [1], in_nc=4, out_nc=4),
]


@pytest.mark.parametrize(
    "config", ROUND_TRIP_CONFIGS, ids=lambda c: f"nf{c['nf']}-{c['ch_mult']}-{c['context_dim']}"
)
def test_infer_unet_config_recovers_the_constructor_kwargs(config):
    model = meta_unet(**config)
    inferred = infer_unet_config(model.state_dict())
    assert inferred == config == model.config
    assert json.loads(json.dumps(inferred)) == inferred


def test_infer_unet_config_of_a_context_free_model_built_with_a_context_dim_gives_its_layout():
    model = meta_unet(**{**unet_config(8, [1, 2]), "context_dim": 512})
    inferred = infer_unet_config(model.state_dict())
    assert inferred["context_dim"] is None
    assert layout(meta_unet(**inferred)) == layout(model)


def tiny_unet() -> ConditionalUNet:
    """A seeded context-free two-level U-Net (input padded to a multiple of 4)."""
    torch.manual_seed(0)
    return ConditionalUNet(**unet_config(4, [1, 2])).eval()


@pytest.mark.parametrize("size", [(13, 21), (5, 7), (16, 16), (9, 30)])
def test_output_has_the_input_size_when_the_size_is_not_a_multiple_of_2_to_the_depth(size):
    x_t = torch.randn(1, 3, *size)
    with torch.no_grad():
        out = tiny_unet()(x_t, torch.rand_like(x_t), torch.tensor([10]))
    assert out.shape == x_t.shape


def test_padding_reflects_the_bottom_right_edges_and_crops_back():
    model = tiny_unet()
    x_t, mu = torch.randn(1, 3, 6, 7), torch.rand(1, 3, 6, 7)
    padded = [torch.nn.functional.pad(y, (0, 1, 0, 2), mode="reflect") for y in (x_t, mu)]
    with torch.no_grad():
        torch.testing.assert_close(model(x_t, mu, 4), model(*padded, 4)[..., :6, :7])


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    torch.manual_seed(0)
    model = ConditionalUNet(**unet_config(32, [1], 8, degra=True, image=True))
    x_t, mu, e = torch.randn(2, 3, 6, 6), torch.rand(2, 3, 6, 6), torch.randn(2, 8)

    def loss_and_grads() -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        out = model(x_t, mu, torch.tensor([1, 50]), text_context=e, image_context=e)
        loss = out.square().mean()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    loss, grads = loss_and_grads()
    model.gradient_checkpointing = True
    loss_checkpointed, grads_checkpointed = loss_and_grads()
    torch.testing.assert_close(loss_checkpointed, loss)
    for a, b in zip(grads_checkpointed, grads):
        torch.testing.assert_close(a, b)


def test_non_unet_state_dict_raises_checkpoint_error_naming_the_missing_key():
    daclip_like = {"clip.visual.proj": torch.zeros(768, 512), "logit_scale": torch.zeros(())}
    with pytest.raises(CheckpointError, match="init_conv.weight"):
        infer_unet_config(daclip_like)


def test_module_prefixed_state_dict_raises_checkpoint_error_with_a_hint():
    state_dict = meta_unet(**unet_config(8, [1])).state_dict()
    prefixed = {f"module.{k}": v for k, v in state_dict.items()}
    with pytest.raises(CheckpointError, match="module."):
        infer_unet_config(prefixed)


def test_state_dict_without_levels_raises_checkpoint_error():
    partial = {
        "init_conv.weight": torch.zeros(8, 6, 7, 7),
        "final_conv.weight": torch.zeros(3, 8, 3, 3),
    }
    with pytest.raises(CheckpointError, match="downs.0.3.weight"):
        infer_unet_config(partial)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_channel_layer_norm_of_half_features_is_the_fp32_norm(dtype):
    # Features of small variance, as the bundled model has: the reference's eps of 1e-3 for half
    # inputs would scale them by ~0.3 (var 1e-4); the fp32 norm (eps 1e-5) is what published results use.
    from derain_cli.unet import ChannelLayerNorm

    norm = ChannelLayerNorm(16)
    x = 0.01 * torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    want = norm(x)
    assert want.dtype == torch.float32
    assert torch.equal(want, (x - x.mean(1, keepdim=True)) * (x.var(1, unbiased=False, keepdim=True) + 1e-5).rsqrt())
    got = norm(x.to(dtype))
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), want, atol=0.02, rtol=0.02)
