"""The training log: log.csv rows and the loss / validation plot drawn with Pillow."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from derain_cli.imageio import atomic_write

LOG_COLUMNS = ("step", "loss", "lr", "it/s", "val_psnr_y")


def read_log(path: Path) -> list[dict[str, float | None]]:
    """The rows of log.csv as numbers (empty cells as None); [] when there is no log."""
    if not path.exists():
        return []
    with path.open(newline="") as file:
        return [{k: float(v) if v else None for k, v in row.items()} for row in csv.DictReader(file)]


def append_row(path: Path, step: int, loss: float, lr: float, rate: float, val_psnr_y: float | None) -> None:
    """Append one row to log.csv, writing the header (LOG_COLUMNS) first when the file is new."""
    new = not path.exists()
    with path.open("a", newline="") as file:
        writer = csv.writer(file)
        if new:
            writer.writerow(LOG_COLUMNS)
        writer.writerow([step, f"{loss:.6g}", f"{lr:.6g}", f"{rate:.4g}",
                         "" if val_psnr_y is None else f"{val_psnr_y:.4f}"])


def trim_log(path: Path, step: int) -> None:
    """Drop the log rows after ``step`` (written after the checkpoint a run resumes from)."""
    if not path.exists():
        return
    with path.open(newline="") as file:
        rows = list(csv.reader(file))
    kept = rows[:1] + [row for row in rows[1:] if int(row[0]) <= step]
    with path.open("w", newline="") as file:
        csv.writer(file).writerows(kept)


# -- plot ---------------------------------------------------------------------------------------

PLOT_SIZE = (900, 600)
MARGIN = (70, 20, 20, 40)  # left, top, right, bottom of each panel
LOSS_RAW, LOSS_SMOOTH, PSNR_COLOUR = (166, 206, 227), (31, 119, 180), (214, 39, 40)
AXIS_COLOUR, GRID_COLOUR = (0, 0, 0), (225, 225, 225)
Series = tuple[list[float], tuple[int, int, int]]


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick positions (1, 2 or 5 times a power of ten apart) within [low, high]."""
    if high <= low:
        high = low + 1
    raw = (high - low) / count
    power = 10 ** math.floor(math.log10(raw))
    spacing = min((m * power for m in (1, 2, 5, 10)), key=lambda step: abs(step - raw))
    first = math.ceil(low / spacing) * spacing
    return [round(first + i * spacing, 12) for i in range(int((high - first) / spacing + 1e-9) + 1)]


def log_ticks(low: float, high: float) -> list[float]:
    """Tick positions (as log10 values) at 1, 2 and 5 times powers of ten within [10^low, 10^high]."""
    for mantissas in ((1,), (1, 2, 5), tuple(range(1, 10))):
        ticks = [math.log10(m) + k for k in range(math.floor(low), math.ceil(high) + 1) for m in mantissas]
        ticks = [t for t in ticks if low <= t <= high]
        if len(ticks) >= 3:
            return ticks
    return nice_ticks(low, high)


def smooth(values: list[float], weight: float = 0.9) -> list[float]:
    """Exponential moving average of a series, started at its first value."""
    out: list[float] = []
    for value in values:
        out.append(value if not out else weight * out[-1] + (1 - weight) * value)
    return out


def _font(size: int = 12) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's built-in font (scalable since Pillow 10.1)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def _panel(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], xs: list[float], series: list[Series],
           title: str, log_y: bool) -> None:
    """Line plots of each series against xs inside box, with axes, grid, tick labels and a title."""
    font = _font()
    left, top, right, bottom = box[0] + MARGIN[0], box[1] + MARGIN[1], box[2] - MARGIN[2], box[3] - MARGIN[3]
    series = [([math.log10(y) for y in ys] if log_y else ys, colour) for ys, colour in series]
    x_lo, x_hi = min(xs), max(max(xs), min(xs) + 1)
    y_lo, y_hi = min(min(ys) for ys, _ in series), max(max(ys) for ys, _ in series)
    pad = (y_hi - y_lo) * 0.05 or 0.5
    y_lo, y_hi = y_lo - pad, y_hi + pad

    def px(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x_lo) / (x_hi - x_lo) * (right - left),
                bottom - (y - y_lo) / (y_hi - y_lo) * (bottom - top))

    for tick in log_ticks(y_lo, y_hi) if log_y else nice_ticks(y_lo, y_hi):
        _, y = px(x_lo, tick)
        draw.line([(left, y), (right, y)], fill=GRID_COLOUR)
        label = f"{10 ** tick:.3g}" if log_y else f"{tick:.4g}"
        draw.text((left - 6, y), label, fill=AXIS_COLOUR, font=font, anchor="rm")
    for tick in nice_ticks(x_lo, x_hi):
        x, _ = px(tick, y_lo)
        draw.line([(x, bottom), (x, bottom + 4)], fill=AXIS_COLOUR)
        draw.text((x, bottom + 6), f"{tick:g}", fill=AXIS_COLOUR, font=font, anchor="ma")
    draw.rectangle([left, top, right, bottom], outline=AXIS_COLOUR)
    for ys, colour in series:
        points = [px(x, y) for x, y in zip(xs, ys)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        x, y = points[-1]
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
    draw.text((left, top - 4), title, fill=AXIS_COLOUR, font=font, anchor="lb")
    draw.text(((left + right) / 2, box[3] - 4), "step", fill=AXIS_COLOUR, font=font, anchor="mb")


def plot_log(rows: list[dict[str, float | None]], path: Path) -> None:
    """Draw the training loss (log scale, raw and smoothed) and validation PSNR_Y against step, with Pillow only."""
    image = Image.new("RGB", PLOT_SIZE, "white")
    draw = ImageDraw.Draw(image)
    losses = [(r["step"], r["loss"]) for r in rows if r.get("loss") and r["loss"] > 0]
    scores = [(r["step"], r["val_psnr_y"]) for r in rows if r.get("val_psnr_y") is not None]
    width, height = PLOT_SIZE
    split = height // 2 if scores else height
    if losses:
        steps, values = [s for s, _ in losses], [v for _, v in losses]
        _panel(draw, (0, 0, width, split), steps, [(values, LOSS_RAW), (smooth(values), LOSS_SMOOTH)],
               "training loss (L1; light: logged, dark: smoothed)", log_y=True)
    else:
        draw.text((width / 2, split / 2), "no loss logged yet", fill=AXIS_COLOUR, font=_font(), anchor="mm")
    if scores:
        _panel(draw, (0, split, width, height), [s for s, _ in scores], [([v for _, v in scores], PSNR_COLOUR)],
               "validation PSNR_Y (dB)", log_y=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda file: image.save(file, format="PNG"))
