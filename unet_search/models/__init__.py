"""The architectures: ``unet`` (the plain UNet of the seeds, from scratch), ``smp``
(segmentation_models_pytorch's UNet, UNet++ and scSE-attention UNet on an encoder), and
``build`` (the one way to check, build, count, save and load a model from its config)."""
