"""Offline sifting: score a corpus's training blocks once, store the scores beside the dataset, and
select by them at load time with no model pass per step (criterion ``stored``); the same files carry
a reference model's stored loss per block (criterion ``reducible``).

``text_stats``   free statistics of a block's token ids (unigram entropy, unique-token share)
``model_scores`` a model's masked-LM score of every block (a frozen early exit's entropy, a reference loss)
``scoring``      the scoring by name, with its cost
``run_blocks``   a run's training blocks, from its own arguments

The score file the scores go to, and which the pretraining job reads, is ``sift_ds.score_file``.
"""
