# The last stage: every metrics JSON -> tables beside the paper, figures, one HTML page (esvit report).
# The outputs are registered for `snakemake --report report.html`.


rule measure_correspondence:
    input:
        unpack(eval_checkpoint),
        manifest=lambda w: plan.viz_manifest(CFG),
    output:
        json="results/viz/{run}/correspondence.json",
        png="results/viz/{run}/correspondence.png",
    log:
        "results/logs/viz/{run}.log",
    params:
        model=viz_model_args,
        shards=lambda w, input: Path(input.manifest).parent,
        out=lambda w, output: Path(output.json).parent,
        size=lambda w: EVAL_MODELS[w.run]["image_size"],  # the training resolution (global crops)
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "python -m esvit viz {params.model:q} --shards {params.shards:q} --image-size {params.size}"
        " --out {params.out:q} > {log:q} 2>&1"


rule build_report:
    input:
        **plan.report_inputs(CFG, list(EVAL_MODELS)),
    output:
        summary_csv=report("results/report/summary.csv", caption="../report/summary.rst", category="Tables", labels={"table": "all results (csv)"}),
        summary_md="results/report/summary.md",
        html=report("results/report/report.html", caption="../report/html.rst", category="Report", labels={"page": "report.html"}),
        bars=report("results/report/transfer_bars.png", caption="../report/transfer_bars.rst", category="Figures", labels={"figure": "transfer bars"}),
        speed=report("results/report/accuracy_vs_throughput.png", caption="../report/accuracy_vs_throughput.rst", category="Figures", labels={"figure": "accuracy vs throughput"}),
        curves=report("results/report/training_curves.png", caption="../report/training_curves.rst", category="Figures", labels={"figure": "training curves"}),
    log:
        "results/logs/report.log",
    params:
        baseline=REPORT_BASELINE,
    localrule: True
    shell:
        "python -m esvit report --metrics {input.metrics:q} --runs {input.pretrain_done:q} --viz {input.viz:q}"
        " --bench {input.bench:q} --out results/report {params.baseline:q} > {log:q} 2>&1"
