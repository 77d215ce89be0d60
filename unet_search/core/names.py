"""Every name unet-search stores something under, besides MLflow tags (:mod:`.tags`): the
artifacts of a search's parent run and of a trial's run, the files of a saved model and of a
checkpoint, and the Ray resource that holds a trial driver's slot. Defined here once; the
writers and the readers import them (renaming one breaks reading what older versions saved,
so they stay as they are)."""

from __future__ import annotations

__all__ = [
    "BEST_MODEL_DIR",
    "BIOIMAGEIO_DIR",
    "CONFIG_FILE",
    "ERROR_FILE",
    "MEASURED_FILE",
    "MODEL_FILE",
    "ONNX_DIR",
    "ONNX_FILE",
    "PARETO_FILE",
    "PLAN_FILE",
    "PLAN_TEXT_FILE",
    "PREPROCESSING_FILE",
    "REPORT_DIR",
    "SAMPLES_KEY",
    "SEARCH_LOG_DIR",
    "SEARCH_STATE_FILE",
    "SPACE_FILE",
    "SPLIT_FILE",
    "STATE_FILE",
    "SUMMARY_FILE",
    "TRIAL_SLOT",
    "UNSENT_FILE",
]

# A search's parent run
SPACE_FILE = "space.yaml"  # the space's YAML as the user wrote it
SPLIT_FILE = "split.json"  # {"train": [...], "val": [...], "test": [...]}
PLAN_FILE = "plan.json"  # the plan (unet_search.plan.planner.Plan), read back by resume
PLAN_TEXT_FILE = "plan.txt"  # the same plan as printed, with the reasons
PARETO_FILE = "pareto.json"  # the front of a multi-objective search
SUMMARY_FILE = "summary.json"  # one row per trial
SEARCH_STATE_FILE = "search_state.json"  # what resume and report need
SEARCH_LOG_DIR = "logs"  # the search's log (<search>.log)
REPORT_DIR = "report"  # the HTML report (index.html and its figures)

# A trial's run
BEST_MODEL_DIR = "best_model"  # the kept weights as a saved model folder
ERROR_FILE = "error.txt"  # a failed trial's traceback
SAMPLES_KEY = "val_predictions"  # MLflow image key: the fixed samples every few epochs

# A saved model folder (and the registered model's pyfunc, which holds one)
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "model_config.json"  # the model's config and preprocessing
ONNX_DIR = "onnx"  # the ONNX export beside it: ONNX_DIR/ONNX_FILE, ONNX_DIR/PREPROCESSING_FILE
ONNX_FILE = "model.onnx"
PREPROCESSING_FILE = "preprocessing.json"
BIOIMAGEIO_DIR = "bioimageio"  # its BioImage.IO package (rdf.yaml and its files), beside onnx/

# A trial's checkpoint
STATE_FILE = "state.pt"  # weights, optimizer, scheduler, the kept model, the epoch
UNSENT_FILE = "mlflow_unsent.json"  # logging the tracking server did not get
# what the trial measured before its first epoch (num_parameters, inference_ms), which every
# result carries for Optuna and MO-ASHA after a restart too
MEASURED_FILE = "measured.json"

# Ray: the custom resource of a trial driver's slot. A trial driver takes one and no CPU, so
# that its TorchTrainer's workers get the cores (on 2 cores a driver holding a CPU deadlocks).
TRIAL_SLOT = "trial_slot"
