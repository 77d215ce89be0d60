"""The architectures: ``blocks`` (the convolution, attention and bottleneck blocks), ``unet``
(the plain UNet of the seeds, from scratch), ``unet3plus`` (UNet 3+), ``smp``
(segmentation_models_pytorch's UNet, UNet++ and scSE-attention UNet on an encoder), and
``build`` (which architectures and options exist, the one way to check, build, count, save
and load a model from its config, and ``SegmentationModel``, the wrapper every network is
built in)."""
