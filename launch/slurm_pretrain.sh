#!/bin/bash
# Multi-node SIFT pretraining under Slurm.
#
#   sbatch --nodes=4 --gpus-per-node=8 launch/slurm_pretrain.sh \
#       --ds_config ds_configs/bert_base_zero2_bf16_sift.json --data '/data/wiki/*.txt' --output_dir runs/base
#
# Arguments after the script name go to launch/pretrain_bert.py; "--resume auto" is added unless
# --resume is given, so resubmitting the same command continues the run. The script writes a
# DeepSpeed hostfile ("<host> slots=<gpus>") for the allocation into the submit directory (shared
# by the nodes) and starts the DeepSpeed launcher with --hostfile / --master_addr / --master_port:
#
#   SIFT_LAUNCHER=srun (default): `srun` runs one launcher per node with --no_ssh --node_rank; no
#                                  ssh between nodes is needed.
#   SIFT_LAUNCHER=pdsh:            one launcher on the first node reaches the others over pdsh/ssh
#                                  (passwordless ssh between nodes required).
#
# Stopping: five minutes before the time limit Slurm sends SIGTERM to this script (--signal=B:...),
# which has Slurm send it to the job step on every node (`scancel --signal=TERM <job>`: srun, given
# SIGTERM itself, SIGKILLs its tasks) or passes it to the local launcher. Each node's launcher runs
# under launch/run_group.sh, which sends the signal to the launcher's whole process group and keeps
# the node's task alive until its last rank has exited; every rank saves a checkpoint at the next
# step boundary and exits.
#
# Other variables: GPUS_PER_NODE (default SLURM_GPUS_ON_NODE, else 8), MASTER_PORT (default 29500).
# NCCL_* and other variables for every rank: put them in ./.deepspeed_env (see docs/usage.md).
#SBATCH --job-name=sift-bert
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
#SBATCH --signal=B:TERM@300
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail

cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
GPUS_PER_NODE="${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}"
MASTER_ADDR="$(scontrol show hostnames "${SLURM_JOB_NODELIST}" | head -n 1)"
MASTER_PORT="${MASTER_PORT:-29500}"
HOSTFILE="${PWD}/hostfile.${SLURM_JOB_ID}"
LAUNCHER="${SIFT_LAUNCHER:-srun}"

scontrol show hostnames "${SLURM_JOB_NODELIST}" | while read -r host; do
    echo "${host} slots=${GPUS_PER_NODE}"
done > "${HOSTFILE}"
trap 'rm -f "${HOSTFILE}"' EXIT

ARGS=("$@")
case " $* " in *" --resume "*|*" --resume="*) ;; *) ARGS+=(--resume auto) ;; esac
GROUP="launch/run_group.sh"  # the launcher in its own process group; signals reach every rank
DS=(deepspeed --hostfile "${HOSTFILE}" --master_addr "${MASTER_ADDR}" --master_port "${MASTER_PORT}")

echo "nodes: $(cut -d' ' -f1 "${HOSTFILE}" | paste -sd,), ${GPUS_PER_NODE} GPUs each; master ${MASTER_ADDR}:${MASTER_PORT}"
case "${LAUNCHER}" in
    srun)
        # One launcher per node; each starts its node's GPUs (node rank = Slurm's node id).
        # shellcheck disable=SC2016  # expanded on each node: SLURM_NODEID differs per node
        srun --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c \
            'exec "$1" "${@:2:7}" --no_ssh --node_rank "${SLURM_NODEID}" launch/pretrain_bert.py "${@:9}"' \
            _ "${GROUP}" "${DS[@]}" "${ARGS[@]}" &
        ;;
    pdsh)
        "${GROUP}" "${DS[@]}" launch/pretrain_bert.py "${ARGS[@]}" &
        ;;
    *)
        echo "SIFT_LAUNCHER must be srun or pdsh, got ${LAUNCHER}" >&2
        exit 2
        ;;
esac
LAUNCHER_PID=$!
pass_on() {  # a signal to this script goes to every rank, which saves a checkpoint and exits
    if [[ "${LAUNCHER}" == srun ]]; then
        scancel --signal="$1" "${SLURM_JOB_ID}"  # the job's steps on every node; srun itself would SIGKILL them
    else
        kill -s "$1" "${LAUNCHER_PID}" 2>/dev/null
    fi
}
trap 'pass_on TERM' TERM
trap 'pass_on INT' INT
status=0
wait "${LAUNCHER_PID}" || status=$?
while kill -0 "${LAUNCHER_PID}" 2>/dev/null; do  # a trapped signal ends `wait` early: wait for the ranks
    status=0
    wait "${LAUNCHER_PID}" || status=$?
done
exit "${status}"
