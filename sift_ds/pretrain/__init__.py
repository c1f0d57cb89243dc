"""BERT pretraining with SIFT on DeepSpeed: an application of the ``sift_ds`` library.

``launch/pretrain_bert.py`` is its command line. The flow:

    options (PretrainOptions, from the CLI + the ds_config's "pretrain" section)
      -> plan.resolve_plan: the ds_config read once and validated (ds_policy, ds_check) into a frozen
         RunPlan, with the checkpoint to resume from (resume, manifest)
      -> job.setup_job: process group (runtime), corpus -> tokenizer -> blocks (corpus, tokenizer,
         data), BERT (models, fused, optimizer), sift_ds.initialize, loader, trainer, resume (checkpoint,
         manifest, rng)
      -> Job.run: trainer (evaluation, metrics, checkpoints) -> export

docs/design.md has the table of every module.
"""
