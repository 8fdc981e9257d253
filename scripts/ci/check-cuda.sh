#!/usr/bin/env bash
# Type-check the CUDA code paths (`--features cuda`) on a machine without the CUDA toolkit, using
# the stub nvcc beside this script. This checks types only: nothing is compiled for a GPU and the
# result cannot be linked or run. On a GPU machine, build with the real nvcc instead
# (scripts/gpu-check.sh builds and runs the learner's CUDA and NCCL tests).
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PWD/scripts/ci/stub-nvcc:$PATH"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-80}"
cargo check -p platter-qwen25vl -p platter-sam2 -p platter-learner -p platter-rollout \
  --features platter-qwen25vl/cuda,platter-sam2/cuda,platter-learner/cuda,platter-rollout/cuda
# The learner's CUDA tests (learner/tests/nccl_cuda.rs, run on GPUs by scripts/gpu-check.sh).
cargo check -p platter-learner --features platter-learner/cuda --tests
