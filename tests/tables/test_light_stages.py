"""The table stages stay light: `alice table row` (every row but Table 8's, which reads the
fine-tuned model files with `torch.load(weights_only=True)`), `alice table render` and `alice
summary` never import torch or MONAI, which would cost each of those ~110 jobs seconds of start-up
(docs/demo.md "Start-up cost")."""

from __future__ import annotations

import json

from alice import config as cfg
from alice.tables.spec import load_spec, table_ids, table_settings


def test_table_rows_render_and_summary_import_neither_torch_nor_monai(tmp_path, fake_results,
                                                                     light_stages):
    config = cfg.load_config()
    settings = table_settings(config)  # what the rules pass: the demo config's
    fake_results(tmp_path, settings, config)
    rows = [["table", "--settings", json.dumps(settings), "row", "--table", table, "--row",
             row["row"], "--out", f"results/rows/{table}/{row['row']}.csv"]
            for table in table_ids() if table != "table8" for row in load_spec(table)["rows"]]
    renders = [["table", "render", "--table", table, "--rows-dir", f"results/rows/{table}",
                "--csv", f"results/{table}.csv", "--tex", f"results/{table}.tex"]
               for table in table_ids() if table != "table8"]
    summary = [["summary", "--rows-dir", "results/rows", "--csv", "results/summary.csv",
                "--tests", "results/summary_tests.csv", "--figure", "results/summary.png"]]
    # Table 8's rows (torch reads the models) written in this process: the summary reads every table
    from alice.tables import render

    for row in load_spec("table8")["rows"]:
        frame = render.compute_row("table8", row["row"], settings, root=tmp_path)
        render.write_row(frame, tmp_path / f"results/rows/table8/{row['row']}.csv")
    light_stages(rows + renders + summary, cwd=tmp_path)
    assert (tmp_path / "results/rows/table1/alice.csv").is_file()
    assert (tmp_path / "results/summary.png").is_file()
