"""Every MLflow tag name unet-search writes or reads: runs, a search's parent run, and
registered model versions (one place; tracking, registry, search, worker and report import
them from here)."""

from __future__ import annotations

PREFIX = "unet_search."
# Every run
TAG_CODE_VERSION = "unet_search.code_version"
TAG_SEARCH_ID = "unet_search.search_id"
TAG_TRIAL_ID = "unet_search.trial_id"
TAG_TRIAL_NUMBER = "unet_search.trial_number"  # Optuna's trial number
# finished | stopped_early | failed | infeasible (a trial's end: unet_search.core.outcome)
TAG_OUTCOME = "unet_search.outcome"
TAG_ERROR = "unet_search.error"  # a failed trial's exception (the traceback: error.txt)
TAG_BASELINE = "unet_search.baseline"  # the baseline preset's name, on the baseline trial
TAG_DEFAULT = "unet_search.default"  # "true" on the planned default configuration's trial
TAG_FINAL_FIT = "unet_search.final_fit"  # "true" on a search's final fit
# The same names are a trial's Tune config keys (and the enqueued trials' Optuna user
# attributes): TAG_TRIAL_NUMBER, TAG_BASELINE and TAG_DEFAULT True, and TAG_FINAL_FIT
# {"epochs": E, "init_run": a run id or None} on the final fit (search/final.py).
TAG_DATA_LAYOUT = "unet_search.data_layout"  # dsb2018 | images_masks
TAG_PARENT = "mlflow.parentRunId"
# Where a run trained (Ray's words): its world size and the nodes of its ranks
TAG_RAY_WORLD_SIZE = "ray.world_size"
TAG_RAY_NODE_IP = "ray.node_ip"  # rank 0's
TAG_RAY_NODE_ID = "ray.node_id"  # rank 0's
TAG_RAY_NODE_IDS = "ray.node_ids"  # every rank's, comma-separated
TAG_RAY_NUM_WORKERS = "ray.num_workers"  # on a `unet-search train` run
# A search's parent run
TAG_KIND = "unet_search.kind"  # "search"
TAG_BEST_TRIAL = "unet_search.best_trial_id"
TAG_BEST_RUN = "unet_search.best_run_id"
# why the final fit trains the trial it does (the incumbent rule: unet_search.search.incumbent)
TAG_FINAL_SOURCE = "unet_search.final_fit_source"
TAG_REGISTERED = "unet_search.registered_version"  # once its best model is registered
TAG_ALIAS = "unet_search.registered_alias"  # champion | challenger
TAG_DECISION = "unet_search.champion_decision"  # why the alias went where it did
# Runs and registered versions: what data and split they were scored on
TAG_FINGERPRINT = "unet_search.data_fingerprint"  # the data and the split
TAG_DATA = "unet_search.data_id"  # the data alone: its files' contents and the classes
TAG_SPLIT = "unet_search.split"  # val=0.2 test=0.1 seed=0
# Registered versions
TAG_METRIC = "unet_search.metric"
TAG_VALUE = "unet_search.metric_value"
TAG_MODE = "unet_search.mode"
TAG_RUN_ID = "unet_search.run_id"  # the best trial's run
# true: onnx/model.onnx is in the model, checked against PyTorch; off: search.onnx false;
# failed: it could not be exported (TAG_ONNX_ERROR says why; the pyfunc is registered)
TAG_ONNX = "unet_search.onnx"
TAG_ONNX_ERROR = "unet_search.onnx_error"
TAG_ONNX_DIFF = "unet_search.onnx_max_logit_diff"  # on a validation image, whole
# true: bioimageio/rdf.yaml is in the model, tested as `bioimageio test` tests it; off: no ONNX
# (search.onnx false, or its export failed); failed: TAG_BIOIMAGEIO_ERROR says why
TAG_BIOIMAGEIO = "unet_search.bioimageio"
TAG_BIOIMAGEIO_ERROR = "unet_search.bioimageio_error"
# inference_ms of the registered model through the predictor (unet_search.train.latency):
# PyTorch's and onnxruntime's, on the registering process's device and threads
TAG_INFERENCE_MS = "unet_search.inference_ms"
TAG_ONNX_INFERENCE_MS = "unet_search.onnx_inference_ms"
TAG_LATENCY = "unet_search.latency"  # "512x512 cpu 2 threads": what they were measured on
# A version chosen among several objectives, within limits ("val_dice:max,inference_ms:min";
# "num_parameters<=5e+06"): the champion gate compares only versions chosen alike
TAG_OBJECTIVES = "unet_search.objectives"
TAG_CONSTRAINTS = "unet_search.constraints"
# ... and unet_search.<score> for each held-out test score (unet_search.test_dice, ...)
