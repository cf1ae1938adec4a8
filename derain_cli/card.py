"""Model cards: how to run a model, defined once and parsed strictly (importable without torch).

A card holds a model's run configuration: its IR-SDE, what its U-Net predicts, the default sampler
and step count, the samplers and step counts it supports, the tile size and precision it was chosen
with, and for a cascade (the bundled `compact`) its further passes. The same parser reads a model
entry of the weights manifest and the JSON beside a checkpoint (`NAME.json` next to
`NAME.safetensors`): an unknown key or value is an error naming the file, the key and the choices.

Every string choice and limit of the run configuration is defined here and imported elsewhere.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Mapping

from derain_cli.errors import CardError, UsageError

SCHEDULES = ("cosine", "linear", "constant")
SAMPLERS = ("posterior", "sde", "ode", "mr")  # "mr": MaRS (derain_cli.mars)
PREDICTIONS = ("noise", "x0")  # what the U-Net outputs: the noise of x_t (the reference) or the clean image
PRECISIONS = ("fp32", "bf16", "fp16")
ENSEMBLE_SIZES = (1, 2, 4)  # flip self-ensemble members (see derain_cli.ensemble)
MIN_TILE = 64  # smallest tile, in pixels, that tiling uses or a card may ask for
FAST_CALLS = 20  # network calls of the fast path (`--fast`): MaRS keeps 100-step quality at 10-20 calls

# The universal model's SDE (the reference's test options), also used for a bare checkpoint file.
DEFAULT_SDE = {"max_sigma": 50.0, "T": 100, "schedule": "cosine", "eps": 0.005}

_SDE_KEYS = frozenset(DEFAULT_SDE)
CARD_KEYS = frozenset({"sde", "prediction", "sampler", "steps", "samplers", "steps_range", "fast", "tile",
                       "precision", "passes", "repeat_above", "repeat_unet", "description"})


@dataclass(frozen=True)
class SDESettings:
    """IR-SDE settings of a model; ``max_sigma`` is on the 0-255 scale, as in the reference."""

    max_sigma: float = DEFAULT_SDE["max_sigma"]
    T: int = DEFAULT_SDE["T"]
    schedule: str = DEFAULT_SDE["schedule"]
    eps: float = DEFAULT_SDE["eps"]


@dataclass(frozen=True)
class CascadeCard:
    """Further passes of a model on its own output: ``passes`` runs in all (1: none unless asked for).

    With ``repeat_above`` an image gets a further pass only when the previous one changed it by more
    than that mean absolute difference (0-255 scale); one threshold per further pass, the last one
    serving any pass beyond. ``unet`` names the further passes' U-Net (a weights name in a manifest,
    a file beside the checkpoint in a JSON config); None runs the first U-Net again.
    """

    passes: int
    repeat_above: tuple[float, ...] | None = None
    unet: str | None = None

    def threshold(self, done: int) -> float | None:
        """The change a pass must exceed for a further one, after ``done`` passes (None: always)."""
        if self.repeat_above is None:
            return None
        return self.repeat_above[min(done, len(self.repeat_above)) - 1]


@dataclass(frozen=True)
class ModelCard:
    """A model's run configuration: the defaults `derain` and the library use, and what it supports."""

    sde: SDESettings = field(default_factory=SDESettings)
    prediction: str = "noise"
    sampler: str = "posterior"
    steps: int | None = None  # default sampler steps; None: T
    samplers: tuple[str, ...] = SAMPLERS  # the samplers the model supports
    steps_range: tuple[int, int] | None = None  # the step counts it supports; None: 1..T
    fast: tuple[str, int] | None = None  # (sampler, steps) of `--fast`; None: MaRS at FAST_CALLS, or the default
    tile: int | None = None  # the tile `--tile auto` uses; None: the largest that fits the free memory
    precision: str | None = None  # what `--precision auto` uses; None: fp16 autocast on CUDA, fp32 elsewhere
    cascade: CascadeCard | None = None
    description: str = ""

    @property
    def step_limits(self) -> tuple[int, int]:
        """The smallest and largest supported step counts."""
        return self.steps_range or (1, self.sde.T)

    @property
    def fast_sampling(self) -> tuple[str, int]:
        """The sampler and steps of the fast path: the card's, else MaRS at FAST_CALLS calls if supported,
        else the default sampling when it takes no more calls than that."""
        if self.fast is not None:
            return self.fast
        low, high = self.step_limits
        if "mr" in self.samplers and low <= min(FAST_CALLS, high):
            return "mr", max(low, min(FAST_CALLS, high))
        steps = self.steps or self.sde.T
        if steps > FAST_CALLS:
            raise UsageError(f"--fast: this model has no fast path (its samplers: {', '.join(self.samplers)})")
        return self.sampler, steps

    def check_sampling(self, sampler: str | None, steps: int | None) -> None:
        """Raise UsageError unless the model supports ``sampler`` at ``steps`` (None: its defaults)."""
        if sampler is not None and sampler not in self.samplers:
            raise UsageError(f"--sampler {sampler}: this model supports {', '.join(self.samplers)}")
        low, high = self.step_limits
        if steps is not None and not low <= steps <= high:
            raise UsageError(f"--steps {steps}: this model supports {low}..{high} steps")


def parse_card(raw: Any, where: str, ignore: frozenset[str] = frozenset()) -> ModelCard:
    """Validate a model entry or checkpoint config; ``ignore`` names keys the caller reads itself."""
    check_keys(raw, where, required=set(), optional=CARD_KEYS | ignore)
    sde = _parse_sde(raw.get("sde", DEFAULT_SDE), f"{where} sde")
    prediction = _choice(raw, "prediction", PREDICTIONS, where, "noise")
    sampler = _choice(raw, "sampler", SAMPLERS, where, "posterior")
    steps = raw.get("steps")
    if steps is not None and not _is_count(steps):
        raise CardError(f"{where}: 'steps' must be a positive number of sampler steps or null, got {steps!r}")
    samplers = raw.get("samplers", list(SAMPLERS))
    if not (isinstance(samplers, list) and samplers and all(s in SAMPLERS for s in samplers)):
        raise CardError(f"{where}: 'samplers' must be a list of samplers from {list(SAMPLERS)}, got {samplers!r}")
    steps_range = raw.get("steps_range")
    if steps_range is not None and not (isinstance(steps_range, list) and len(steps_range) == 2
                                        and all(map(_is_count, steps_range)) and steps_range[0] <= steps_range[1]
                                        and steps_range[1] <= sde.T):
        raise CardError(f"{where}: 'steps_range' must be [lowest, highest] step counts within 1..T ({sde.T}) "
                        f"or null, got {steps_range!r}")
    fast = raw.get("fast")
    if fast is not None and not (isinstance(fast, dict) and set(fast) == {"sampler", "steps"}
                                 and fast["sampler"] in samplers and _is_count(fast["steps"])):
        raise CardError(f"{where}: 'fast' must be {{\"sampler\": one of {samplers}, \"steps\": N}} or null, got {fast!r}")
    tile = raw.get("tile")
    if tile is not None and not (_is_count(tile) and tile >= MIN_TILE):
        raise CardError(f"{where}: 'tile' must be a tile size of at least {MIN_TILE} pixels or null, got {tile!r}")
    precision = raw.get("precision")
    if precision is not None and precision not in PRECISIONS:
        raise CardError(f"{where}: 'precision' must be one of {', '.join(PRECISIONS)} or null, got {precision!r}")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise CardError(f"{where}: 'description' must be text, got {description!r}")
    card = ModelCard(sde=sde, prediction=prediction, sampler=sampler, steps=steps, samplers=tuple(samplers),
                     steps_range=tuple(steps_range) if steps_range else None,
                     fast=(fast["sampler"], fast["steps"]) if fast else None, tile=tile, precision=precision,
                     cascade=_parse_cascade(raw, where), description=description)
    low, high = card.step_limits
    for name, (chosen, count) in (("default", (sampler, steps or sde.T)), *((("fast", card.fast),) if fast else ())):
        if chosen not in card.samplers or not low <= count <= high:
            raise CardError(f"{where}: the {name} sampler {chosen!r} at {count} steps is outside what the card "
                            f"supports ({list(card.samplers)}, steps {low}..{high})")
    return card


def _parse_cascade(raw: Mapping[str, Any], where: str) -> CascadeCard | None:
    """The further passes (`passes`, `repeat_above`, `repeat_unet`), or None for a single pass."""
    passes, repeat_above, unet = raw.get("passes", 1), raw.get("repeat_above"), raw.get("repeat_unet")
    if not _is_count(passes):
        raise CardError(f"{where}: 'passes' must be a positive number of runs, got {passes!r}")
    thresholds = repeat_above if isinstance(repeat_above, list) else [repeat_above]
    if repeat_above is not None and not (thresholds and all(map(_is_change, thresholds))):
        raise CardError(f"{where}: 'repeat_above' must be a mean absolute change in 0..255, a list of them "
                        f"(one per further pass) or null, got {repeat_above!r}")
    if unet is not None and not (isinstance(unet, str) and unet):
        raise CardError(f"{where}: 'repeat_unet' must name the further passes' weights, got {unet!r}")
    if passes == 1 and unet is None and repeat_above is None:
        return None
    return CascadeCard(passes, None if repeat_above is None else tuple(map(float, thresholds)), unet)


def _parse_sde(raw: Any, where: str) -> SDESettings:
    """Validate the `sde` block: max_sigma > 0 (0-255 scale), T >= 1, a schedule and 0 < eps < 1."""
    check_keys(raw, where, required=set(_SDE_KEYS), optional=set())
    for key in ("max_sigma", "eps"):
        if not _is_number(raw[key]):
            raise CardError(f"{where}: {key!r} must be a number, got {raw[key]!r}")
    if not _is_count(raw["T"]):
        raise CardError(f"{where}: 'T' must be a positive number of steps, got {raw['T']!r}")
    _choice(raw, "schedule", SCHEDULES, where)
    if raw["max_sigma"] <= 0 or not 0 < raw["eps"] < 1:
        raise CardError(f"{where}: need max_sigma > 0 and 0 < eps < 1, got {raw['max_sigma']!r} and {raw['eps']!r}")
    return SDESettings(max_sigma=float(raw["max_sigma"]), T=raw["T"], schedule=raw["schedule"], eps=float(raw["eps"]))


def check_keys(raw: Any, where: str, *, required: set[str] | frozenset[str], optional: set[str] | frozenset[str]) -> None:
    """Reject non-objects, unknown keys (suggesting the closest valid key) and missing required keys."""
    if not isinstance(raw, dict):
        raise CardError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    valid = set(required) | set(optional)
    for key in raw:
        if key not in valid:
            close = difflib.get_close_matches(str(key), sorted(valid), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise CardError(f"{where}: unknown key {key!r}{hint}; valid keys: {sorted(valid)}")
    missing = sorted(set(required) - set(raw))
    if missing:
        raise CardError(f"{where}: missing key {missing[0]!r}; required keys: {sorted(required)}")


def _choice(raw: Mapping[str, Any], key: str, choices: tuple[str, ...], where: str, default: str | None = None) -> str:
    """``raw[key]`` (or ``default``), which must be one of ``choices``."""
    value = raw.get(key, default)
    if value not in choices:
        raise CardError(f"{where}: {key!r} is {value!r}; choose from {list(choices)}")
    return value


def _is_number(value: Any) -> bool:
    """A JSON number (booleans are not numbers)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_count(value: Any) -> bool:
    """A positive whole number."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _is_change(value: Any) -> bool:
    """A mean absolute change on the 0-255 scale."""
    return _is_number(value) and 0 <= value <= 255
