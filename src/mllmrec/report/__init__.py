"""Tables and figures of a sweep: ``python report.py multirun/<sweep dir> [--out DIR] [--ttest A B]``.

Reads every job folder under the sweep dir (``metrics.json`` + ``.hydra/config.yaml`` +
``.hydra/overrides.yaml``) and writes into ``<sweep dir>/report/``:

* ``jobs.csv`` — one row per finished job; ``summary.csv`` / ``summary.md`` — mean +- std over seeds of
  every configuration; ``best.md`` — per dataset the configuration with the best **validation**
  score, its test score beside it (never selected by test);
* ``heatmap_<dataset>_<metric>.png`` — test R@20 / N@20 over alpha x K_c (the paper's Fig. 4);
* ``d_curve_<metric>.png`` — test R@20 / N@20 against the output dimension d (Fig. 5);
* ``mllm_table.md`` — Table 4's layout (rows: ``mllm``; per dataset test R/N@10/20 of the
  configuration chosen on validation, and which one it was);
* ``ablation_table.md`` — Table 3's layout (rows: the config key ``variant``, columns: datasets);
* ``ttest.md`` — paired t-test (``scipy.stats.ttest_rel``) of two variants' test R@20 over seeds;
* ``table2.md`` — Table 2's layout (models x datasets x R/N@10/20, best **bold**, second _underlined_;
  ablations of the full model, variants running its own ``model._target_``, are not rows), and the
  full model's improvement over the best baseline with a paired t-test over seeds;
* ``fig3_<dataset>.png`` / ``fig3.csv`` — Fig. 3: test R@20 of every host model without and with the
  refined graph (variants ``<host>`` and ``<host>+GR``);
* ``report.md`` — all of it, with a note for every section that had no data.

Wherever several configurations compete for one cell (a heatmap cell, a table cell, a point of a
curve), the one with the best mean validation score is shown, with its mean test score over seeds.
"""

from mllmrec.report.document import Section, build_report, fig3_figures, main, markdown_table, table2_markdown
from mllmrec.report.tables import (
    METRICS,
    SPLITS,
    ablation_variants,
    alpha_kc_grid,
    best_by_validation,
    config_keys,
    gr_comparison,
    improvement_over_best_baseline,
    layout_table,
    load_jobs,
    paired_ttest,
    reference_variant,
    selected_table,
    summarize,
    table2,
)

__all__ = [
    "SPLITS", "METRICS", "load_jobs", "config_keys", "summarize", "best_by_validation", "alpha_kc_grid",
    "layout_table", "selected_table", "reference_variant", "paired_ttest", "table2",
    "improvement_over_best_baseline", "gr_comparison", "ablation_variants",
    "markdown_table", "table2_markdown", "fig3_figures", "Section", "build_report", "main",
]
