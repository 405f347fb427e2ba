#!/usr/bin/env bash
# The checks that need a CUDA GPU, as one short script: the `gpu`-marked tests (CUDA and mixed-precision
# paths: EMA resume on the GPU, ...; FSDP2 sharded training through accelerate launch, which accelerate runs on GPUs
# only) and the SD 1.5-sized LCM-LoRA and progressive-distillation training benchmarks
# the SD 1.4-sized BK-SDM-Small one (training, and sampling latency of teacher vs student), the SD 1.5 LADD-LoRA one,
# the SD 1.5 DMD2 one (a generator + fake-score cycle, one-base LoRA mode vs full mode, dmd2_sd15's batch and
# checkpointing: against `bench lora-memory --method dmd2 --family sd15 --resolution 512 --batch_size 8`) and SDXL's LCM-LoRA step at 1024², batch 1 (its peak against the meta-device estimate of `bench lora-memory`), then the
# LADD, progressive and KOALA SDXL configs' steps (`bench sdxl-gpu --config`; their peaks against `bench train-memory --config`).
# Run from the repository root on a machine with a GPU: bash benchmarks/gpu_check.sh
# Results: benchmarks/results/{lcm,progressive,ladd,dmd2}_gpu_sd15.{json,md}, bksdm_gpu_sd14.{json,md},
# {lcm,ladd,progressive,koala_700m,koala_1b}_gpu_sdxl.{json,md},
# gpu_tests.txt and fsdp_gpu.txt
# (copied to $OUT when set).
set -uo pipefail
cd "$(dirname "$0")/.."
[ -d .venv ] || { python3 -m venv .venv && . .venv/bin/activate && pip install -q -e ".[test]"; }
. .venv/bin/activate
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))" || exit 1
python -m pytest -q -p no:cacheprovider -m gpu --ignore tests/test_fsdp.py 2>&1 | tee benchmarks/results/gpu_tests.txt
tests=${PIPESTATUS[0]}
# sharded training for real: accelerate launch --use_fsdp --fsdp_version 2 (NCCL) of LADD-LoRA on up to 2 GPUs, fp32 and bf16
python -m pytest -q -p no:cacheprovider -m gpu -rA tests/test_fsdp.py 2>&1 | tee benchmarks/results/fsdp_gpu.txt
tests=$(( tests || ${PIPESTATUS[0]} ))
distill-diffusion bench lcm-gpu --mixed_precision bf16 --batch_size 8 --steps 20
bench=$?
distill-diffusion bench progressive-gpu --mixed_precision bf16 --batch_size 8 --steps 20
bench=$(( bench || $? ))
distill-diffusion bench bksdm-gpu --mixed_precision bf16 --batch_size 8 --steps 20
bench=$(( bench || $? ))
distill-diffusion bench ladd-gpu --mixed_precision bf16 --batch_size 8 --steps 20
bench=$(( bench || $? ))
distill-diffusion bench dmd2-gpu --mixed_precision bf16 --batch_size 8 --gradient_checkpointing --steps 10
bench=$(( bench || $? ))
distill-diffusion bench sdxl-gpu --mixed_precision bf16 --batch_size 1 --resolution 1024 --lora_rank 64 --steps 10
bench=$(( bench || $? ))
# every other SDXL config at its own resolution, batch, bf16 and checkpointing (ADD needs a real VAE: not timed here)
for config in ladd_sdxl progressive_sdxl bksdm_koala_700m_sdxl bksdm_koala_1b_sdxl; do
  distill-diffusion bench sdxl-gpu --config "$config" --steps 10
  bench=$(( bench || $? ))
done
if [ -n "${OUT:-}" ]; then cp benchmarks/results/gpu_tests.txt benchmarks/results/fsdp_gpu.txt benchmarks/results/*_gpu_sd1[45].* benchmarks/results/*_gpu_sdxl.* "$OUT"/ 2>/dev/null; fi
echo "gpu tests exit $tests, benchmark exit $bench"
exit $(( tests || bench ))
