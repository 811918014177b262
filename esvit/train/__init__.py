"""Pretraining: the training config, the loop, its state, schedules and process group."""
