"""The napari plugin (npe2, ``napari.yaml``; ``pip install 'unet-search[napari]'``): a dock
widget that segments the selected image layer with a registered model (a
``models:/NAME@alias`` URI in the environment's tracking store, or a saved model folder) and
adds a Labels layer: instances when the model has an instance target (its object table as
the layer's features), else the mask. The segmentation itself is :mod:`.segment` (no Qt);
the widget, :mod:`.widget`."""
