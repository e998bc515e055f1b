"""The training stage: one run of ``train.py``.

* :mod:`.task` – build everything from the config, fit, test, write ``metrics.json``;
* :mod:`.datamodule` – the LightningDataModule (opens the dataset, builds model inputs, serves batches);
* :mod:`.batches` – BPR triplets and evaluation user batches, epoch by epoch;
* :mod:`.callbacks` – graph statistics and the per-run figures;
* :mod:`.checks` – start-up checks of the composed config;
* :mod:`.job`, :mod:`.loggers`, :mod:`.objective`, :mod:`.fingerprint` – the job wrapper, W&B set-up,
  the value returned to sweepers and the run's fingerprint (these four import no torch).

Submodules are imported on demand: importing this package imports nothing heavy.
"""
