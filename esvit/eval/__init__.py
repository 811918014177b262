"""Evaluation: cached features, weighted k-NN, the transfer linear probe, the linear protocol, metrics records,
the region-correspondence diagnostic. Import the modules themselves (``esvit.eval.knn``, ...): this package
imports nothing, so its plain-data config (``esvit.eval.config``) stays light."""
