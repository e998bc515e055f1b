"""Sweeps: GPU leases (:mod:`.lease`), one process per job (:mod:`.worker`, used by the
``hydra/launcher=gpus`` plugin), resume/skip of finished jobs (:mod:`.resume`), crash records
(:mod:`.failures`, :mod:`.task`), W&B set-up per job (:mod:`.tracking`) and the Optuna search
(:mod:`.optuna_search`). Submodules are imported on demand: nothing here imports torch."""
