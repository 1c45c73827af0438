# Tables: one CSV per paper row (its own target), then CSV + LaTeX per table, with the provenance
# of every cell (settings hash, code version, result files) in results/{table}.sources.csv. The
# table settings carry the config's `scale`, which every row states with each cell's protocol.


rule table_row:
    input:
        row_inputs,
    output:
        "results/rows/{table}/{row}.csv",
    wildcard_constraints:
        table="table[0-9]+",
        row="[a-z0-9_]+",
    params:
        settings=lambda w: as_json(table_settings(config)),
    conda:
        "../../environment.yml"
    log:
        "results/logs/rows/{table}/{row}.log",
    benchmark:
        "results/benchmarks/table_row/{table}/{row}.tsv",
    shell:
        "alice table --settings {params.settings:q} row --table {wildcards.table} "
        "--row {wildcards.row} --out {output} 2> {log}"


rule table:
    input:
        table_rows,
    output:
        csv=report("results/{table}.csv", caption="../report/table.rst", category="Tables",
                   labels={"table": "{table}", "format": "CSV"}),
        tex=report("results/{table}.tex", caption="../report/table.rst", category="Tables",
                   labels={"table": "{table}", "format": "LaTeX"}),
        sources="results/{table}.sources.csv",
    wildcard_constraints:
        table="table[0-9]+",
    conda:
        "../../environment.yml"
    log:
        "results/logs/tables/{table}.log",
    benchmark:
        "results/benchmarks/table/{table}.tsv",
    shell:
        "alice table render --table {wildcards.table} --rows-dir results/rows/{wildcards.table} "
        "--csv {output.csv} --tex {output.tex} --sources {output.sources} 2> {log}"
