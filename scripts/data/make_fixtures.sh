#!/usr/bin/env bash
# Regenerate the committed FoodReasonSeg-layout fixture used by data/tests/foodreasonseg_fixture.rs.
# Tiny on purpose (~100 KB): 12 images of 128x96, two questions each, seed 7 (chosen because it
# holds multi-turn answers, plural names, multi-target questions, sauce (103) and cutlery (255)).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=data/tests/fixtures/foodreasonseg
rm -rf "$out"
cargo run -q -p platter -- data synth --seed 7 --n 12 --width 128 --height 96 \
  --questions-per-image 2 --policy-size 336 --threads 1 --out "$out"
