"""Hydra plugins of mllmrec: the ``gpus`` launcher (one job per GPU, a process per job) and an Optuna
sweeper on Optuna's current API (persistent, shareable, resumable studies). Hydra imports this
package while it scans ``hydra_plugins`` at start-up, so nothing heavy is imported at module level."""
