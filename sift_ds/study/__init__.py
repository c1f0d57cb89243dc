"""Multi-seed SIFT-vs-vanilla studies: arm specs (``arms``), running every arm x seed of the
pretraining job as a resumable subprocess (``runs``), curve statistics (``analysis``) and the
Markdown / CSV / PNG report (``report``). The command line is ``launch/compare.py``.

The pretraining job is driven only through its command line and its output files
(``metrics.jsonl``, ``tokenizer/``), so nothing here imports the training code.
"""
