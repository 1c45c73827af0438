# Reproduced vs reported over Tables 1-11: one line per reproduced cell, paired tests (Alice vs
# the best reproduced baseline, each ablation switch vs Alice's default) and a figure, all at the
# scale the rows state (demo: no difference to the paper's numbers, alice.tables.summary). Its inputs
# are every row file of every table; the per-fold and per-case values are read through their
# sources (the metrics files the rows were computed from).


rule summary:
    input:
        [f"results/rows/{table}/{row['row']}.csv" for table in TABLES
         for row in load_spec(table)["rows"]],
    output:
        csv=report("results/summary.csv", caption="../report/summary.rst", category="Summary",
                   labels={"file": "reproduced vs reported"}),
        tests=report("results/summary_tests.csv", caption="../report/summary.rst", category="Summary",
                     labels={"file": "paired tests"}),
        figure=report("results/figures/summary.png", caption="../report/summary.rst",
                      category="Summary", labels={"file": "figure"}),
    conda:
        "../../environment.yml"
    log:
        "results/logs/summary.log",
    benchmark:
        "results/benchmarks/summary.tsv",
    shell:
        "alice summary --rows-dir results/rows --csv {output.csv} --tests {output.tests} "
        "--figure {output.figure} 2> {log}"
