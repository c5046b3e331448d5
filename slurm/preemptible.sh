# Sourced by the sbatch templates: run a launcher so that Slurm's warning signal reaches the trainer.
#
# `#SBATCH --signal=B:TERM@120` makes Slurm send SIGTERM to this batch shell 120 s before the time limit (and
# on preemption with a grace time). A batch shell does not pass signals on by itself, so we trap TERM and forward
# it to the launcher (srun forwards it to its tasks; `accelerate launch`/torchrun forward it to every worker and
# give them 30 s before SIGKILL). run_tuning's SIGTERM handler then saves a checkpoint at the end of the current
# step and exits; with TLREC_REQUEUE=1 (default) the job is requeued and run_tuning resumes from that checkpoint.

TLREC_PREEMPTED=0

_tlrec_forward_term() {
    TLREC_PREEMPTED=1
    TLREC_TRAPPED=1
    echo "tlrec: SIGTERM received (time limit or preemption): asking the trainer to checkpoint" >&2
    kill -TERM "$TLREC_CHILD" 2>/dev/null || true
}

run_preemptible() {
    "$@" &
    TLREC_CHILD=$!
    TLREC_TRAPPED=0
    trap _tlrec_forward_term TERM
    local status=0 again
    wait "$TLREC_CHILD" || status=$?
    # The trap makes `wait` return at once (128+15) while the trainer is still checkpointing: wait again, for
    # the trainer's own status. Bash keeps an ended child's status until it is waited for, so this also holds
    # when the trainer has already exited (checking `kill -0` first raced with a quick checkpoint and returned
    # 143); 127 means the first wait already had the real status.
    while (( TLREC_TRAPPED )); do
        TLREC_TRAPPED=0
        again=0
        wait "$TLREC_CHILD" || again=$?
        (( again == 127 )) || status=$again
    done
    trap - TERM
    if [[ "$TLREC_PREEMPTED" == 1 && "${TLREC_REQUEUE:-1}" == 1 && -n "${SLURM_JOB_ID:-}" ]]; then
        echo "tlrec: requeueing job $SLURM_JOB_ID; the rerun resumes from the last checkpoint" >&2
        scontrol requeue "$SLURM_JOB_ID"
    fi
    return "$status"
}
