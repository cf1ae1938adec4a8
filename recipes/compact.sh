#!/usr/bin/env bash
# How the bundled `compact` model was made (see docs/MODEL_CARD.md). CPU only, about 5 hours on 2 cores.
# Usage: bash recipes/compact.sh SHARED_DATA WORK_DIR [prepare|train|all]
#   SHARED_DATA: folder with raincityscapes/ (LQ/ + GT/).
#   Rain100H and Rain100L are never used: their clean images are the same 100 photographs, so
#   anything trained on Rain100L (pairs, or synthetic rain on its GTs) has seen Rain100H's content.
set -euo pipefail
recipes=$(dirname "$(realpath "$0")")
data=$(realpath "$1"); mkdir -p "$2"; work=$(realpath "$2"); what=${3:-all}
cd "$work"

prepare() {
  # Clean photographs with clear licences (KDE wallpapers, Getty Open Content, NASA; and for stage 3
  # Lomiri and MATE wallpapers), two scales.
  python3 "$recipes/photos.py" photos
  # RainCityscapes: the 11 Zurich images for validation, the 89 from other cities for training.
  mkdir -p city_train/LQ city_train/GT city_val/LQ city_val/GT clean_train clean_train2 clean_val
  for f in "$data"/raincityscapes/GT/*.png; do
    n=$(basename "$f" .png)
    split=$([[ $n == zurich_* ]] && echo val || echo train)
    ln -sf "$data/raincityscapes/LQ/$n.png" "city_$split/LQ/$n.png"
    ln -sf "$f" "city_$split/GT/$n.png"
    ln -sf "$f" "clean_$split/c_$n.png"
  done
  for f in photos/train/*.png; do ln -sf "$(realpath "$f")" clean_train/; done
  for f in photos/train2/*.png; do ln -sf "$(realpath "$f")" clean_train2/; done
  for f in photos/val/*.png; do ln -sf "$(realpath "$f")" clean_val/; done
  derain synth clean_train -o synth_storm --preset storm --seed 1 --copies 3 -q
  derain synth clean_train -o synth_heavy --preset heavy --seed 4 --copies 3 -q
  derain synth clean_train -o synth_medium --preset medium --seed 2 -q
  derain synth clean_train -o synth_light --preset light --seed 3 -q
  derain synth clean_train2 -o synth2_heavy --preset heavy --seed 4 --copies 3 -q
  derain synth clean_train2 -o synth2_medium --preset medium --seed 2 -q
  derain synth clean_train2 -o synth2_light --preset light --seed 3 -q
  derain synth clean_train -o synth_downpour --preset downpour --seed 5 --copies 2 -q
  derain synth clean_train2 -o synth2_downpour --preset downpour --seed 5 --copies 2 -q
  derain synth clean_train -o synth_torrent --preset torrent --seed 6 --copies 2 -q
  derain synth clean_train2 -o synth2_torrent --preset torrent --seed 6 --copies 2 -q
  derain synth clean_val -o val_storm_full --preset storm --seed 7 -q
  derain synth clean_val -o val_heavy_full --preset heavy --seed 9 -q
  derain synth clean_val -o val_light_full --preset light --seed 8 -q
  derain synth clean_val -o val_downpour_full --preset downpour --seed 12 -q
  derain synth clean_val -o val_torrent_full --preset torrent --seed 13 -q
  # Fresh rain on the training photographs for stage 7b (new seeds: inputs the first pass never saw).
  derain synth clean_train -o synth7_heavy --preset heavy --seed 41 --copies 2 -q
  derain synth clean_train2 -o synth72_heavy --preset heavy --seed 41 --copies 2 -q
  derain synth clean_train -o synth7_downpour --preset downpour --seed 51 --copies 2 -q
  derain synth clean_train2 -o synth72_downpour --preset downpour --seed 51 --copies 2 -q
  derain synth clean_train -o synth7_torrent --preset torrent --seed 61 --copies 2 -q
  derain synth clean_train2 -o synth72_torrent --preset torrent --seed 61 --copies 2 -q
  # Validation sets: centre 256x192 crops (fast to score).
  python3 - <<'PY'
from pathlib import Path
from PIL import Image
for src, dst in (("val_storm_full", "val_storm_c"), ("val_heavy_full", "val_heavy_c"), ("val_light_full", "val_light_c"),
                 ("val_downpour_full", "val_downpour_c"), ("val_torrent_full", "val_torrent_c"),
                 ("city_val", "val_city_c")):
    for sub in ("LQ", "GT"):
        out = Path(dst) / sub
        out.mkdir(parents=True, exist_ok=True)
        for f in sorted((Path(src) / sub).glob("*.png")):
            im = Image.open(f)
            left, top = (im.width - 256) // 2, (im.height - 192) // 2
            im.crop((left, top, left + 256, top + 192)).save(out / f.name)
PY
}

train() {
  common=(--max-sigma 10 --sde-steps 100 --schedule cosine --eps 0.005 --prediction x0 --t-min 90
          --batch-size 4 --patch-size 96 --ema-decay 0.99 --ckpt-every 500
          --val-steps 1 --val-crop 128 --workers 0 --device cpu -q)
  # Stage 1: one-step clean-image prediction (times 90..100), from scratch, with the storm preset
  # as the heavy rain; an 8,500-step schedule stopped after step 2500 (the checkpoint there does
  # not depend on later steps).
  derain train -o runs/compact "${common[@]}" --data city_train --data synth_storm \
    --data synth_medium --data synth_light --val val_storm_c --val-every 1000 --val-limit 12 --nf 16 --ch-mult 1,2,4,4 \
    --steps 8500 --stop-after 2500 --lr 4e-4 --warmup 200 --seed 0
  # Stage 2: from the raw weights of stage 1, with the heavy preset (closer to Rain100H's look),
  # stopped after step 4500 (best on validation of the checkpoints kept: 4500, 5000, 5500).
  derain train -o runs/compact2 --from runs/compact/step-00002500/state.pt "${common[@]}" \
    --data city_train --data synth_heavy --data synth_medium --data synth_light --val val_heavy_c \
    --val-every 1000 --val-limit 12 --steps 5500 --stop-after 4500 --lr 3e-4 --warmup 100 --seed 1
  # Stage 3: from the raw weights of stage 2 at step 4500, adding the Lomiri/MATE photographs and
  # the downpour preset; step 2500 was the best mean of the four validation sets (our run went on
  # to step 5000 to compare); stopping there gives the same checkpoint.
  derain train -o runs/compact3 --from runs/compact2/step-00004500/state.pt "${common[@]}" \
    --data city_train --data synth_heavy --data synth_medium --data synth_light \
    --data synth2_heavy --data synth2_medium --data synth2_light --data synth_downpour \
    --data synth2_downpour --val val_downpour_c --val-every 500 --val-limit 15 --keep 20 \
    --steps 5000 --stop-after 2500 --lr 2e-4 --warmup 100 --seed 3
  # Stage 4: from the raw weights of stage 3 at step 2500, adding the torrent preset. The shipped
  # file is its step-00000500/unet.safetensors (best mean of the five validation sets; our run went
  # on to step 4500 to compare and was stopped by hand); stopping there gives the same checkpoint.
  derain train -o runs/compact4 --from runs/compact3/step-00002500/state.pt "${common[@]}" \
    --data city_train --data synth_heavy --data synth_medium --data synth_light \
    --data synth2_heavy --data synth2_medium --data synth2_light --data synth_downpour \
    --data synth2_downpour --data synth_torrent --data synth2_torrent --val val_torrent_c \
    --val-every 500 --val-limit 15 --keep 20 --steps 8000 --stop-after 500 --lr 2e-4 --warmup 100 --seed 4
  # Stage 5: teach it the second pass. Pairs of what stage 4 (step 500) makes of 192x192 windows
  # of the heavy, downpour and torrent pairs, and their clean windows; then from the raw weights of
  # stage 4 at step 500, the stage-4 data plus these, a 1,500-step schedule at lr 1e-4 stopped
  # after step 500 (best mean of the five validation sets with the second pass; our run went on to
  # step 1000 to compare); the shipped file is its step-00000500/unet.safetensors.
  python3 "$recipes/pass1_pairs.py" runs/compact4/step-00000500/unet.safetensors \
    synth_heavy synth_downpour synth_torrent
  derain train -o runs/compact5 --from runs/compact4/step-00000500/state.pt "${common[@]}" \
    --data city_train --data synth_heavy --data synth_medium --data synth_light \
    --data synth2_heavy --data synth2_medium --data synth2_light --data synth_downpour \
    --data synth2_downpour --data synth_torrent --data synth2_torrent \
    --data p1c_synth_heavy --data p1c_synth_downpour --data p1c_synth_torrent --val val_torrent_c \
    --ckpt-every 250 --val-every 500 --val-limit 12 --keep 40 --steps 1500 --stop-after 500 --lr 1e-4 --warmup 50 --seed 8
  # Stage 7 (stage 6 was tried and not used): a second U-Net for the further passes. Pairs of what
  # stage 5 (step 500, the shipped first-pass weights) makes of 192x192 windows of all the heavy,
  # downpour and torrent pairs, in tiles of 128 as `derain run` runs it, and their clean windows;
  # then from the raw weights of stage 5 at step 500, on these pairs and stage 5's (first-pass
  # outputs only), a 2,000-step schedule at lr 1e-4 stopped after step 1000 (chosen with the
  # third-pass threshold on the five validation sets; our run went on to step 1500 to compare);
  # compact_repeat.safetensors was its step-00001000/unet.safetensors until stage 7b.
  python3 "$recipes/pass1_pairs.py" runs/compact5/step-00000500/unet.safetensors \
    synth_heavy synth2_heavy synth_downpour synth2_downpour synth_torrent synth2_torrent \
    --tile 128 --seed 321 --prefix c1_
  derain train -o runs/compact7 --from runs/compact5/step-00000500/state.pt "${common[@]}" \
    --data c1_synth_heavy --data c1_synth2_heavy --data c1_synth_downpour --data c1_synth2_downpour \
    --data c1_synth_torrent --data c1_synth2_torrent \
    --data p1c_synth_heavy --data p1c_synth_downpour --data p1c_synth_torrent \
    --ckpt-every 250 --keep 40 --steps 2000 --stop-after 1000 --lr 1e-4 --warmup 50 --seed 21
  # Stage 7b: stage 7's pairs come from rain stage 5 was trained on, so its first pass cleaned them
  # better than it cleans new rain. Pairs of what stage 5 makes of windows of fresh rain on the same
  # photographs (prepared above), then from the raw weights of stage 7 at step 1000, on these pairs
  # only, a 1,000-step schedule at lr 1e-4 (chosen with the third-pass threshold on the five
  # validation sets, against its step 500); the shipped compact_repeat.safetensors is its
  # step-00001000/unet.safetensors.
  python3 "$recipes/pass1_pairs.py" runs/compact5/step-00000500/unet.safetensors \
    synth7_heavy synth72_heavy synth7_downpour synth72_downpour synth7_torrent synth72_torrent \
    --tile 128 --seed 322 --prefix d1_
  derain train -o runs/compact7b --from runs/compact7/step-00001000/state.pt "${common[@]}" \
    --data d1_synth7_heavy --data d1_synth72_heavy --data d1_synth7_downpour --data d1_synth72_downpour \
    --data d1_synth7_torrent --data d1_synth72_torrent \
    --ckpt-every 250 --keep 40 --steps 1000 --lr 1e-4 --warmup 50 --seed 41
}

case $what in
  prepare) prepare ;;
  train) train ;;
  all) prepare; train ;;
  *) echo "unknown step $what (prepare, train or all)" >&2; exit 2 ;;
esac
