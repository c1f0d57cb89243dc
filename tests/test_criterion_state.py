"""The criterion's state (freq_loss's running baseline) travels in a bare ``SiftEngine``'s DeepSpeed
checkpoint: an engine stopped after its step-3 checkpoint, and a new engine (another initialisation,
a fresh baseline) loaded from it, score, select and train exactly what the uninterrupted engine did.
(SiftTrainer: tests/test_hf_trainer.py test_run_mlm_resume_is_exact; Megatron TP=2:
tests/test_megatron_dist.py; the pretraining job: tests/test_resume.py.)"""
import sift_ds
from tiny import ds_config, mlm_batch, spread_weights, tiny_bert

STEPS, SAVED_AT = 6, 3


def freq_loss_engine(seed):
    model = spread_weights(tiny_bert(layers=2, dropout=0.0), seed=seed)
    cfg = ds_config(micro=4, criterion="freq_loss", scope="local", baseline_decay=0.7)
    return sift_ds.initialize(model=model, config=cfg)[0]


def steps(engine, batches):
    """(kept indices, scores, loss) of each training step."""
    out = []
    for batch in batches:
        loss = engine.train_step(batch)
        last = engine.frontend.last
        out.append((last.indices.tolist(), last.scores.tolist(), loss.item()))
    return out


def test_a_bare_engine_resumed_from_its_checkpoint_selects_what_the_uninterrupted_engine_did(single_rank_dist,
                                                                                            tmp_path):
    whole = freq_loss_engine(seed=3)
    batches = [mlm_batch(whole.gross_batch_size, seed=s, p_mask=0.5) for s in range(STEPS)]
    want = steps(whole, batches[:SAVED_AT])
    whole.save_checkpoint(str(tmp_path), tag="step3")
    want += steps(whole, batches[SAVED_AT:])

    resumed = freq_loss_engine(seed=11)  # what a new process builds: other weights, no baseline yet
    path, _ = resumed.load_checkpoint(str(tmp_path), tag="step3")
    assert path is not None and resumed.global_steps == SAVED_AT
    got = steps(resumed, batches[SAVED_AT:])
    assert got == want[SAVED_AT:]  # bitwise: the baseline, weights and optimizer state all restored
    assert len({tuple(indices) for indices, _, _ in want[SAVED_AT:]}) > 1  # the selections vary
