"""Training: the run configuration, one optimizer step (:mod:`.trainer`), the orchestration of a run
(:mod:`.run`), checkpoints of a run, losses (paper Eq. 5-6) and the EMA of the weights."""
