#!/usr/bin/env bash
# Multi-process training with torch's launcher, as mmseg's dist_train.sh: tools/dist_train.sh CONFIG GPUS [args]
CONFIG=$1
GPUS=$2
PORT=${PORT:-29500}
python -m torch.distributed.run --nproc_per_node="$GPUS" --master_port="$PORT" \
    "$(dirname "$0")/train.py" "$CONFIG" --launcher pytorch "${@:3}"
