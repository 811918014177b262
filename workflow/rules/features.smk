# Frozen features, once per (model, dataset, split): every k-NN and probe reads this cache.


rule extract_features:
    input:
        unpack(eval_model_inputs),
    output:
        features=ensure("results/features/{run}/{dataset}/{split}.pt", non_empty=True),
    log:
        "results/logs/features/{run}/{dataset}/{split}.log",
    benchmark:
        "results/benchmarks/features/{run}/{dataset}/{split}.tsv"
    params:
        model=eval_model_args,
        batch_size=CFG.eval.batch_size,
        workers=CFG.eval.workers,
        device=CFG.eval.device,
        shards=lambda w, input: Path(input.manifest).parent,
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=1,
    shell:
        "python -m esvit extract {params.model:q} --shards {params.shards:q} --out {output.features:q}"
        " --batch-size {params.batch_size} --workers {params.workers} --device {params.device:q} > {log:q} 2>&1"
