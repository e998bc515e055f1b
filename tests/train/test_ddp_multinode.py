"""trainer=ddp_multinode: the config composes and builds a 2-node DDP Trainer from SLURM's variables.

Nothing is launched: a real multi-node run needs a cluster. What can break here is checked: the
config takes nodes and devices from the allocation, Lightning recognises the SLURM cluster and
reads this process's ranks from it, so each rank joins the right place of the process group.
"""

from __future__ import annotations

import hydra
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from train_helpers import CONF

# task 5 of 8: node 1 of 2, 4 tasks per node (what `srun` sets for one rank)
SLURM_RANK_5_OF_8 = {
    "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "mllmrec-train", "SLURM_NTASKS": "8",
    "SLURM_NTASKS_PER_NODE": "4", "SLURM_JOB_NUM_NODES": "2", "SLURM_NNODES": "2", "SLURM_NODEID": "1",
    "SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NODELIST": "gpu[17-18]",
}


def _trainer_cfg(overrides: list[str]):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(config_name="train", overrides=["trainer=ddp_multinode", *overrides]).trainer
    finally:
        GlobalHydra.instance().clear()


def test_two_node_ddp_trainer_from_slurm_variables(monkeypatch, tmp_path) -> None:
    from lightning.fabric.plugins.environments import SLURMEnvironment
    from lightning.pytorch.strategies import DDPStrategy

    for name in ("SLURM_NNODES", "SLURM_NTASKS_PER_NODE"):
        monkeypatch.delenv(name, raising=False)
    alone = _trainer_cfg([])
    assert alone.num_nodes == 1 and alone.devices == 1 and alone.strategy == "ddp"

    for name, value in SLURM_RANK_5_OF_8.items():
        monkeypatch.setenv(name, value)
    cfg = _trainer_cfg(["trainer.accelerator=cpu", f"paths.output_dir={tmp_path}"])
    assert cfg.num_nodes == 2 and cfg.devices == 4
    trainer = hydra.utils.instantiate(cfg, logger=False, enable_checkpointing=False)
    assert isinstance(trainer.strategy, DDPStrategy)
    env = trainer.strategy.cluster_environment
    assert isinstance(env, SLURMEnvironment) and env.creates_processes_externally
    assert (trainer.num_nodes, trainer.num_devices, trainer.world_size) == (2, 4, 8)
    assert (trainer.global_rank, trainer.local_rank, trainer.node_rank) == (5, 1, 1)
    assert env.main_address == "gpu17"  # the first node of the allocation hosts rank 0
    env.validate_settings(num_devices=trainer.num_devices, num_nodes=trainer.num_nodes)  # what launch checks


def test_a_run_that_overrides_the_allocation_is_refused(monkeypatch, tmp_path) -> None:
    for name, value in SLURM_RANK_5_OF_8.items():
        monkeypatch.setenv(name, value)
    # 2 nodes x 4 tasks allocated, but the run asks for 2 devices per node: the launch check refuses
    # (called directly: launching would wait for the 7 other ranks)
    cfg = _trainer_cfg(["trainer.accelerator=cpu", "trainer.devices=2", f"paths.output_dir={tmp_path}"])
    trainer = hydra.utils.instantiate(cfg, logger=False, enable_checkpointing=False)
    with pytest.raises(ValueError, match="ntasks-per-node=4"):
        trainer.strategy.cluster_environment.validate_settings(num_devices=trainer.num_devices,
                                                               num_nodes=trainer.num_nodes)
