"""MLLMRec training benchmark (run by hand, not a test): epoch time, validation-pass time and peak RSS
at the paper's Baby / Sports / Clothing shapes, on synthetic data (bench/_shapes.py).

Each shape runs in a fresh subprocess (so peak RSS is that shape's alone) through the real path:
the composed Hydra config (``dataset=mmrec`` pointing at the synthetic folder), the datamodule
(loading, refined graph, BPR triplets), the model and a Lightning ``Trainer`` on CPU. Checkpointing,
logging and the progress bar are off: they are not the model's cost. Times are wall-clock medians over
the epochs after the first (the first also pays one-off warm-up); "setup" is data loading + graph
(graph cached after the first run on a folder, as in real use).

On a shared VM the epoch time of identical code differs by up to ~10% from one process to the next
(epochs within a process agree to ~2%), so ``--runs N`` repeats each shape in N fresh processes and
reports the median of their medians with the range.

Targets on the 2-core CPU (issue #3): Baby <= 2.5 s per training epoch, <= 1 s per validation pass
(the authors' code: ~40 s and ~7 s).

Usage:
    python bench/train.py                                # all three shapes, writes bench/results/train.md
    python bench/train.py --shapes baby --epochs 5 --no-write
    python bench/train.py --shapes baby --runs 5          # 5 fresh processes: median and range over them
    python bench/train.py --model-override model.ui_layers=2     # any extra Hydra override
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

DEFAULT_DATA = Path(os.environ.get("MLLMREC_BENCH_DIR", "/tmp/mllmrec-bench"))


def compose(shape_name: str, folder: Path, output_dir: Path, overrides: list[str]):
    """The train config for the synthetic MMRec folder, composed as ``train.py`` would."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    os.environ.setdefault("PROJECT_ROOT", str(ROOT))
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = hydra_compose(
            config_name="train",
            overrides=[
                "dataset=mmrec", f"dataset.root={folder}", f"dataset.name={shape_name}",
                "dataset.item_features=item_feat.npy", "dataset.user_features=user_feat.npy",
                "logger=none", "callbacks=none", *overrides,
            ],
            return_hydra_config=True,
        )
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
    HydraConfig.instance().set_config(cfg)
    return cfg


def tower_product_floor(model, datamodule, repeats: int = 3) -> float | None:
    """Seconds that one epoch's tower matrix products alone take (best of ``repeats``), or None for a
    model without MLLMRec's two towers.

    Replays exactly the products of a training epoch: for each batch, with n the number of distinct
    users (user tower) or distinct items (item tower) in it, the forward ``[n, d_t] x [d_t, d1]`` and
    ``[n, d1] x [d1, d]`` and the backward weight and input gradients, on random data of the same
    shapes and nothing else. The gap between this and the measured epoch is everything that is not
    a matrix product (gathers, activations, optimiser, Python, Lightning).
    """
    import torch

    towers = [getattr(model, name, None) for name in ("user_tower", "item_tower")]
    if any(t is None for t in towers):
        return None
    shapes = []
    for users, positives, negatives in datamodule.train_dataloader():
        shapes.append((len(torch.unique(users)), len(torch.unique(torch.cat([positives, negatives])))))
    (w1_u, w2_u), (w1_i, w2_i) = ((t[0].weight.detach(), t[2].weight.detach()) for t in towers)
    most = max(max(s) for s in shapes)
    x_u, x_i = torch.randn(most, w1_u.shape[1]), torch.randn(most, w1_i.shape[1])
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for n_users, n_items in shapes:
            for x, w1, w2 in ((x_u[:n_users], w1_u, w2_u), (x_i[:n_items], w1_i, w2_i)):
                hidden = x @ w1.T
                out = hidden @ w2.T
                _ = out.T @ hidden, out @ w2  # second layer: weight and input gradients
                _ = hidden.T @ x  # first layer: weight gradient (frozen inputs need none)
        best = min(best, time.perf_counter() - started)
    return best


def worker(shape_name: str, epochs: int, data_dir: Path, overrides: list[str], threads: int | None) -> dict:
    """Run one shape in this process and return its measurements."""
    import hydra
    import lightning as L
    import torch

    if threads:
        torch.set_num_threads(threads)

    from mllmrec.train.task import build_datamodule, model_inputs

    from _shapes import SHAPES, ensure_mmrec_folder

    shape = SHAPES[shape_name]
    folder = ensure_mmrec_folder(shape, data_dir)
    cfg = compose(shape_name, folder, data_dir / "runs" / shape_name, overrides)
    L.seed_everything(cfg.seed, workers=True)

    started = time.perf_counter()
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    setup_s = time.perf_counter() - started
    started = time.perf_counter()
    model = hydra.utils.instantiate(cfg.model, **model_inputs(cfg, datamodule))
    model_init_s = time.perf_counter() - started

    class Timer(L.Callback):
        """Wall-clock and process CPU time (all threads) of each training part and validation pass.

        On a shared machine wall time includes waiting for the CPU; CPU time is the work itself (with
        several threads it also counts OpenMP spin-waiting, so it is an upper bound of the work).
        """

        def __init__(self) -> None:
            self.train: list[float] = []
            self.valid: list[float] = []
            self.train_cpu: list[float] = []
            self.valid_cpu: list[float] = []

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self._epoch = (time.perf_counter(), time.process_time())

        def on_validation_epoch_start(self, trainer, pl_module) -> None:
            # Lightning validates at the end of the training epoch: the training part ends here
            self._valid = (time.perf_counter(), time.process_time())
            if not trainer.sanity_checking:
                self.train.append(self._valid[0] - self._epoch[0])
                self.train_cpu.append(self._valid[1] - self._epoch[1])

        def on_validation_epoch_end(self, trainer, pl_module) -> None:
            if not trainer.sanity_checking:
                self.valid.append(time.perf_counter() - self._valid[0])
                self.valid_cpu.append(time.process_time() - self._valid[1])

    timer = Timer()
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=epochs, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, callbacks=[timer],
    )
    fit_started = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    fit_s = time.perf_counter() - fit_started
    floor_s = tower_product_floor(model, datamodule)
    later_train = timer.train[1:] or timer.train
    later_valid = timer.valid[1:] or timer.valid
    return {
        "shape": shape_name,
        "users": shape.n_users, "items": shape.n_items, "interactions": shape.n_interactions,
        "train_interactions": int(datamodule.data.train.nnz),
        "batches": len(datamodule.triplets),
        "graph_edges": int(datamodule.item_graph._nnz()),
        "model": cfg.model._target_,
        "overrides": overrides,
        "setup_s": setup_s,
        "model_init_s": model_init_s,
        "epochs": epochs,
        "train_epoch_s": timer.train,
        "valid_pass_s": timer.valid,
        "train_epoch_cpu_s": timer.train_cpu,
        "valid_pass_cpu_s": timer.valid_cpu,
        "train_epoch_median_s": statistics.median(later_train),
        "valid_pass_median_s": statistics.median(later_valid),
        "train_epoch_cpu_median_s": statistics.median(timer.train_cpu[1:] or timer.train_cpu),
        "valid_pass_cpu_median_s": statistics.median(timer.valid_cpu[1:] or timer.valid_cpu),
        "fit_s": fit_s,
        "tower_products_s": floor_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def run_in_subprocess(shape: str, epochs: int, data_dir: Path, overrides: list[str], threads: int | None) -> dict:
    cmd = [sys.executable, __file__, "--worker", shape, "--epochs", str(epochs), "--data-dir", str(data_dir)]
    if threads:
        cmd += ["--threads", str(threads)]
    for o in overrides:
        cmd += ["--model-override", o]
    load_before = os.getloadavg()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["load_before"], result["load_after"] = load_before, os.getloadavg()
    return result


def combine_runs(runs: list[dict]) -> dict:
    """One shape's result from several processes: the median over processes of each per-process
    median, plus the per-process medians themselves (``*_runs``) for the range."""
    combined = dict(runs[0])
    for key in ("train_epoch_median_s", "valid_pass_median_s", "train_epoch_cpu_median_s",
                "valid_pass_cpu_median_s", "setup_s", "peak_rss_mb"):
        combined[f"{key}_runs"] = [r[key] for r in runs]
        combined[key] = statistics.median(combined[f"{key}_runs"])
    floors = [r["tower_products_s"] for r in runs if r.get("tower_products_s") is not None]
    combined["tower_products_s"] = statistics.median(floors) if floors else None
    combined["load_before"], combined["load_after"] = runs[0]["load_before"], runs[-1]["load_after"]
    return combined


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _spread(result: dict, key: str) -> str:
    runs = result.get(f"{key}_runs")
    if not runs or len(runs) < 2:
        return ""
    return f", {min(runs):.2f}-{max(runs):.2f} s over {len(runs)} processes"


def markdown(results: list[dict], command: str) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        model_name = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        model_name = cpu
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    lines = [
        "| shape | users / items / train interactions | batches | threads | setup (load + graph) "
        "| train epoch: wall (CPU) | its tower products alone | validation pass: wall (CPU) | peak RSS "
        "| load avg (1 min) before -> after |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['shape']} | {r['users']:,} / {r['items']:,} / {r['train_interactions']:,} | {r['batches']} "
            f"| {r['torch_threads']} | {r['setup_s']:.1f} s "
            f"| **{r['train_epoch_median_s']:.2f} s** ({r['train_epoch_cpu_median_s']:.2f} s){_spread(r, 'train_epoch_median_s')} "
            f"| {_seconds(r.get('tower_products_s'))} "
            f"| **{r['valid_pass_median_s']:.2f} s** ({r['valid_pass_cpu_median_s']:.2f} s){_spread(r, 'valid_pass_median_s')} "
            f"| {r['peak_rss_mb']:.0f} MB | {r['load_before'][0]:.2f} -> {r['load_after'][0]:.2f} |"
        )
    detail = ["", "Per-epoch wall times (s), training part / validation pass (medians above skip epoch 0):", ""]
    for r in results:
        detail.append(f"- {r['shape']}: train {', '.join(f'{t:.2f}' for t in r['train_epoch_s'])}; "
                      f"valid {', '.join(f'{t:.2f}' for t in r['valid_pass_s'])}"
                      + (" (first process)" if len(r.get("train_epoch_median_s_runs", [])) > 1 else ""))
    header = [
        f"`{command}` — commit {commit}, {model_name}, {os.cpu_count()} CPUs, torch {results[0]['torch']}, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, model `{results[0]['model']}`"
        + (f", overrides {results[0]['overrides']}" if results[0]["overrides"] else "") + ".",
        "",
    ]
    return "\n".join(header + lines + detail) + "\n"


def append_results(file_name: str, text: str) -> None:
    """Append ``text`` under a timestamp heading to ``bench/results/<file_name>`` (kept as a log)."""
    out = ROOT / "bench" / "results" / file_name
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a", encoding="utf-8") as fh:
        fh.write(f"\n### {time.strftime('%Y-%m-%d %H:%M')}\n\n{text}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["baby", "sports", "clothing"])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--model-override", action="append", default=[], help="extra Hydra override")
    parser.add_argument("--runs", type=int, default=1,
                        help="fresh processes per shape (the table gives the median and range over them)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice, one per core)")
    parser.add_argument("--no-write", action="store_true", help="print only; do not append to bench/results/train.md")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        import logging

        logging.disable(logging.WARNING)
        print(json.dumps(worker(args.worker, args.epochs, args.data_dir, args.model_override, args.threads)))
        return

    if args.runs < 1:
        parser.error(f"--runs must be >= 1, got {args.runs}")
    results = []
    for shape in args.shapes:
        runs = []
        for _ in range(args.runs):
            result = run_in_subprocess(shape, args.epochs, args.data_dir, args.model_override, args.threads)
            print(json.dumps(result), flush=True)
            runs.append(result)
        results.append(combine_runs(runs) if len(runs) > 1 else runs[0])
    command = "python bench/train.py " + " ".join(sys.argv[1:])
    text = markdown(results, command.strip())
    print(text)
    if not args.no_write:
        append_results("train.md", text)


if __name__ == "__main__":
    main()
