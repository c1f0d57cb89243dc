"""Pretraining data prepared once, outside the training job (``launch/prepare_data.py``), and read by
every rank through memory maps (``--prepared DIR``).

A prepared directory holds the blocks the training job would pack in process (the same packing
code, ``sift_ds.pretrain.data``), in shards of whole packing batches, each column a ``.npy`` file in
the smallest dtype that holds it, and a ``manifest.json`` written last:

  * ``sources``: where the documents come from (text and JSON files, a ``datasets`` directory or hub
    name, or Megatron ``.bin``/``.idx`` indexed datasets, read by megatron-core's own reader);
  * ``shard``: one shard's documents -> tokens -> blocks, written atomically (temporary files, then
    renames, the shard's record last), by one of N worker processes;
  * ``pipeline``: the preparation: settings, tokenizer, shards (resumed shard by shard), manifest.

The directory's format and its reader live in ``sift_ds.shards``.
"""
