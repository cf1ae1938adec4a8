#!/usr/bin/env bash
# A small noise-prediction model trained on every time step, to compare samplers at every step count
# (docs/BENCHMARKS.md, "Samplers at 1..100 calls"). CPU only, one thread, about an hour on a busy 2-core machine.
# Trained with the code of b96289a (where the run-folder flag was --out, now --output); table: 1fd1279.
# Usage: [RUN=RUN_DIR] bash recipes/small_noise.sh SHARED_DATA WORK_DIR [split|train|table|all]
#   SHARED_DATA: folder with raintrainl/ and raincityscapes/ (LQ/ + GT/). Rain100H/L are never used.
#   Held out: raintrainl pairs whose number is divisible by 10, and the 11 raincityscapes zurich_* pairs.
set -euo pipefail
repo=$(dirname "$(dirname "$(realpath "$0")")")
data=$(realpath "$1"); mkdir -p "$2"; work=$(realpath "$2"); what=${3:-all}
run=${RUN:-$work/run}  # the run folder (weights, log.csv)
cd "$work"

split() {
  for s in train heldout_l heldout_city val; do mkdir -p "$s/LQ" "$s/GT"; done
  for f in "$data"/raintrainl/GT/*; do
    b=$(basename "$f"); n=${b%.*}
    [[ $(( 10#$n % 10 )) == 0 ]] && s=heldout_l || s=train
    ln -sf "$data/raintrainl/LQ/$b" "$s/LQ/l_$b"; ln -sf "$f" "$s/GT/l_$b"
  done
  for f in "$data"/raincityscapes/GT/*; do
    b=$(basename "$f")
    [[ $b == zurich_* ]] && s=heldout_city || s=train
    ln -sf "$data/raincityscapes/LQ/$b" "$s/LQ/c_$b"; ln -sf "$f" "$s/GT/c_$b"
  done
  # Validation during training (picks best/): the first 3 held-out pairs of each set; the table
  # scores the other held-out pairs (test_l: 15 RainTrainL, test_city: 8 Zurich).
  for s in l city; do
    mkdir -p "test_$s/LQ" "test_$s/GT"
    for f in $(ls "heldout_$s/GT" | head -3); do
      cp -P "heldout_$s/LQ/$f" val/LQ/; cp -P "heldout_$s/GT/$f" val/GT/
    done
    for f in $(ls "heldout_$s/GT" | tail -n +4); do
      cp -P "heldout_$s/LQ/$f" "test_$s/LQ/"; cp -P "heldout_$s/GT/$f" "test_$s/GT/"
    done
  done
}

train() {
  # Stage 1: lr 2e-4 for 1000 steps, stopped at step 692 (the machine was slower than planned). Its
  # noise estimates were still far too small (std 0.15 against 1, validation 8.7 dB PSNR_Y), so
  # stage 2 goes on from its EMA weights at lr 1e-3.
  OMP_NUM_THREADS=1 PYTHONPATH="$repo" python3 -m derain_cli train --output "$run" --data "$work/train" \
    --prediction noise --t-min 1 --nf 16 --ch-mult 1,2,4,4 --max-sigma 50 \
    --patch-size 64 --batch-size 4 --steps 1000 --stop-after 692 --warmup 100 --device cpu --workers 0 \
    --val "$work/val" --val-steps 10 --val-limit 6 --val-crop 128 --val-every 500 --ckpt-every 500 -q
  OMP_NUM_THREADS=1 PYTHONPATH="$repo" python3 -m derain_cli train --output "$run/stage2" --data "$work/train" \
    --from "$run/last/unet.safetensors" --prediction noise --t-min 1 --max-sigma 50 --lr 1e-3 \
    --patch-size 64 --batch-size 4 --steps 1200 --warmup 50 --device cpu --workers 0 \
    --val "$work/val" --val-steps 10 --val-limit 6 --val-crop 128 --val-every 400 --ckpt-every 400 -q
}

table() {
  # One process per sampler (one thread each), 5 RainTrainL + 3 Zurich held-out pairs, 96x96 centre
  # crops (a full-size image costs ~2 CPU s per call of this U-Net here; the grid is 188 calls).
  for s in posterior sde ode mr; do
    OMP_NUM_THREADS=1 PYTHONPATH="$repo" python3 "$repo/benchmarks/sampler_table.py" \
      --unet "$run/stage2/last/unet.safetensors" --data "$work/test_l" "$work/test_city" --limit 5,3 --crop 96 \
      --calls 1,2,5,10,20,50,100 --samplers $s --threads 1 --json "$work/table_$s.json" > "$work/table_$s.log" &
  done
  wait
  PYTHONPATH="$repo" python3 "$repo/benchmarks/sampler_table.py" --merge "$work"/table_{posterior,sde,ode,mr}.json \
    --json "$work/small_noise_sampler_table.json"
}

case $what in
  split) split ;; train) train ;; table) table ;;
  all) split; train; table ;;
  *) echo "unknown stage $what: split, train, table or all" >&2; exit 2 ;;
esac
