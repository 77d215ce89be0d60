"""The dock widget: a model (``models:/NAME@alias`` in the environment's tracking store, or a
saved model folder), an image layer, and a button that segments it off the UI thread, with
napari's progress bar, into a Labels layer (:mod:`.segment`). Errors are one line in the
widget and in napari's notifications: the viewer keeps running."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import napari
from napari.qt.threading import GeneratorWorker, thread_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from unet_search.core.errors import UserError
from unet_search.napari_plugin.segment import Segmentation, planes, segmenting, tracking_text
from unet_search.serve.inference import Predictor, load_model

__all__ = ["SegmentWidget"]


class SegmentWidget(QWidget):
    """Pick a model and an image layer, press Segment: a Labels layer ``<image> labels``."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.model = QLineEdit()
        self.model.setPlaceholderText("models:/NAME@champion, or a model folder")
        self.layer = QComboBox()
        self.button = QPushButton("Segment")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.tracking = QLabel(f"models:/ from {tracking_text()}")
        self.tracking.setWordWrap(True)
        form = QFormLayout()
        form.addRow("model", self.model)
        form.addRow("image", self.layer)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.tracking)
        layout.addWidget(self.button)
        layout.addWidget(self.status)
        layout.addStretch()
        self._loaded: tuple[str, Predictor] | None = None
        self.worker: GeneratorWorker[int, None, Segmentation] | None = None
        self.button.clicked.connect(self.segment)
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(self._refresh)
        self._refresh()

    def _refresh(self, *_: Any) -> None:
        chosen = self.layer.currentText()
        names = [ly.name for ly in self.viewer.layers if isinstance(ly, napari.layers.Image)]
        self.layer.clear()
        self.layer.addItems(names)
        if chosen in names:
            self.layer.setCurrentText(chosen)

    def _predictor(self, uri: str) -> Predictor:
        """The model of ``uri``, loaded once (in the worker: a download can take a while)."""
        if self._loaded is None or self._loaded[0] != uri:
            self._loaded = (uri, load_model(uri))
        return self._loaded[1]

    def segment(self) -> GeneratorWorker[int, None, Segmentation] | None:
        """Segment the chosen layer in a worker thread; returns the worker (None when there is
        nothing to segment, said in the widget)."""
        uri, name = self.model.text().strip(), self.layer.currentText()
        if not uri or not name:
            self._say("choose a model and an image layer first")
            return None
        layer = self.viewer.layers[name]
        data, rgb = layer.data, bool(layer.rgb)
        try:
            count = len(planes(data, rgb)[1])
        except UserError as err:
            self._say(str(err))
            return None

        @thread_worker(progress={"total": count, "desc": f"segmenting {name}"}, ignore_errors=True)
        def run() -> Generator[int, None, Segmentation]:
            return (yield from segmenting(self._predictor(uri), data, rgb, name))

        self.button.setEnabled(False)
        self._say(f"segmenting {name} ...", error=False)
        worker = run()
        worker.returned.connect(lambda result: self._add(layer, result))
        worker.errored.connect(lambda err: self._say(_one_line(err)))
        worker.finished.connect(lambda: self.button.setEnabled(True))
        self.worker = worker
        worker.start()
        return worker

    def _add(self, layer: Any, result: Segmentation) -> None:
        labels = self.viewer.add_labels(
            result.labels,
            name=f"{layer.name} labels",
            scale=layer.scale[-result.labels.ndim :],
            translate=layer.translate[-result.labels.ndim :],
            features=result.features or None,
        )
        found = len(result.features.get("index", [])) if result.kind == "instances" else None
        what = f"{found} objects" if found is not None else "a mask"
        self._say(f"{labels.name}: {what}", error=False)

    def _say(self, text: str, error: bool = True) -> None:
        self.status.setText(text)
        (show_error if error else show_info)(text)


def _one_line(err: BaseException) -> str:
    """A user's error as its message; anything else with its type, on one line."""
    text = str(err) if isinstance(err, UserError) else f"{type(err).__name__}: {err}"
    return " ".join(text.split())
