"""Launch: the Slurm job of a pretraining run (submitit), its settings and its signals."""
