"""Image-quality metrics: PSNR, MATLAB-compatible SSIM and BT.601 luma, in float64 numpy.

Conventions (explicit arguments, never hidden in a test loop):
- Images are arrays ``(H, W)`` or ``(H, W, C)`` on the 0–255 scale (uint8 as saved, or floats).
- ``crop_border`` removes that many pixels from every side before scoring (the reference test.py
  crops 4; ours defaults to 0).
- Colour SSIM is the mean of the per-channel SSIMs, as the reference ``calculate_ssim``.
- Y is ITU-R BT.601 luma as MATLAB's ``rgb2ycbcr`` (16..235), kept in float64, not rounded,
  exactly as the reference scores Y on float images.
- PSNR of identical images is ``math.inf``; JSON writers should pass values through
  :func:`finite_or_none` (strict JSON has no Infinity).
"""

from __future__ import annotations

import math

import numpy as np

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1, SSIM_C2 = (0.01 * 255.0) ** 2, (0.03 * 255.0) ** 2  # (K1 L)^2 and (K2 L)^2, data range L = 255

# MATLAB rgb2ycbcr luma row for R, G, B in [0, 1]; Y = 16 + row . (R, G, B)
BT601_LUMA = np.array([65.481, 128.553, 24.966])


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    """Raise ValueError unless a and b are images of the same shape."""
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    if a.ndim not in (2, 3):
        raise ValueError(f"expected an image of shape (H, W) or (H, W, C), got {a.shape}")


def _crop(img: np.ndarray, crop_border: int) -> np.ndarray:
    """Return img without crop_border pixels on each side, as float64."""
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    height, width = img.shape[:2]
    if 2 * crop_border >= min(height, width):
        raise ValueError(f"crop_border {crop_border} leaves nothing of a {height}x{width} image")
    if crop_border:
        img = img[crop_border:-crop_border, crop_border:-crop_border]
    return img.astype(np.float64)


def psnr(a: np.ndarray, b: np.ndarray, crop_border: int = 0, max_val: float = 255.0) -> float:
    """Peak signal-to-noise ratio 20*log10(max_val / RMSE) in dB over all pixels and channels."""
    _check_pair(a, b)
    mse = float(np.mean((_crop(a, crop_border) - _crop(b, crop_border)) ** 2))
    if mse == 0.0:
        return math.inf
    return 20.0 * math.log10(max_val / math.sqrt(mse))


def gaussian_window_1d(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """Normalised 1-D Gaussian taps exp(-x^2 / (2 sigma^2)), x centred on the middle tap."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    taps = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return taps / taps.sum()


def _filter_valid(img: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Separable 2-D correlation of a 2-D image with outer(taps, taps), 'valid' region only."""
    n = len(taps)
    rows = img.shape[0] - n + 1
    cols = img.shape[1] - n + 1
    vertical = sum(t * img[i : i + rows, :] for i, t in enumerate(taps))
    return sum(t * vertical[:, j : j + cols] for j, t in enumerate(taps))


def _ssim_channel(x: np.ndarray, y: np.ndarray) -> float:
    """Mean SSIM map (Wang et al. 2004, eq. 13) of two 2-D float64 images, valid window only."""
    taps = gaussian_window_1d()
    mu_x = _filter_valid(x, taps)
    mu_y = _filter_valid(y, taps)
    var_x = _filter_valid(x * x, taps) - mu_x * mu_x
    var_y = _filter_valid(y * y, taps) - mu_y * mu_y
    cov = _filter_valid(x * y, taps) - mu_x * mu_y
    ssim_map = ((2.0 * mu_x * mu_y + SSIM_C1) * (2.0 * cov + SSIM_C2)) / (
        (mu_x * mu_x + mu_y * mu_y + SSIM_C1) * (var_x + var_y + SSIM_C2)
    )
    return float(ssim_map.mean())


def ssim(a: np.ndarray, b: np.ndarray, crop_border: int = 0) -> float:
    """MATLAB-compatible SSIM (11x11 Gaussian, sigma 1.5, valid region), mean over channels."""
    _check_pair(a, b)
    x = _crop(a, crop_border)
    y = _crop(b, crop_border)
    if min(x.shape[:2]) < SSIM_WINDOW:
        size = f"{SSIM_WINDOW}x{SSIM_WINDOW}"
        raise ValueError(f"SSIM needs at least {size} pixels after cropping, got {x.shape[:2]}")
    if x.ndim == 2:
        return _ssim_channel(x, y)
    return float(np.mean([_ssim_channel(x[..., c], y[..., c]) for c in range(x.shape[2])]))


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """BT.601 luma as MATLAB rgb2ycbcr: 16 + (65.481 R + 128.553 G + 24.966 B) / 255, unrounded."""
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got {img.shape}")
    return np.dot(img.astype(np.float64), BT601_LUMA) / 255.0 + 16.0


def _as_gray_or_rgb(img: np.ndarray) -> np.ndarray:
    """Return img as (H, W) grayscale or (H, W, 3) RGB; reject other channel counts."""
    if img.ndim == 3 and img.shape[2] == 1:
        return img[..., 0]
    if img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3):
        return img
    raise ValueError(f"expected a grayscale or RGB image, got shape {img.shape}")


def score_pair(output: np.ndarray, gt: np.ndarray, crop_border: int = 0) -> dict[str, float]:
    """PSNR and SSIM of an 8-bit output against its ground truth, on RGB and on BT.601 Y.

    Grayscale pairs score the single channel for both (psnr_y == psnr, ssim_y == ssim), as the
    reference test loop does.
    """
    for name, img in (("output", output), ("ground truth", gt)):
        if img.dtype != np.uint8:
            raise ValueError(f"{name} must be an 8-bit image as saved, got dtype {img.dtype}")
    _check_pair(output, gt)
    output = _as_gray_or_rgb(output)
    gt = _as_gray_or_rgb(gt)
    scores = {"psnr": psnr(output, gt, crop_border), "ssim": ssim(output, gt, crop_border)}
    if output.ndim == 2:
        return {**scores, "psnr_y": scores["psnr"], "ssim_y": scores["ssim"]}
    y_out, y_gt = rgb_to_y(output), rgb_to_y(gt)
    scores["psnr_y"] = psnr(y_out, y_gt, crop_border)
    scores["ssim_y"] = ssim(y_out, y_gt, crop_border)
    return scores


def finite_or_none(value: float) -> float | None:
    """Return value, or None where it is infinite or NaN (strict JSON cannot hold those)."""
    return value if math.isfinite(value) else None
