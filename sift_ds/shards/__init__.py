"""The format of a prepared directory (pretraining data prepared once by ``launch/prepare_data.py``,
``sift_ds.prepare``) and its reader, shared by the preparation that writes it and every training
front-end that memory-maps it (``--prepared DIR``):

  * ``layout``: file names, the manifest, dtypes, atomic writes, the tokenizer's digest;
  * ``blocks``: the reader (``PreparedBlocks``, ``PreparedRows``) and the manifest's checks against a run.
"""
