"""The search space: ``spec`` (what a space holds and the trial configs it makes),
``validate`` (every rule of a space file, each error naming the file, key, rule and value),
``load`` (read a space file, apply overrides, fill ``auto`` settings from the plan)."""
