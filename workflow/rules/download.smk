# Downloads: released checkpoints by name (esvit/resources/releases.yaml) and the transfer sets torchvision can fetch
# (esvit/resources/datasets.yaml, download: true). Local rules: compute nodes often have no internet. `esvit download`
# resumes a partial file, shows progress, verifies before anything uses the file, and honours download.mirror
# and download.cache. Only the release file and the dataset's record are outputs: a partial download
# (<file>.part) survives a failed job and the next run continues it.


rule download_release:
    output:
        checkpoint=ensure(f"{DOWNLOAD_DIR}/releases/{{release}}.pth", non_empty=True),
    log:
        "results/logs/download/release/{release}.log",
    params:
        options=download_options(),
    localrule: True
    shell:
        "python -m esvit download release {wildcards.release:q} --out {output.checkpoint:q} {params.options:q} > {log:q} 2>&1"


rule download_dataset:
    output:
        record=f"{DOWNLOAD_DIR}/datasets/{{dataset}}.json",
    log:
        "results/logs/download/dataset/{dataset}.log",
    params:
        source=lambda w: CFG.datasets[w.dataset].source,
        root=lambda w: CFG.datasets[w.dataset].root,
        options=download_options(),
    localrule: True
    shell:
        "python -m esvit download dataset {params.source:q} --root {params.root:q} --record {output.record:q}"
        " {params.options:q} > {log:q} 2>&1"
