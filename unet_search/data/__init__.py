"""Images and masks: ``scan`` (find and check the files of a layout), ``decode`` (read
images, masks and instance labels), ``dataset`` (the decoded arrays, their cache and
fingerprint), ``split`` (the seeded train/val/test split), ``stats`` (exact pixel statistics,
the size at a scale), ``synthetic`` (generated data)."""
