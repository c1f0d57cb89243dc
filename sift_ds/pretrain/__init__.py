"""BERT pretraining with SIFT on DeepSpeed: an application of the ``sift_ds`` library.

``launch/pretrain_bert.py`` is its command line. The flow:

    options (PretrainOptions, from the CLI + the ds_config's "pretrain" section)
      -> plan.resolve_plan: the ds_config read once and validated into a frozen RunPlan
      -> job.setup_job: process group (runtime), corpus -> tokenizer -> blocks (corpus, tokenizer,
         data), BERT (models, fused, optimizer), sift_ds.initialize, loader, trainer, resume (checkpoint)
      -> Job.run: trainer (evaluation, metrics, checkpoints) -> export

Modules: options, plan, ds_policy, runtime, job, trainer, evaluation, metrics, checkpoint, corpus,
tokenizer, data, loader, models, fused, optimizer.
"""
