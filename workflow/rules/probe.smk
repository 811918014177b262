# k-NN and the linear probe, one job each per (model, dataset), reading the cached features. Rerunning one
# dataset touches nothing else: snakemake results/probe/<model>/<dataset>/metrics.json -f


rule knn_classify:
    input:
        train="results/features/{run}/{dataset}/train.pt",
        test="results/features/{run}/{dataset}/test.pt",
    output:
        metrics=ensure("results/knn/{run}/{dataset}/metrics.json", non_empty=True),
    log:
        "results/logs/knn/{run}/{dataset}.log",
    params:
        ks=lambda w: ",".join(str(k) for k in CFG.eval.knn_ks),
        temperature=lookup(dpath="eval/knn_temperature", within=config, default=0.07),
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "python -m esvit knn --train {input.train} --test {input.test} --out {output.metrics}"
        " --run {wildcards.run} --dataset {wildcards.dataset} --ks {params.ks}"
        " --temperature {params.temperature} > {log} 2>&1"


rule fit_linear_probe:
    input:
        train="results/features/{run}/{dataset}/train.pt",
        test="results/features/{run}/{dataset}/test.pt",
    output:
        metrics=ensure("results/probe/{run}/{dataset}/metrics.json", non_empty=True),
    log:
        "results/logs/probe/{run}/{dataset}.log",
    benchmark:
        "results/benchmarks/probe/{run}/{dataset}.tsv"
    params:
        metric=lambda w: CFG.datasets[w.dataset].metric,
    resources:
        mem_mb=8000,
        runtime=120,
    shell:
        "python -m esvit probe --train {input.train} --test {input.test} --out {output.metrics}"
        " --run {wildcards.run} --dataset {wildcards.dataset} --metric {params.metric} > {log} 2>&1"
