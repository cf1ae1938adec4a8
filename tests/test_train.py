"""Training: objective, schedule, EMA, checkpoints, bit-exact resume, validation/logs and two-process DDP."""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from derain_cli.checkpoints import load_unet, save_safetensors
from derain_cli.data import RandomPatches
from derain_cli.errors import DerainError
from derain_cli.metrics import score_pair
from derain_cli.pipeline import DerainPipeline, SampleOptions
from derain_cli.sde import IRSDE
from derain_cli.synth import PRESETS
from derain_cli.train import (EMA, TrainConfig, Trainer, TrainingStopped, draw_times_and_noise, lr_at,
                              matching_loss, train)
from derain_cli.trainlog import nice_ticks, plot_log, read_log
from derain_cli.unet import ConditionalUNet

REPO = Path(__file__).resolve().parents[1]
GOLDEN = load_file(Path(__file__).parent / "golden" / "train_matching_loss.safetensors")


def write_rain_pairs(root: Path, count: int = 6) -> Path:
    """Smooth colour fields (GT) and the same with bright diagonal streaks (LQ), one smaller than a patch."""
    rng = np.random.default_rng(0)
    for sub in ("LQ", "GT"):
        (root / sub).mkdir(parents=True)
    for i in range(count):
        height, width = (12, 20) if i == 0 else (36 + 4 * i, 40)
        rows, cols = np.mgrid[0:height, 0:width]
        phase = rng.uniform(0, 6, size=3)
        gt = np.stack([120 + 90 * np.sin(cols / (4 + i) + phase[0]), 120 + 90 * np.cos(rows / 6 + phase[1]),
                       120 + 60 * np.sin((rows + cols) / 9 + phase[2])], axis=-1)
        lq = gt + 80 * ((rows * 2 + cols + i) % 7 == 0)[..., None]
        Image.fromarray(gt.clip(0, 255).astype(np.uint8)).save(root / "GT" / f"{i:03d}.png")
        Image.fromarray(lq.clip(0, 255).astype(np.uint8)).save(root / "LQ" / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def rain_data(tmp_path_factory) -> Path:
    return write_rain_pairs(tmp_path_factory.mktemp("rain") / "set")


def tiny(out: Path, data: Path, **changes) -> TrainConfig:
    """A plain U-Net small enough for a CPU test step in tens of milliseconds."""
    config = TrainConfig(out=out, data=[data], nf=8, ch_mult=(1, 2), steps=6, batch_size=2, patch_size=16,
                         lr=2e-3, warmup_steps=2, ema_every=1, ema_start=2, ckpt_every=4, keep_checkpoints=1,
                         log_every=2, num_workers=0, device="cpu")
    return replace(config, **changes)


def fixed_batch_loss(trainer: Trainer, count: int = 16) -> float:
    """Loss of the raw model on fixed samples, times and noise (not those of training): the matching
    loss, or the L1 to the clean image for a clean-image (x0) predicting model."""
    patches = RandomPatches(trainer.train_images, trainer.config.patch_size, seed=1234)
    items = [patches[k] for k in range(count)]
    lq, gt = torch.stack([i["lq"] for i in items]), torch.stack([i["gt"] for i in items])
    t, noise = draw_times_and_noise(list(range(count)), 99, trainer.sde.T, tuple(lq.shape[1:]))
    with torch.no_grad():
        x_t = trainer.sde.noisy_state(gt, lq, t, noise)
        out = trainer.model(x_t, lq, t)
        if trainer.config.prediction == "x0":
            return float((out - gt).abs().mean())
        return float(matching_loss(trainer.sde, out, x_t, gt, lq, t))


@pytest.mark.parametrize("max_sigma", [50, 10])
def test_matching_loss_and_noisy_state_equal_the_reference(max_sigma):
    sde = IRSDE(max_sigma=max_sigma, T=100, schedule="cosine", eps=0.005)
    x0, mu, t = GOLDEN["x0"], GOLDEN["mu"], GOLDEN["t"]
    x_t = sde.noisy_state(x0, mu, t, GOLDEN["noise"])
    torch.testing.assert_close(x_t, GOLDEN[f"sigma{max_sigma}.x_t"], rtol=0, atol=1e-6)
    loss = matching_loss(sde, GOLDEN["noise_pred"], GOLDEN[f"sigma{max_sigma}.x_t"], x0, mu, t)
    torch.testing.assert_close(loss.reshape(1), GOLDEN[f"sigma{max_sigma}.loss"], rtol=1e-5, atol=0)


def test_matching_loss_compares_reverse_sde_mean_with_optimal_posterior_mean():
    sde = IRSDE(max_sigma=50, T=100)
    g = torch.Generator().manual_seed(0)
    x0, mu, noise = (torch.rand(3, 3, 8, 8, generator=g) for _ in range(3))
    t = torch.tensor([1, 50, 100])
    x_t = sde.noisy_state(x0, mu, t, noise)
    expected = (sde.reverse_sde_mean(x_t, mu, noise, t) - sde.optimal_posterior_mean(x_t, x0, mu, t)).abs().mean()
    assert matching_loss(sde, noise, x_t, x0, mu, t) == expected
    # A network that knows the noise beats one that predicts none by far.
    assert matching_loss(sde, noise, x_t, x0, mu, t) < 0.2 * matching_loss(sde, 0 * noise, x_t, x0, mu, t)


def test_times_and_noise_depend_only_on_seed_and_sample_number():
    t, noise = draw_times_and_noise([5, 6, 7], seed=1, T=100, shape=(3, 4, 4))
    t2, noise2 = draw_times_and_noise([7], seed=1, T=100, shape=(3, 4, 4))
    assert t.dtype == torch.long and bool(((t >= 1) & (t <= 100)).all())
    assert t2[0] == t[2] and torch.equal(noise2[0], noise[2])
    assert not torch.equal(draw_times_and_noise([7], seed=2, T=100, shape=(3, 4, 4))[1][0], noise[2])
    late, _ = draw_times_and_noise(list(range(200)), seed=1, T=100, shape=(1,), t_min=90)
    assert late.min() >= 90 and late.max() == 100 and len(set(late.tolist())) == 11


def test_learning_rate_warms_up_linearly_then_follows_a_cosine_to_lr_min():
    config = TrainConfig(steps=110, lr=1e-3, lr_min=1e-5, warmup_steps=10)
    assert lr_at(1, config) == pytest.approx(1e-4)
    assert lr_at(10, config) == pytest.approx(1e-3)
    assert lr_at(60, config) == pytest.approx((1e-3 + 1e-5) / 2)
    assert lr_at(110, config) == pytest.approx(1e-5)
    rates = [lr_at(s, config) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))


def test_ema_copies_at_every_step_until_start_then_averages_every_few_steps_with_warmed_up_decay():
    model = torch.nn.Linear(2, 1, bias=False)
    ema = EMA(model, decay=0.9, every=2, start=4)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model, 3)  # up to start: copy, at any step
    assert torch.equal(ema.model.weight, model.weight)
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update(model, 5)  # after start, not a multiple of every: no update
    assert torch.equal(ema.model.weight, torch.ones(1, 2))
    ema.update(model, 6)
    decay = 1 - 3 ** (-2 / 3)
    assert ema.decay_at(6) == pytest.approx(decay)
    torch.testing.assert_close(ema.model.weight, torch.full((1, 2), decay * 1 + (1 - decay) * 3))
    assert ema.decay_at(10**6) == 0.9


def test_a_run_shorter_than_the_ema_warm_up_exports_its_trained_weights(tmp_path, rain_data):
    out = tmp_path / "run"
    result = train(tiny(out, rain_data, steps=4, ema_every=10, ema_start=100))
    state = torch.load(out / "last" / "state.pt", weights_only=True)
    exported = load_unet(result).state_dict()
    assert all(torch.equal(exported[k], state["model"][k]) for k in exported)
    assert state["step"] == 4


def test_training_lowers_the_loss_on_a_synthetic_rain_set(tmp_path, rain_data):
    trainer = Trainer(tiny(tmp_path / "run", rain_data, steps=100, batch_size=4, lr=3e-3, warmup_steps=0,
                           ckpt_every=1000, keep_checkpoints=0, log_every=10))
    before = fixed_batch_loss(trainer)
    trainer.run()
    after = fixed_batch_loss(trainer)
    assert after < 0.85 * before
    assert all(np.isfinite(row["loss"]) for row in read_log(tmp_path / "run" / "log.csv"))


def test_checkpoints_hold_ema_weights_config_and_resumable_state(tmp_path, rain_data):
    out = tmp_path / "run"
    result = train(tiny(out, rain_data, steps=9, ckpt_every=3, keep_checkpoints=2))
    assert result == out / "last" / "unet.safetensors"
    assert sorted(p.name for p in out.glob("step-*")) == ["step-00000006", "step-00000009"]
    for folder in ("last", "step-00000006"):
        assert {p.name for p in (out / folder).iterdir()} == {"unet.safetensors", "unet.json", "state.pt"}
    unet = load_unet(result)
    state = torch.load(out / "last" / "state.pt", weights_only=True)
    assert state["step"] == 9
    for name, tensor in unet.state_dict().items():
        assert torch.equal(tensor, state["ema"][name])
    assert any(not torch.equal(state["ema"][k], state["model"][k]) for k in state["model"])
    sidecar = json.loads((out / "last" / "unet.json").read_text())
    assert sidecar["unet"] == unet.config == {**state["unet"]}
    assert sidecar["sde"] == {"max_sigma": 50.0, "T": 100, "schedule": "cosine", "eps": 0.005}
    assert sidecar["training"]["step"] == 9
    assert (out / "loss.png").exists() and (out / "train.log").exists()
    raw = load_unet(out / "last" / "state.pt")  # the raw weights, e.g. to fine-tune from with --from
    for name, tensor in raw.state_dict().items():
        assert torch.equal(tensor, state["model"][name])


class Crash(Exception):
    """Stands for the process dying: nothing is saved."""


def stop_at(step: int, error: BaseException):
    def progress(info):
        if info.step == step:
            raise error
    return progress


@pytest.mark.parametrize("how", ["crash after a checkpoint", "KeyboardInterrupt", "stop_after"])
def test_resumed_run_ends_bit_for_bit_where_an_uninterrupted_run_ends(tmp_path, rain_data, how):
    whole = tmp_path / "whole"
    train(tiny(whole, rain_data))
    broken = tmp_path / "broken"
    if how == "stop_after":
        train(tiny(broken, rain_data, stop_after=3))
        assert torch.load(broken / "last" / "state.pt", weights_only=True)["step"] == 3
    elif how == "KeyboardInterrupt":
        with pytest.raises(KeyboardInterrupt):
            train(tiny(broken, rain_data), progress=stop_at(3, KeyboardInterrupt()))
        assert torch.load(broken / "last" / "state.pt", weights_only=True)["step"] == 3
    else:
        with pytest.raises(Crash):
            train(tiny(broken, rain_data), progress=stop_at(5, Crash()))
        assert torch.load(broken / "last" / "state.pt", weights_only=True)["step"] == 4
    train(tiny(broken, rain_data, resume=True))

    assert (broken / "last" / "unet.safetensors").read_bytes() == (whole / "last" / "unet.safetensors").read_bytes()
    a = torch.load(whole / "last" / "state.pt", weights_only=True)
    b = torch.load(broken / "last" / "state.pt", weights_only=True)
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    for index, moments in a["optimizer"]["state"].items():
        assert all(torch.equal(v, b["optimizer"]["state"][index][k]) for k, v in moments.items())
    rows = lambda run: [(r["step"], r["loss"], r["lr"]) for r in read_log(run / "log.csv")]  # noqa: E731
    assert rows(broken) == rows(whole)


def test_rain_rendered_on_the_fly_trains_and_resumes_bit_for_bit(tmp_path, rain_data):
    clean = rain_data / "GT"
    config = dict(synth=[clean], synth_presets=[("light", 1), ("torrent", 2)])
    whole = Trainer(replace(tiny(tmp_path / "whole", rain_data, **config), data=[]))
    assert len(whole.train_images) == 3 * 6 and whole.train_images.rain(17) == PRESETS["torrent"]
    whole.run()
    train(replace(tiny(tmp_path / "broken", rain_data, stop_after=3, **config), data=[]))
    train(replace(tiny(tmp_path / "broken", rain_data, resume=True, **config), data=[]))
    assert ((tmp_path / "broken" / "last" / "unet.safetensors").read_bytes()
            == (tmp_path / "whole" / "last" / "unet.safetensors").read_bytes())


def test_sigterm_stops_after_the_step_and_saves_it(tmp_path, rain_data):
    previous = signal.getsignal(signal.SIGTERM)

    def progress(info):
        if info.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingStopped, match="SIGTERM at step 2") as stopped:
        train(tiny(tmp_path / "run", rain_data), progress=progress)
    assert (stopped.value.step, stopped.value.signum) == (2, signal.SIGTERM)
    assert stopped.value.folder == tmp_path / "run" / "last"
    assert torch.load(tmp_path / "run" / "last" / "state.pt", weights_only=True)["step"] == 2
    assert signal.getsignal(signal.SIGTERM) is previous


def test_a_stop_signal_during_validation_stops_within_one_sampler_step(tmp_path, rain_data):
    trainer = Trainer(tiny(tmp_path / "run", rain_data, steps=10, val=rain_data, val_every=2, val_steps=20,
                           val_crop=16))
    calls = []
    forward = trainer.ema.model.forward

    def signalling_forward(*args, **kwargs):  # the EMA model runs only in validation
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return forward(*args, **kwargs)

    trainer.ema.model.forward = signalling_forward
    with pytest.raises(TrainingStopped, match="SIGTERM at step 2"):
        trainer.run()
    assert len(calls) == 1  # not 6 images x 20 sampler steps
    assert torch.load(tmp_path / "run" / "last" / "state.pt", weights_only=True)["step"] == 2
    assert not (tmp_path / "run" / "best").exists()  # the cut-short validation scored nothing
    assert read_log(tmp_path / "run" / "log.csv")[-1] == {**read_log(tmp_path / "run" / "log.csv")[-1],
                                                           "step": 2, "val_psnr_y": None}


def _validation_options(trainer: Trainer) -> list:
    """Run ``trainer`` and return the sampling options each validation restore got."""
    seen = []
    restore = DerainPipeline.restore
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DerainPipeline, "restore",
                      lambda self, lq, options, callback=None: seen.append(options) or restore(self, lq, options, callback))
        trainer.run()
    return seen


def test_validation_samples_cheaply_by_default_but_unet_json_keeps_the_models_own_defaults(tmp_path, rain_data):
    assert (TrainConfig().val_steps, TrainConfig().val_sampler) == (None, None)
    trainer = Trainer(tiny(tmp_path / "run", rain_data, steps=2, val=rain_data, val_every=2, val_crop=16,
                           val_limit=1, max_sigma=10))
    seen = _validation_options(trainer)
    assert [(o.steps, o.sampler) for o in seen] == [(10, "posterior")]
    sidecar = json.loads((tmp_path / "run" / "best" / "unet.json").read_text())
    assert "steps" not in sidecar and "sampler" not in sidecar  # a noise model's faithful default: all T steps


def test_validation_with_given_steps_and_sampler_records_them_in_unet_json_to_reproduce_it(tmp_path, rain_data):
    trainer = Trainer(tiny(tmp_path / "run", rain_data, steps=2, val=rain_data, val_every=2, val_crop=16,
                           val_limit=1, max_sigma=10, prediction="x0", val_steps=10, val_sampler="ode"))
    seen = _validation_options(trainer)
    assert [(o.steps, o.sampler, o.seed, o.tile) for o in seen] == [(10, "ode", 0, None)]
    sidecar = json.loads((tmp_path / "run" / "best" / "unet.json").read_text())
    assert sidecar["sde"] == {"max_sigma": 10.0, "T": 100, "schedule": "cosine", "eps": 0.005}
    assert (sidecar["prediction"], sidecar["steps"], sidecar["sampler"]) == ("x0", 10, "ode")
    # the pipeline `derain run --unet` builds from these files scores what validation scored
    pipeline = DerainPipeline(load_unet(tmp_path / "run" / "best" / "unet.safetensors"), IRSDE(**sidecar["sde"]),
                              prediction=sidecar["prediction"])
    _, lq, gt = trainer.val_pairs[0]
    out = pipeline.restore(lq[None], SampleOptions(steps=sidecar["steps"], sampler=sidecar["sampler"], tile=None))
    image = (out[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert score_pair(image, gt)["psnr_y"] == pytest.approx(sidecar["training"]["val_psnr_y"], abs=1e-9)


def test_clean_image_prediction_learns_by_l1_on_the_clean_image_and_is_recorded(tmp_path, rain_data):
    trainer = Trainer(tiny(tmp_path / "run", rain_data, prediction="x0", steps=60, batch_size=4, lr=3e-3,
                           warmup_steps=0, ckpt_every=1000, keep_checkpoints=0))
    before = fixed_batch_loss(trainer)
    trainer.run()
    assert fixed_batch_loss(trainer) < 0.85 * before
    sidecar = json.loads((tmp_path / "run" / "last" / "unet.json").read_text())
    assert sidecar["prediction"] == "x0"
    with pytest.raises(DerainError, match="prediction"):  # resuming must keep what the U-Net predicts
        Trainer(tiny(tmp_path / "run", rain_data, prediction="noise", steps=61, resume=True))


@pytest.mark.parametrize("bad, message", [({"steps": 0}, "steps must be at least 1"),
                                          ({"schedule": "cosin"}, "choose from"),
                                          ({"prediction": "eps"}, "unknown prediction"),
                                          ({"t_min": 101}, "t_min must lie in 1..T")])
def test_bad_settings_are_refused_with_a_reason(tmp_path, rain_data, bad, message):
    with pytest.raises(DerainError, match=message):
        Trainer(tiny(tmp_path / "run", rain_data, **bad))


def test_training_without_data_is_refused(tmp_path):
    with pytest.raises(DerainError, match="no training data"):
        Trainer(TrainConfig(out=tmp_path / "run"))


def test_an_existing_run_is_not_overwritten_and_resume_keeps_the_sampling_settings(tmp_path, rain_data):
    out = tmp_path / "run"
    train(tiny(out, rain_data, steps=1))
    with pytest.raises(DerainError, match="already holds a training run"):
        Trainer(tiny(out, rain_data, steps=2))
    with pytest.raises(DerainError, match="--batch-size 2 in the run, 4 given"):
        Trainer(tiny(out, rain_data, steps=2, batch_size=4, resume=True))


@pytest.mark.parametrize("change, message", [({"nf": 16}, "--nf 8 in the run, 16 given"),
                                             ({"ch_mult": (1, 2, 2)}, "--ch-mult 1,2 in the run, 1,2,2 given"),
                                             ({"daclip": Path("daclip.pt")}, "--daclip off in the run, on given"),
                                             ({"T": 50}, "--sde-steps 100 in the run, 50 given"),
                                             ({"max_sigma": 10.0}, "--max-sigma 50 in the run, 10 given")])
def test_resuming_with_another_architecture_is_refused_naming_the_flag_and_both_values(tmp_path, rain_data,
                                                                                       change, message):
    out = tmp_path / "run"
    train(tiny(out, rain_data, steps=1))
    with pytest.raises(DerainError, match=f"cannot resume {out} with other settings: {message}") as refused:
        Trainer(tiny(out, rain_data, steps=2, resume=True, **change))
    assert "\n" not in str(refused.value)
    assert Trainer(tiny(out, rain_data, steps=2, resume=True)).step == 1  # the run's own flags still resume


def test_validation_logs_psnr_y_keeps_the_best_and_plots(tmp_path, rain_data):
    out = tmp_path / "run"
    result = train(tiny(out, rain_data, steps=4, val=rain_data, val_every=2, val_steps=3, val_crop=16,
                        val_limit=2))
    assert result == out / "best" / "unet.safetensors"
    rows = read_log(out / "log.csv")
    with (out / "log.csv").open() as file:
        assert next(csv.reader(file)) == ["step", "loss", "lr", "it/s", "val_psnr_y"]
    scored = [r for r in rows if r["val_psnr_y"] is not None]
    assert [r["step"] for r in scored] == [2, 4]
    best = json.loads((out / "best" / "unet.json").read_text())["training"]
    assert best["val_psnr_y"] == pytest.approx(max(r["val_psnr_y"] for r in scored), abs=1e-4)
    assert 5 < best["val_psnr_y"] < 60
    # A checkpoint written at a validated step records that step's score too.
    last = json.loads((out / "last" / "unet.json").read_text())["training"]
    assert last["step"] == 4
    assert last["val_psnr_y"] == pytest.approx(scored[-1]["val_psnr_y"], abs=1e-4)
    with Image.open(out / "loss.png") as image:
        assert image.size == (900, 600)


def test_plot_draws_curves_with_pillow_only(tmp_path):
    rows = [{"step": s, "loss": 0.05 / s, "lr": 1e-4, "it/s": 3.0, "val_psnr_y": 20 + s / 10 if s % 50 == 0 else None}
            for s in range(10, 210, 10)]
    plot_log(rows, tmp_path / "loss.png")
    with Image.open(tmp_path / "loss.png") as image:
        pixels = np.asarray(image.convert("RGB"))
    assert (pixels == (31, 119, 180)).all(axis=-1).sum() > 100  # the smoothed loss curve
    assert (pixels == (166, 206, 227)).all(axis=-1).sum() > 20  # the logged loss
    assert (pixels == (214, 39, 40)).all(axis=-1).sum() > 50  # the PSNR curve
    assert nice_ticks(0, 1) == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert nice_ticks(13, 1234) == [200, 400, 600, 800, 1000, 1200]


def test_fine_tuning_starts_from_the_given_weights(tmp_path, rain_data):
    torch.manual_seed(7)
    source = ConditionalUNet(nf=8, ch_mult=(1, 2), context_dim=None, use_degra_context=False)
    save_safetensors(source.state_dict(), tmp_path / "start.safetensors")
    trainer = Trainer(tiny(tmp_path / "run", rain_data, nf=64, from_weights=tmp_path / "start.safetensors"))
    assert trainer.model.config == source.config
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in trainer.model.state_dict().items())
    conditioned = ConditionalUNet(nf=32, ch_mult=(1, 2), context_dim=8)
    save_safetensors(conditioned.state_dict(), tmp_path / "conditioned.safetensors")
    with pytest.raises(DerainError, match="DA-CLIP"):
        Trainer(tiny(tmp_path / "run2", rain_data, from_weights=tmp_path / "conditioned.safetensors"))


def test_daclip_conditioned_training_feeds_both_embeddings_of_each_crop(tmp_path, rain_data, daclip_model_files):
    _, daclip_path = daclip_model_files
    trainer = Trainer(tiny(tmp_path / "run", rain_data, nf=16, steps=2, daclip=daclip_path))
    assert trainer.model.use_degra_context and trainer.model.use_image_context
    assert trainer.model.config["context_dim"] == 16
    seen = []
    forward = trainer.model.forward
    trainer.network = lambda *args, **context: seen.append(context) or forward(*args, **context)
    trainer.run()
    assert len(seen) == 2
    assert seen[0]["text_context"].shape == seen[0]["image_context"].shape == (2, 16)
    assert not torch.equal(seen[0]["text_context"][0], seen[0]["text_context"][1])  # one per crop
    assert np.isfinite(read_log(tmp_path / "run" / "log.csv")[-1]["loss"])


DDP_RUNNER = """
import json, sys, torch
torch.set_num_threads(1)
from derain_cli.train import TrainConfig, Trainer
config = TrainConfig(**json.loads(sys.argv[1]))
trainer = Trainer(config)
trainer.run()
torch.save(trainer.model.state_dict(), f"{config.out}/rank{trainer.dist.rank}.pt")
trainer.close()
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_gloo_processes_train_identically_and_match_one_process(tmp_path, rain_data):
    out = tmp_path / "ddp"
    config = {"out": str(out), "data": [str(rain_data)], "nf": 8, "ch_mult": [1, 2], "steps": 3, "batch_size": 4,
              "patch_size": 16, "lr": 2e-3, "warmup_steps": 0, "ckpt_every": 100, "keep_checkpoints": 0,
              "log_every": 1, "num_workers": 0, "device": "cpu"}
    port = str(free_port())
    procs = []
    for rank in range(2):
        env = dict(os.environ, WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=port, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
        procs.append(subprocess.Popen([sys.executable, "-c", DDP_RUNNER, json.dumps(config)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [proc.communicate(timeout=120)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], logs
    rank0 = torch.load(out / "rank0.pt", weights_only=True)
    rank1 = torch.load(out / "rank1.pt", weights_only=True)
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert (out / "last" / "unet.safetensors").exists()
    assert [r["step"] for r in read_log(out / "log.csv")] == [1, 2, 3]  # written by rank 0 alone

    single = Trainer(TrainConfig(**{**config, "out": tmp_path / "single"}))
    single.run()
    for name, tensor in single.model.state_dict().items():
        torch.testing.assert_close(rank0[name], tensor, rtol=0, atol=1e-5)
    assert all(np.isfinite(r["loss"]) for r in read_log(out / "log.csv"))
