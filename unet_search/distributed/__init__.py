"""Training on Ray: ``recipe`` (one worker's run, the same in a trial process and in a Ray
Train worker), ``trainer`` (the ``TorchTrainer`` and ``unet-search train``), ``faults``
(the fault injection the tests use)."""
