#!/usr/bin/env bash
# The GPU benchmarks and checks, for a machine with one CUDA GPU or more. Run from the repository root, in an
# environment with a CUDA build of torch and oto_hf installed (e.g. `make test TORCH_SPEC="torch==2.13.0"
# TORCH_INDEX="--index-url https://download.pytorch.org/whl/cu128"`, then `VENV=.venv scripts/bench_gpu.sh`):
#
#   1. DHSPG against torch.optim.AdamW on BERT-base shapes on CUDA (foreach and fused AdamW), and a whole OTOTrainer
#      training step against Trainer's (bf16);
#   2. a short OTOTrainer run of BERT-base shapes in bf16, saved and reloaded;
#   3. with 2 GPUs or more: the same OTOTrainer run under `accelerate launch` with FSDP2 on 2 GPUs, and the FSDP2
#      test of the suite (2 processes; it runs on the CPU over gloo, so it needs no GPU, but it is run here too).
#
# Everything prints to stdout and into $OUT (default outputs/bench_gpu), one log per step.
set -euo pipefail

PYTHON="${VENV:-.venv}/bin/python"
OUT="${OUT:-outputs/bench_gpu}"
mkdir -p "$OUT"

gpus=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")
if [ "$gpus" -lt 1 ]; then
    echo "No CUDA GPU visible to torch: this script is for GPU machines (see the comment at its top)." >&2
    exit 1
fi
"$PYTHON" -c "import torch; print('GPU:', torch.cuda.get_device_name(), '| torch', torch.__version__, '| CUDA', torch.version.cuda)"

echo "== 1. optimizer step and training step on CUDA"
"$PYTHON" scripts/bench_optimizer.py --device cuda --rounds 9 --batch_size 32 | tee "$OUT/optimizer.txt"

echo "== 2. a short OTOTrainer run (bf16), saved and reloaded"
"$PYTHON" scripts/bench_trainer.py --steps 200 --batch_size 32 | tee "$OUT/trainer.txt"

if [ "$gpus" -ge 2 ]; then
    echo "== 3. OTOTrainer under accelerate with FSDP2 on 2 GPUs"
    "$PYTHON" -m accelerate.commands.launch --num_processes 2 --use_fsdp --fsdp_version 2 \
        --fsdp_auto_wrap_policy TRANSFORMER_BASED_WRAP --fsdp_transformer_layer_cls_to_wrap BertLayer \
        --fsdp_state_dict_type FULL_STATE_DICT --mixed_precision bf16 \
        scripts/bench_trainer.py --steps 200 --batch_size 16 | tee "$OUT/trainer_fsdp2.txt"
    echo "== 3b. the FSDP2 test (2 processes, gloo)"
    "$PYTHON" -m pytest -q tests/test_fsdp.py | tee "$OUT/test_fsdp.txt"
else
    echo "== 3. skipped: FSDP2 on GPUs needs 2 of them ($gpus visible)"
fi
