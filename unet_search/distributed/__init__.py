"""Training on Ray: ``recipe`` (one worker's run, the same in a trial process and in a Ray
Train worker: set up, limits, fit), ``context`` (what the recipe is given and where it runs),
``reporter`` (each epoch's logging, checkpoint and report), ``checkpoint`` (checkpoints and
the weights a run starts from), ``limits`` (what a trial measures before it trains),
``trainer`` (the ``TorchTrainer`` and ``unet-search train``), ``faults`` (the fault
injection the tests use)."""
