"""The GPU fast path: device generators, batched tiles, channels_last and torch.compile, same numbers."""

from pathlib import Path

import pytest
import torch

from derain_cli.card import CascadeCard
from derain_cli.cascade import Cascade
from derain_cli.checkpoints import load_unet
from derain_cli.pipeline import DerainPipeline, SampleOptions, generator_device, image_generators, image_seed
from derain_cli.sde import IRSDE
from derain_cli.tiling import TiledDenoiser

from tests.conftest import TINY_SDE


@pytest.fixture(scope="module")
def plain(plain_unet_file):
    return DerainPipeline(load_unet(plain_unet_file), IRSDE(**TINY_SDE))


def test_generators_live_on_a_cuda_device_and_on_the_cpu_otherwise():
    assert generator_device("cuda:1") == torch.device("cuda:1")
    assert generator_device(torch.device("cuda")) == torch.device("cuda")
    assert generator_device("cpu") == torch.device("cpu")
    assert generator_device("mps") == torch.device("cpu")


def test_cpu_generators_are_seeded_by_the_image_seed():
    generators = image_generators(7, [0, 2], "mps")
    assert [g.device.type for g in generators] == ["cpu", "cpu"]
    assert [g.initial_seed() for g in generators] == [7, image_seed(7, 2)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_generators_are_made_on_the_device():
    generators = image_generators(7, [0, 1], "cuda")
    assert all(g.device.type == "cuda" for g in generators)


def _unet_like(x, mu, t, image_context=None, text_context=None):
    """A denoiser mixing neighbouring pixels, the time and per-image context, like a U-Net."""
    out = torch.nn.functional.avg_pool2d(torch.cat([x, mu], 1), 5, stride=1, padding=2)[:, :3]
    out = out * t.float().view(-1, 1, 1, 1) / 10
    if image_context is not None:
        out = out + image_context.mean(1).view(-1, 1, 1, 1) + text_context.view(len(x), -1).sum(1).view(-1, 1, 1, 1)
    return out


@pytest.mark.parametrize("height, width, tile", [(100, 70, 32), (64, 200, 48), (40, 40, 64)])
def test_batched_tiles_give_the_one_by_one_result(height, width, tile):
    gen = torch.Generator().manual_seed(0)
    x, mu = torch.rand(2, 3, height, width, generator=gen), torch.rand(2, 3, height, width, generator=gen)
    t = torch.tensor([3, 7])
    context = {"image_context": torch.rand(2, 5, generator=gen), "text_context": torch.rand(2, 1, 4, generator=gen)}
    calls = []

    def counted(*args, **kwargs):
        calls.append(args[0].shape[0])
        return _unet_like(*args, **kwargs)

    one_by_one = TiledDenoiser(_unet_like, tile, overlap=16)(x, mu, t, **context)
    batched = TiledDenoiser(counted, tile, overlap=16, batch_tiles=True)(x, mu, t, **context)
    assert torch.allclose(batched, one_by_one, atol=1e-5)
    assert len(calls) == 1  # tiles of equal shape: one call


def test_batched_tiles_of_a_unet_restore_as_one_by_one(plain):
    lq = torch.rand(2, 3, 70, 90, generator=torch.Generator().manual_seed(1))
    options = SampleOptions(steps=3, seed=4, tile=32, tile_overlap=8)
    one_by_one = plain.restore(lq, options)
    plain.batch_tiles = True
    try:
        batched = plain.restore(lq, options)
    finally:
        plain.batch_tiles = False
    assert torch.allclose(batched, one_by_one, atol=1e-5)


def test_tiles_are_grouped_by_shape_edge_tiles_apart():
    from derain_cli.tiling import _by_shape

    windows = [("a", torch.ones(4, 4)), ("b", torch.ones(4, 2)), ("c", torch.ones(4, 4))]
    assert [[w for w, _ in g] for g in _by_shape(windows)] == [["a", "c"], ["b"]]


def test_the_cpu_keeps_the_plain_layout_and_one_by_one_tiles(plain):
    assert not plain.channels_last and not plain.batch_tiles
    kernels = [p for p in plain.unet.parameters() if p.dim() == 4]
    assert kernels and all(k.is_contiguous() for k in kernels)


def test_channels_last_gives_the_same_numbers(plain_unet_file):
    lq = torch.rand(1, 3, 40, 48, generator=torch.Generator().manual_seed(2))
    options = SampleOptions(steps=3, seed=1, tile=None)
    reference = DerainPipeline(load_unet(plain_unet_file), IRSDE(**TINY_SDE)).restore(lq, options)
    pipeline = DerainPipeline(load_unet(plain_unet_file), IRSDE(**TINY_SDE))
    pipeline.channels_last = True
    pipeline.unet = pipeline.unet.to(memory_format=torch.channels_last)
    assert torch.allclose(pipeline.restore(lq, options), reference, atol=1e-5)


def _spy_compile(monkeypatch) -> list:
    compiled = []

    def spy(module, **kwargs):
        compiled.append((module, kwargs))
        return module

    monkeypatch.setattr(torch, "compile", spy)
    return compiled


def test_compile_wraps_the_unet_once_with_static_shapes(plain_unet_file, monkeypatch):
    compiled = _spy_compile(monkeypatch)
    pipeline = DerainPipeline(load_unet(plain_unet_file), IRSDE(**TINY_SDE), compile=True)
    pipeline.compile()
    assert [(m, k["dynamic"]) for m, k in compiled] == [(pipeline.unet, False)]


def test_compiling_a_cascade_compiles_each_of_its_unets_once(plain_unet_file, monkeypatch):
    compiled = _spy_compile(monkeypatch)
    first = DerainPipeline(load_unet(plain_unet_file), IRSDE(**TINY_SDE))
    further = DerainPipeline(load_unet(plain_unet_file), IRSDE(**TINY_SDE))
    Cascade(first, CascadeCard(2), further).compile()
    assert [m for m, _ in compiled] == [first.unet, further.unet]
    compiled.clear()
    Cascade(first, CascadeCard(2)).compile()  # already compiled: nothing again
    shared = DerainPipeline(load_unet(plain_unet_file), IRSDE(**TINY_SDE))
    Cascade(shared, CascadeCard(2)).compile()
    assert [m for m, _ in compiled] == [shared.unet]


def test_a_compiled_unet_gives_the_same_numbers(plain_unet_file):
    lq = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    options = SampleOptions(steps=2, seed=1, tile=None)
    pipeline = DerainPipeline(load_unet(plain_unet_file), IRSDE(**TINY_SDE))
    reference = pipeline.restore(lq, options)
    pipeline.compile(backend="eager")
    assert pipeline._compiled is not None
    assert torch.allclose(pipeline.restore(lq, options), reference, atol=1e-5)


def test_the_compile_option_compiles_the_unet_before_restoring(tmp_path, plain_unet_file, monkeypatch, capsys):
    from tests.conftest import write_rgb
    from tests.test_cli import FAST, derain

    compiled = _spy_compile(monkeypatch)
    src = write_rgb(tmp_path / "rainy.png", 24, 24)
    code, _, err = derain("run", src, "-o", tmp_path / "clean.png", "--unet", plain_unet_file, "--compile", *FAST,
                          capsys=capsys)
    assert code == 0, err
    assert len(compiled) == 1 and (tmp_path / "clean.png").exists()


# -- derain batch --batch-size ------------------------------------------------------------------

def test_images_restored_together_at_position_zero_each_get_their_single_run(plain):
    lq = torch.rand(3, 3, 24, 32, generator=torch.Generator().manual_seed(5))
    options = SampleOptions(steps=3, seed=11, tile=None)
    together = plain.restore(lq, options, image_indices=[0, 0, 0])
    for i in range(3):
        assert torch.allclose(together[i:i + 1], plain.restore(lq[i:i + 1], options), atol=1e-5)


class _Spy:
    """A restorer returning its input, recording each call's batch and indices; NaN for a black image."""

    def __init__(self):
        self.calls = []

    def restore(self, lq, options=None, callback=None, image_indices=None):
        from derain_cli.errors import NonFiniteError

        self.calls.append((len(lq), tuple(lq.shape[-2:]), image_indices))
        if (lq.flatten(1).amax(1) == 0).any():
            raise NonFiniteError("the sampler gave NaN")
        return lq


def _black(path, height, width):
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(path)


def test_batch_size_groups_consecutive_images_of_one_size_and_fails_only_unreadable_ones(tmp_path):
    from derain_cli.jobs import iter_batch, plan_batch
    from tests.conftest import write_rgb

    for name, (h, w) in {"a": (8, 8), "b": (8, 9), "c": (8, 8), "e": (8, 8), "f": (8, 8)}.items():
        write_rgb(tmp_path / "in" / f"{name}.png", h, w)
    (tmp_path / "in" / "d.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage")
    spy = _Spy()
    started = []
    results = list(iter_batch(spy, plan_batch(tmp_path / "in", tmp_path / "out").todo, SampleOptions(),
                              on_start=lambda job: started.append(job.src.name), batch_size=4))
    assert spy.calls == [(2, (8, 8), [0, 0]), (1, (8, 9), [0]), (2, (8, 8), [0, 0])]  # a+c, b; e+f
    status = {r.input.rsplit("/", 1)[-1]: r.status for r in results}
    assert status == {"a.png": "ok", "b.png": "ok", "c.png": "ok", "d.png": "failed", "e.png": "ok", "f.png": "ok"}
    assert "d.png" in next(r.error for r in results if r.status == "failed")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.png", "c.png", "e.png", "f.png"]
    assert sorted(started) == ["a.png", "b.png", "c.png", "e.png", "f.png"]


def test_a_non_finite_group_is_retried_one_by_one_so_only_the_bad_image_fails(tmp_path):
    from derain_cli.jobs import iter_batch, plan_batch
    from tests.conftest import write_rgb

    write_rgb(tmp_path / "in" / "a.png", 8, 8)
    _black(tmp_path / "in" / "b.png", 8, 8)
    write_rgb(tmp_path / "in" / "c.png", 8, 8, seed=1)
    spy = _Spy()
    results = list(iter_batch(spy, plan_batch(tmp_path / "in", tmp_path / "out").todo, SampleOptions(), batch_size=3))
    assert [r.status for r in results] == ["ok", "failed", "ok"]
    assert "b.png" in results[1].error and "NaN" in results[1].error
    assert [n for n, _, _ in spy.calls] == [3, 1, 1, 1]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "c.png"]


def test_a_bug_in_a_group_still_stops_the_batch(tmp_path):
    from derain_cli.jobs import iter_batch, plan_batch
    from tests.conftest import write_rgb

    class Buggy:
        def restore(self, lq, options=None, callback=None, image_indices=None):
            raise RuntimeError("a bug")

    write_rgb(tmp_path / "in" / "a.png", 8, 8)
    write_rgb(tmp_path / "in" / "b.png", 8, 8)
    with pytest.raises(RuntimeError, match="a bug"):
        list(iter_batch(Buggy(), plan_batch(tmp_path / "in", tmp_path / "out").todo, SampleOptions(), batch_size=2))


def test_batch_size_on_the_command_line_writes_every_file_and_the_report(tmp_path, plain_unet_file, capsys):
    import json

    from tests.conftest import write_rgb
    from tests.test_cli import FAST, derain

    src = tmp_path / "in"
    for name in ("a.png", "b.png", "c.jpg"):
        write_rgb(src / name, 24, 32, seed=len(name) + ord(name[0]))
    write_rgb(src / "d.png", 20, 32)
    (src / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage")
    report = tmp_path / "report.json"
    code, _, err = derain("batch", src, "-o", tmp_path / "out", "--unet", plain_unet_file, "--batch-size", "4",
                          "--json", report, *FAST, capsys=capsys)
    assert code == 1 and "4 restored" in err and "1 failed" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.png", "c.jpg", "d.png"]
    rows = {Path(r["input"]).name: r["status"] for r in json.loads(report.read_text())["images"]}
    assert rows == {"a.png": "ok", "b.png": "ok", "c.jpg": "ok", "d.png": "ok", "corrupt.png": "failed"}
