#!/usr/bin/env bash
# How the bundled `compact` model was made (see docs/MODEL_CARD.md). CPU only, about 2 hours on 2 cores.
# Usage: bash recipes/compact.sh SHARED_DATA WORK_DIR
#   SHARED_DATA: folder with rain100l/ and raincityscapes/ (each LQ/ + GT/); rain100h is never used.
set -euo pipefail
data=$(realpath "$1"); work=$2
mkdir -p "$work" && cd "$work"

# Training pairs: Rain100L 001-090 and RainCityscapes; validation: Rain100L 091-100.
mkdir -p r100l_train/LQ r100l_train/GT val/LQ val/GT clean_train
for i in $(seq -f %03g 1 100); do
  split=$([ "$((10#$i))" -le 90 ] && echo r100l_train || echo val)
  ln -sf "$data/rain100l/LQ/$i.png" "$split/LQ/$i.png"
  ln -sf "$data/rain100l/GT/$i.png" "$split/GT/$i.png"
done
# Clean photographs for synthetic rain: the 90 training GTs and the RainCityscapes GTs.
for i in $(seq -f %03g 1 90); do ln -sf "$data/rain100l/GT/$i.png" "clean_train/l_$i.png"; done
for f in "$data"/raincityscapes/GT/*.png; do ln -sf "$f" "clean_train/c_$(basename "$f")"; done
derain synth clean_train -o synth_heavy --preset heavy --seed 1 --copies 2 -q
derain synth clean_train -o synth_medium --preset medium --seed 2 -q
# Heavy-rain validation: synthetic rain on the validation GTs, centre 256x192 crops.
derain synth val/GT -o val_heavy_full --preset heavy --seed 7 -q
python3 - <<'PY'
from pathlib import Path
from PIL import Image
for sub in ("LQ", "GT"):
    out = Path("val_heavy_c") / sub
    out.mkdir(parents=True, exist_ok=True)
    for f in sorted((Path("val_heavy_full") / sub).glob("*.png")):
        im = Image.open(f)
        left, top = (im.width - 256) // 2, (im.height - 192) // 2
        im.crop((left, top, left + 256, top + 192)).save(out / f.name)
PY

common=(--data r100l_train --lq "$data/raincityscapes/LQ" --gt "$data/raincityscapes/GT"
        --data synth_heavy --data synth_medium --val val_heavy_c
        --max-sigma 10 --T 100 --schedule cosine --eps 0.005 --prediction x0
        --batch-size 4 --val-crop 128 --val-limit 10 --workers 0 --device cpu -q)
# Stage 1: clean-image prediction at all times, from scratch, on a 5,000-step schedule stopped after
# step 2000 (its step-00002000 checkpoint does not depend on later steps).
derain train --out runs/x0 "${common[@]}" --nf 16 --ch-mult 1,2,4,4 --steps 5000 --stop-after 2000 --patch-size 64 --lr 5e-4 \
  --warmup 100 --ema-decay 0.98 --ckpt-every 500 --val-every 1000 --val-steps 10 --seed 0
# Stage 2: one-step model, times 90..100 only, from the raw weights of stage 1 at step 2000.
derain train --out runs/x0c --from runs/x0/step-00002000/state.pt "${common[@]}" --t-min 90 --steps 5000 \
  --patch-size 64 --lr 4e-4 --warmup 100 --ema-decay 0.98 --ckpt-every 500 --val-every 1000 --val-steps 1 --seed 4
# Stage 3: 96 px crops, from the raw weights at the end of stage 2. The shipped file is this run's
# step-00001500/unet.safetensors (a 30,000-step schedule; that checkpoint does not depend on later steps).
derain train --out runs/x0long --from runs/x0c/last/state.pt "${common[@]}" --t-min 90 --steps 30000 --stop-after 1500 \
  --patch-size 96 --lr 3e-4 --warmup 200 --ema-decay 0.99 --ckpt-every 500 --val-every 1000 --val-steps 1 --seed 6
