#!/bin/bash
# Run a command (the DeepSpeed launcher) in a process group of its own, forward SIGTERM / SIGINT to
# the whole group, and return only when every process of the group has exited.
#
#   launch/run_group.sh deepspeed --num_gpus 8 launch/pretrain_bert.py --ds_config ... --output_dir ...
#
# Why: a Slurm task ends when its process does, and Slurm then kills whatever of the task is left. The
# `deepspeed` command ends at once on SIGTERM (its ranks notice and stop at the next step boundary),
# so this script keeps the task alive until the last rank has saved and exited. Sent to the group,
# SIGTERM reaches every rank directly, which finishes its step, saves a checkpoint and exits 0.
# (DeepSpeed's per-node launcher gets it too and SIGKILLs a rank still alive 30 s later; a save cut
# off that way never becomes `latest`: docs/usage.md.)
# Exit status: the command's (143 after a forwarded SIGTERM, as the launcher itself is terminated).
set -u
set -m  # job control: the background command leads a new process group (pgid = its pid)
"$@" &
leader=$!
forward() {
    trap '' TERM INT
    kill -s "$1" -- "-${leader}" 2>/dev/null
}
trap 'forward TERM' TERM
trap 'forward INT' INT

group_alive() {  # any process of the group that is not a zombie
    ps -e -o pgid=,stat= | awk -v g="${leader}" '$1 == g && $2 !~ /^Z/ { found = 1 } END { exit !found }'
}

wait "${leader}"
status=$?
while kill -0 "${leader}" 2>/dev/null; do  # `wait` returns early when a trapped signal arrives
    wait "${leader}"
    status=$?
done
while group_alive; do  # ranks outliving the launcher: they are saving, let them finish
    sleep 1
done
exit "${status}"
