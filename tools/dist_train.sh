#!/usr/bin/env bash
# Train on GPUS processes per node with torchrun (mmseg's tools/dist_train.sh):
#   tools/dist_train.sh CONFIG GPUS --data D --labels LS --work-dir W [train.py options]
# Multi-node: NNODES, NODE_RANK, MASTER_ADDR, PORT on every node. On a CPU-only machine
# the processes use gloo (tests run 2 CPU processes this way).
CONFIG=$1
GPUS=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}

PYTHONPATH="$(dirname $0)/..":$PYTHONPATH \
python -m torch.distributed.run \
    --nnodes=$NNODES \
    --node_rank=$NODE_RANK \
    --master_addr=$MASTER_ADDR \
    --nproc_per_node=$GPUS \
    --master_port=$PORT \
    $(dirname "$0")/train.py \
    $CONFIG \
    --launcher pytorch ${@:3}
