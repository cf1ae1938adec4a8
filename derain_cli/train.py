"""Training the IR-SDE noise-prediction U-Net on paired images, with or without DA-CLIP conditioning.

Objective (IR-SDE, Luo et al. 2023, eq. 11-12, as the reference ``MatchingLoss('l1')``, weight 1):
for a random time t in 1..T and x_t = mu_bar_t(x_0) + sigma_bar_t * eps, the mean of x_{t-1} that
the reverse SDE takes from the predicted noise must match the optimal posterior mean given the
clean image, in L1. With ``prediction="x0"`` (not the reference's; our compact model's) the U-Net
outputs the clean image itself and the loss is the L1 between it and the ground truth; sampling
turns that estimate into the noise it implies (see IRSDE.sample). ``t_min`` > 1 draws the times
from t_min..T only. AdamW, linear warm-up then cosine learning rate, gradient clipping, an EMA of
the weights (the EMA is what gets exported), mixed precision on CUDA, DDP under ``torchrun``.

Every random draw of step s depends only on (seed, s): the data (see derain_cli.data) and the time
steps and noise of each sample (drawn from a generator seeded by the sample's number). So a run
that is stopped and resumed from its checkpoint ends with the same weights, bit for bit, as one
that was not (on the CPU, or wherever the kernels are deterministic), and a distributed run sees the
samples of a single-process run with the same global batch.

Run folder: see derain_cli.runs. The exported weights are the EMA's; ``unet.json`` holds {"unet":
constructor kwargs, "sde": IRSDE kwargs, "prediction": "noise" or "x0", "steps" and "sampler" (only
where ``val_steps``/``val_sampler`` were given: the weights' defaults for ``derain run --unet``),
"training": {...}}; ``state.pt``'s "model" entry holds the raw weights, which ``load_unet`` reads;
``log.csv``, ``loss.png`` and ``train.log`` lie beside them. Validation restores with the pipeline
the exported weights run in.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from derain_cli.checkpoints import load_daclip, load_unet
from derain_cli.data import (STREAM_NOISE, PairedFolder, PairImages, RainOnClean, RandomPatches, StepBatches,
                             ValidationPairs, find_pairs, torch_generator)
from derain_cli.devices import resolve_device
from derain_cli.errors import DerainError
from derain_cli.metrics import score_pair
from derain_cli.pipeline import DerainPipeline, SampleOptions
from derain_cli.runs import STATE_FORMAT, RunFolder, check_fixed_settings, rng_state, set_rng_state, step_name
from derain_cli.sde import IRSDE, PREDICTIONS, SAMPLERS, SCHEDULES
from derain_cli.synth import PRESETS
from derain_cli.trainlog import append_row, plot_log, read_log, trim_log
from derain_cli.unet import ConditionalUNet

if TYPE_CHECKING:  # open_clip is slow to import: only runs with DA-CLIP pay for it
    from derain_cli.daclip import DACLIP

# Settings that change which samples, noise or model a step sees, with the flag that sets each;
# resuming with others is refused.
RESUME_FIXED = {"batch_size": "--batch-size", "patch_size": "--patch-size", "seed": "--seed",
                "max_sigma": "--max-sigma", "T": "--sde-steps", "schedule": "--schedule", "eps": "--eps",
                "prediction": "--prediction", "t_min": "--t-min", "nf": "--nf", "ch_mult": "--ch-mult",
                "daclip": "--daclip", "use_degra_context": "use_degra_context",
                "use_image_context": "use_image_context"}
VAL_STEPS, VAL_SAMPLER = 10, "posterior"  # how validation samples unless val_steps / val_sampler are given


@dataclass
class TrainConfig:
    """Everything a training run depends on; defaults follow the reference's universal-ir options."""

    out: Path = Path("runs/derain")
    data: list[Path] = field(default_factory=list)  # folders holding LQ/ and GT/
    pairs: list[tuple[Path, Path]] = field(default_factory=list)  # explicit (LQ folder, GT folder)
    synth: list[Path] = field(default_factory=list)  # folders of clean photos: rain rendered on the fly
    synth_presets: list[tuple[str, int]] = field(default_factory=lambda: [("heavy", 1)])  # (preset, copies) for each
    val: Path | None = None  # folder holding LQ/ and GT/ for validation PSNR_Y
    # model: a new U-Net from nf/ch_mult, or the weights of from_weights (architecture inferred)
    nf: int = 64
    ch_mult: tuple[int, ...] = (1, 2, 4, 8)
    from_weights: Path | None = None
    daclip: Path | None = None  # frozen DA-CLIP weights: condition on its embeddings; None: plain U-Net
    use_degra_context: bool = True  # new U-Net with DA-CLIP: degradation prompt on the time embedding
    use_image_context: bool = True  # new U-Net with DA-CLIP: cross-attention to the content embedding
    grad_checkpointing: bool = False
    # SDE (max_sigma on the 0-255 scale)
    max_sigma: float = 50.0
    T: int = 100
    schedule: str = "cosine"
    eps: float = 0.005
    prediction: str = "noise"  # what the U-Net outputs: "noise" (the reference) or "x0" (the clean image)
    t_min: int = 1  # training times are uniform in t_min..T (1: the reference; near T: for few-step x0 models)
    # optimisation
    steps: int = 100_000
    stop_after: int | None = None  # end this invocation after this step (saved; --resume goes on to `steps`)
    batch_size: int = 4  # global batch, split between distributed processes
    patch_size: int = 128
    lr: float = 2e-4
    lr_min: float = 1e-6
    warmup_steps: int = 500
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float | None = 1.0  # max global gradient norm; None: no clipping
    ema_decay: float = 0.995
    ema_every: int = 10  # steps between updates of the average (after ema_start)
    ema_start: int = 100  # the EMA copies the weights at every step up to this one, then averages
    # bookkeeping
    ckpt_every: int = 1000
    keep_checkpoints: int = 3  # newest step-NNNNNNNN/ folders kept (0: none written)
    val_every: int = 1000
    val_steps: int | None = None  # sampler steps for validation (None: VAL_STEPS); given: the weights' default
    val_sampler: str | None = None  # sampler for validation (None: VAL_SAMPLER); given: the weights' default
    val_crop: int | None = None  # score centre crops of this size instead of whole images
    val_limit: int | None = None  # score only the first N validation pairs
    val_seed: int = 0
    log_every: int = 10
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # mixed precision (bf16, else fp16 with loss scaling) on CUDA only
    num_workers: int = 2
    cache_images: bool = True
    resume: bool = False

    def check(self) -> None:
        """Raise DerainError naming the first setting that is out of range."""
        positive = ("nf", "steps", "batch_size", "patch_size", "T", "ckpt_every", "val_every", "log_every",
                    "ema_every", "val_steps")  # val_steps may also be None
        for name in positive:
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise DerainError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.data and not self.pairs and not self.synth:
            raise DerainError("no training data: give a data folder (LQ/ + GT/), an LQ/GT folder pair "
                              "or a folder of clean photos to render rain on")
        for preset, copies in self.synth_presets:
            if preset not in PRESETS or copies < 1:
                raise DerainError(f"synthetic rain {preset}:{copies}: expected a preset of {sorted(PRESETS)} "
                                  "and at least 1 copy")
        if not 1 <= self.t_min <= self.T:
            raise DerainError(f"t_min must lie in 1..T ({self.T}), got {self.t_min}")
        if self.prediction not in PREDICTIONS:
            raise DerainError(f"unknown prediction {self.prediction!r}; choose from {list(PREDICTIONS)}")
        if self.schedule not in SCHEDULES:
            raise DerainError(f"unknown schedule {self.schedule!r}; choose from {sorted(SCHEDULES)}")
        if self.val_sampler is not None and self.val_sampler not in SAMPLERS:
            raise DerainError(f"unknown validation sampler {self.val_sampler!r}; choose from {list(SAMPLERS)}")
        if not 0 <= self.ema_decay < 1:
            raise DerainError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if self.lr <= 0 or self.lr_min < 0 or self.warmup_steps < 0 or self.num_workers < 0:
            raise DerainError("lr must be positive; lr_min, warmup_steps and num_workers non-negative")

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain JSON/pickle-safe values (paths as strings)."""
        def plain(value: Any) -> Any:
            if isinstance(value, Path):
                return str(value)
            if isinstance(value, (list, tuple)):
                return [plain(v) for v in value]
            return value

        return {key: plain(value) for key, value in asdict(self).items()}

    def fixed_settings(self) -> dict[str, str]:
        """The settings a resumed run must keep (RESUME_FIXED), as flag -> value shown as on the command line."""
        values = {**self.to_dict(), "daclip": "off" if self.daclip is None else "on"}
        return {flag: _shown(values[name]) for name, flag in RESUME_FIXED.items()}


def _shown(value: Any) -> str:
    """A setting as typed on the command line: lists comma-separated, floats exact but without a trailing .0."""
    if isinstance(value, list):
        return ",".join(_shown(v) for v in value)
    text = repr(value) if isinstance(value, float) else str(value)
    return text.removesuffix(".0") if isinstance(value, float) else text


@dataclass(frozen=True)
class StepInfo:
    """What the progress callback hears after every step (on the main process)."""

    step: int
    steps: int
    loss: float
    lr: float
    its: float  # steps per second, smoothed
    val_psnr_y: float | None  # this step's validation score, if it validated
    best_psnr_y: float | None


class TrainingStopped(DerainError):
    """SIGINT/SIGTERM stopped training after a complete step; its checkpoint was saved."""

    def __init__(self, step: int, folder: Path, signum: int | None) -> None:
        self.step, self.folder, self.signum = step, folder, signum
        name = signal.Signals(signum).name if signum else "another process"
        super().__init__(f"stopped by {name} at step {step} (saved in {folder}); --resume continues")

    @property
    def exit_code(self) -> int:
        """The shell's code for death by the signal: 130 for SIGINT, 143 for SIGTERM (also when another process stopped)."""
        return 128 + (self.signum or signal.SIGTERM)


class _ValidationStopped(Exception):
    """A stop request arrived during validation: the score is abandoned."""


# -- objective, schedule, EMA -------------------------------------------------------------------


def matching_loss(sde: IRSDE, noise_pred: Tensor, x_t: Tensor, x0: Tensor, mu: Tensor, t: Tensor) -> Tensor:
    """L1 between the reverse-SDE mean of x_{t-1} from the predicted noise and the optimal posterior mean (eq. 11-12).

    Per-sample means averaged over the batch, as the reference's MatchingLoss('l1') with weight 1.
    """
    predicted = sde.reverse_sde_mean(x_t, mu, noise_pred, t)
    target = sde.optimal_posterior_mean(x_t, x0, mu, t)
    return F.l1_loss(predicted, target)


def draw_times_and_noise(keys: list[int], seed: int, T: int, shape: tuple[int, ...],
                         t_min: int = 1) -> tuple[Tensor, Tensor]:
    """Time steps uniform in t_min..T and standard normal noise, per sample from the generator of (seed, key)."""
    times, noises = [], []
    for key in keys:
        generator = torch_generator(seed, key, STREAM_NOISE)
        times.append(torch.randint(t_min, T + 1, (1,), generator=generator))
        noises.append(torch.randn(shape, generator=generator))
    return torch.cat(times), torch.stack(noises)


def lr_at(step: int, config: TrainConfig) -> float:
    """Learning rate of step (1-based): linear warm-up to lr, then cosine decay to lr_min at the last step."""
    if step <= config.warmup_steps:
        return config.lr * step / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps))
    return config.lr_min + 0.5 * (config.lr - config.lr_min) * (1 + math.cos(math.pi * progress))


class EMA:
    """Exponential moving average of a model's weights.

    Up to step ``start`` it copies the weights at every step (so a run that ends there exports its
    trained weights); after, it averages every ``every`` steps with a decay that warms up as
    1 - (1 + s - start)^(-2/3) capped at ``decay`` (the inverse-power warm-up of ema_pytorch that
    the reference uses).
    """

    def __init__(self, model: nn.Module, decay: float = 0.995, every: int = 10, start: int = 100) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.every, self.start = decay, every, start

    def decay_at(self, step: int) -> float:
        """Weight of the average at step (0 means copy the model)."""
        if step <= self.start:
            return 0.0
        return min(self.decay, 1 - (1 + step - self.start) ** (-2 / 3))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Copy ``model`` up to step ``start``; after, move the average towards it at multiples of ``every``."""
        if step > self.start and step % self.every:
            return
        decay = self.decay_at(step)
        averages = self.model.state_dict()
        for name, value in model.state_dict().items():
            average = averages[name]
            if average.is_floating_point():
                average.lerp_(value.to(average.dtype), 1 - decay)
            else:
                average.copy_(value)


# -- distributed helpers ------------------------------------------------------------------------


@dataclass(frozen=True)
class DistInfo:
    """Rank, world size and local rank of this process (0, 1, 0 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group that torchrun describes (WORLD_SIZE > 1): nccl on CUDA, gloo otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def _all_sum(values: list[float], info: DistInfo, device: torch.device) -> list[float]:
    """Sum a few numbers over all processes (identity when not distributed)."""
    if info.world_size == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


# -- the trainer --------------------------------------------------------------------------------


class Trainer:
    """Builds the model, data and optimiser of a TrainConfig (resuming when asked) and runs the loop."""

    def __init__(self, config: TrainConfig, notify: Callable[[str], None] | None = None) -> None:
        config.check()
        self.config = config
        self.out = Path(config.out)
        self.run_folder = RunFolder(self.out)
        self._notify = notify
        device, warning = resolve_device(config.device)
        self.dist = init_distributed(device.type)
        if device.type == "cuda" and self.dist.world_size > 1:
            device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(device)
        self.device = device
        self.is_main = self.dist.rank == 0
        if warning:
            self.note(warning)
        self.amp_dtype: torch.dtype | None = None  # fp32 off CUDA or without amp; else bf16 where supported, else fp16
        if config.amp and device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.sde = IRSDE(config.max_sigma, config.T, config.schedule, config.eps)  # type: ignore[arg-type]
        state = self._resume_state()
        self.daclip: DACLIP | None = None  # frozen DA-CLIP, or None for a plain U-Net
        if config.daclip is not None:
            self.daclip = load_daclip(config.daclip).to(device).requires_grad_(False)
        self.model = self._build_model(state).to(device)
        self.model.gradient_checkpointing = config.grad_checkpointing
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, betas=config.betas,
                                           weight_decay=config.weight_decay)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.ema = EMA(self.model, config.ema_decay, config.ema_every, config.ema_start)
        self.step, self.best_psnr_y, self.best_step = 0, None, 0
        self.log_window: list[float] = [0.0, 0]  # loss sum and step count since the last log row
        if state is not None:
            self._load_state(state)
        self.network: nn.Module = self.model
        if self.dist.world_size > 1:
            ids = [device.index] if device.type == "cuda" else None
            self.network = DistributedDataParallel(self.model, device_ids=ids)
        self.train_images = PairImages(self._train_folders(), cache=config.cache_images)
        self.val_pairs = None if config.val is None else ValidationPairs(
            PairImages([find_pairs(config.val)], cache=config.cache_images), config.val_crop, config.val_limit)
        self._stop_signal: int | None = None
        self._complete = True
        self._saved_step = self.step  # the step last/ holds

    # -- setup --

    def note(self, message: str, tell: bool = True) -> None:
        """Tell the user something (unless not ``tell``) and append it to train.log, on the main process."""
        if not self.is_main:
            return
        if self._notify is not None and tell:
            self._notify(message)
        self.out.mkdir(parents=True, exist_ok=True)
        with (self.out / "train.log").open("a") as log:
            log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")

    def _resume_state(self) -> dict[str, Any] | None:
        """The saved state of ``out/last`` when resuming (same fixed settings); refuse to overwrite a run otherwise."""
        if self.is_main:
            self.run_folder.recover()
        exists = self.run_folder.state_path.exists()
        if not self.config.resume:
            if exists:
                raise DerainError(f"{self.out} already holds a training run: resume it or choose another folder")
            return None
        if not exists:
            self.note(f"nothing to resume in {self.out}: starting a new run")
            return None
        state = self.run_folder.read_state()
        saved = TrainConfig(**{**TrainConfig().to_dict(), **state["config"]})  # older runs used the defaults
        check_fixed_settings(self.out, saved.fixed_settings(), self.config.fixed_settings())
        return state

    def _build_model(self, state: dict[str, Any] | None) -> ConditionalUNet:
        """The U-Net: as saved when resuming, from_weights when given, else a new one seeded by ``seed``."""
        config = self.config
        torch.manual_seed(config.seed)
        if state is not None:
            model = ConditionalUNet(**state["unet"])
        elif config.from_weights is not None:
            model = load_unet(config.from_weights).train()
        else:
            daclip = self.daclip is not None
            model = ConditionalUNet(nf=config.nf, ch_mult=config.ch_mult,
                                    context_dim=self.daclip.clip.visual.output_dim if daclip else None,
                                    use_degra_context=daclip and config.use_degra_context,
                                    use_image_context=daclip and config.use_image_context)
        needs = model.use_degra_context or model.use_image_context
        if needs and self.daclip is None:
            raise DerainError("this U-Net is conditioned on DA-CLIP embeddings: give the DA-CLIP weights")
        if not needs and self.daclip is not None:
            raise DerainError("this U-Net takes no DA-CLIP conditioning: train it without DA-CLIP")
        return model.train()

    def _load_state(self, state: dict[str, Any]) -> None:
        """Restore weights, optimiser, loss scale, EMA, step, best score and the global RNGs."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.ema.model.load_state_dict(state["ema"])
        self.step, self.best_psnr_y, self.best_step = state["step"], state["best_psnr_y"], state["best_step"]
        self.log_window = state["log_window"] if self.is_main else [0.0, 0]  # rank 0's share of the window
        set_rng_state(state["rng"])
        self.note(f"resumed from {self.out / 'last'} at step {self.step}")

    def _train_folders(self) -> list[PairedFolder | RainOnClean]:
        """The training folders, with a note for files that found no partner."""
        folders: list[PairedFolder | RainOnClean] = [find_pairs(d) for d in self.config.data]
        folders += [PairedFolder(lq, gt) for lq, gt in self.config.pairs]
        folders += [RainOnClean(d, preset, copies) for d in self.config.synth
                    for preset, copies in self.config.synth_presets]
        for folder in folders:
            for path in [*folder.unpaired_lq, *folder.unpaired_gt]:
                self.note(f"unpaired, not used: {path}")
        return folders

    # -- one step --

    def _autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for the networks on CUDA; a no-op elsewhere."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    @torch.no_grad()
    def context(self, lq: Tensor) -> dict[str, Tensor]:
        """DA-CLIP content and degradation embeddings of each LQ image, as the reference (empty without DA-CLIP)."""
        if self.daclip is None:
            return {}
        from derain_cli.daclip import clip_preprocess

        with self._autocast():
            content, degradation = self.daclip.encode_image(clip_preprocess(lq, self.daclip.image_size), control=True)
        return {"image_context": content.float(), "text_context": degradation.float()}

    def train_step(self, batch: dict[str, Tensor], step: int) -> Tensor:
        """One optimiser step on a batch; returns the (detached) loss of this process's samples."""
        lq = batch["lq"].to(self.device, non_blocking=True)
        gt = batch["gt"].to(self.device, non_blocking=True)
        t, noise = draw_times_and_noise(batch["key"].tolist(), self.config.seed, self.config.T, tuple(lq.shape[1:]),
                                        self.config.t_min)
        t, noise = t.to(self.device), noise.to(self.device)
        x_t = self.sde.noisy_state(gt, lq, t, noise)
        context = self.context(lq)
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(step, self.config)
        with self._autocast():
            out = self.network(x_t, lq, t, **context).float()
        if self.config.prediction == "x0":
            loss = F.l1_loss(out, gt)
        else:
            loss = matching_loss(self.sde, out, x_t, gt, lq, t)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.config.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.ema.update(self.model, step)
        return loss.detach()

    # -- validation --

    def _stop_if_requested(self, *_: int) -> None:
        """Abandon validation when a stop was requested (called between images and sampler steps)."""
        if self._stop_signal is not None:
            raise _ValidationStopped

    def validate(self) -> float | None:
        """Mean PSNR_Y of the EMA model's 8-bit restorations over the validation pairs; None if a stop cut it short.

        Whole images, seeded, VAL_STEPS steps of VAL_SAMPLER unless the config says, in the fp32 pipeline
        that runs exported weights.
        """
        assert self.val_pairs is not None
        pipeline = DerainPipeline(self.ema.model, self.sde, self.daclip, device=self.device, dtype=torch.float32,
                                  prediction=self.config.prediction)  # type: ignore[arg-type]
        options = SampleOptions(steps=self.config.val_steps or VAL_STEPS, seed=self.config.val_seed, tile=None,
                                sampler=self.config.val_sampler or VAL_SAMPLER)  # type: ignore[arg-type]
        total, count, stopped = 0.0, 0, 0.0
        try:
            for i in range(self.dist.rank, len(self.val_pairs), self.dist.world_size):
                self._stop_if_requested()
                _, lq, gt = self.val_pairs[i]
                out = pipeline.restore(lq[None], options, callback=self._stop_if_requested)
                image = (out[0] * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
                total += score_pair(image, gt)["psnr_y"]
                count += 1
        except _ValidationStopped:
            stopped = 1.0
        total, count, stopped = _all_sum([total, count, stopped], self.dist, self.device)
        return None if stopped else total / count

    # -- checkpoints --

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume, as tensors and plain Python values only."""
        return {
            "format": STATE_FORMAT,
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "best_psnr_y": self.best_psnr_y,
            "best_step": self.best_step,
            "log_window": self.log_window,
            "rng": rng_state(),
            "sampler": {"next_sample": self.step * self.config.batch_size, "seed": self.config.seed},
            "unet": self.model.config,
            "sde": self.sde.config,
            "config": self.config.to_dict(),
        }

    def sidecar(self, val_psnr_y: float | None = None) -> dict[str, Any]:
        """unet.json: how to build the exported U-Net, the validation's sampling where it was given, its training."""
        training = {"step": self.step, "val_psnr_y": val_psnr_y, "daclip": self.config.to_dict()["daclip"],
                    "t_min": self.config.t_min}
        chosen = {"steps": self.config.val_steps, "sampler": self.config.val_sampler}
        return {"unet": self.model.config, "sde": self.sde.config, "prediction": self.config.prediction,
                **{key: value for key, value in chosen.items() if value is not None}, "training": training}

    def save(self, name: str, val_psnr_y: float | None = None) -> None:
        """Write EMA weights, their JSON config and the resumable state to out/name (atomically)."""
        self.run_folder.write(name, self.ema.model.state_dict(), self.sidecar(val_psnr_y), self.state_dict())
        if name == "last":
            self._saved_step = self.step

    def _save_last(self) -> None:
        """Write last/ unless it already holds this step."""
        if self._saved_step != self.step:
            self.save("last")

    def _save_periodic(self, val_psnr_y: float | None = None) -> None:
        """Write last/ and a step-numbered copy, keeping only the newest few numbered ones."""
        self.save("last", val_psnr_y)
        if self.config.keep_checkpoints > 0:
            self.save(step_name(self.step), val_psnr_y)
            self.run_folder.prune(self.config.keep_checkpoints)

    # -- the loop --

    def run(self, progress: Callable[[StepInfo], None] | None = None) -> Path:
        """Train until config.steps (saving, validating and logging as configured); return the weights."""
        config = self.config
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            trim_log(self.out / "log.csv", self.step)
        if self.step >= min(config.steps, config.stop_after or config.steps):
            self.note(f"already trained {self.step} of {config.steps} steps")
            return self.run_folder.exported_weights()
        dataset = RandomPatches(self.train_images, config.patch_size, config.seed)
        batches = StepBatches(config.batch_size, config.steps, self.step, self.dist.rank, self.dist.world_size)
        loader = DataLoader(dataset, batch_sampler=batches, num_workers=config.num_workers,
                            pin_memory=self.device.type == "cuda")
        params = sum(p.numel() for p in self.model.parameters())
        self.note(f"training {params:,} parameters on {self.device} x{self.dist.world_size}, "
                  f"{len(self.train_images)} pairs, steps {self.step + 1}..{config.steps}")
        try:
            with self._stop_requests():
                self._loop(loader, progress)
        except KeyboardInterrupt:
            if self._complete and self.is_main:
                self._save_last()
                self.note(f"interrupted: saved step {self.step} in {self.out / 'last'}")
            raise
        finally:
            if self.is_main:
                plot_log(read_log(self.out / "log.csv"), self.out / "loss.png")
        return self.run_folder.exported_weights()

    def _loop(self, loader: DataLoader, progress: Callable[[StepInfo], None] | None) -> None:
        """The training steps, with logging, validation, checkpoints and stop requests between them."""
        config = self.config
        window_start, window_first = time.perf_counter(), self.step
        its, last_time = 0.0, time.perf_counter()
        for batch in loader:
            step = self.step + 1
            self._complete = False
            loss = self.train_step(batch, step)
            self.step = step
            self._complete = True
            loss_value = float(loss)
            self.log_window = [self.log_window[0] + loss_value, self.log_window[1] + 1]
            now = time.perf_counter()
            rate, last_time = 1 / max(now - last_time, 1e-9), now
            its = rate if its == 0 else 0.9 * its + 0.1 * rate
            validates = self.val_pairs is not None and (step % config.val_every == 0 or step == config.steps)
            val = self._validate_and_keep_best() if validates else None
            if step % config.log_every == 0 or validates or step == config.steps:
                total, count = _all_sum(self.log_window, self.dist, self.device)
                window_rate = (step - window_first) / max(time.perf_counter() - window_start, 1e-9)
                if self.is_main:
                    append_row(self.out / "log.csv", step, total / count, lr_at(step, config), window_rate, val)
                self.log_window = [0.0, 0]
                window_start, window_first = time.perf_counter(), step
            if self.is_main and (step % config.ckpt_every == 0 or step == config.steps):
                self._save_periodic(val)
                plot_log(read_log(self.out / "log.csv"), self.out / "loss.png")
            if progress is not None and self.is_main:
                progress(StepInfo(step, config.steps, loss_value, lr_at(step, config), its, val, self.best_psnr_y))
            self._check_stop()
            if config.stop_after is not None and step >= config.stop_after:
                if self.is_main:
                    self._save_last()
                self.note(f"stopped after step {step} as asked; continue with resume")
                break

    def _validate_and_keep_best(self) -> float | None:
        """Validate; save best/ when the score beats the best so far (None: a stop request cut it short)."""
        score = self.validate()
        if score is None:
            self.note(f"step {self.step}: validation stopped by the stop request, not scored")
            return None
        if self.best_psnr_y is None or score > self.best_psnr_y:
            self.best_psnr_y, self.best_step = score, self.step
            if self.is_main:
                self.save("best", score)
        self.note(f"step {self.step}: validation PSNR_Y {score:.3f} dB "
                  f"(best {self.best_psnr_y:.3f} at step {self.best_step})")
        return score

    @contextlib.contextmanager
    def _stop_requests(self) -> Iterator[None]:
        """Turn SIGINT/SIGTERM into a stop after the current step (a second SIGINT interrupts at once)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request(signum: int, frame: object) -> None:
            if self._stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self._stop_signal = signum

        previous = {sig: signal.signal(sig, request) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _check_stop(self) -> None:
        """After a step: if any process was asked to stop, save last/ and raise TrainingStopped."""
        requested, _ = _all_sum([float(self._stop_signal is not None), 0.0], self.dist, self.device)
        if not requested:
            return
        if self.is_main:
            self._save_last()
        stopped = TrainingStopped(self.step, self.out / "last", self._stop_signal)
        self.note(str(stopped), tell=False)  # the caller says it
        raise stopped

    def close(self) -> None:
        """Leave the process group if this trainer joined one."""
        if self.dist.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def train(config: TrainConfig, progress: Callable[[StepInfo], None] | None = None,
          notify: Callable[[str], None] | None = None) -> Path:
    """Train (or resume) as configured; return the exported EMA weights (best/ if validated, else last/)."""
    trainer = Trainer(config, notify)
    try:
        return trainer.run(progress)
    finally:
        trainer.close()
