"""vaerun's Hydra launchers: the field's launchers (joblib, submitit), waiting for every job and
reporting each job's outcome, so a sweep's exit status is its worst job's whatever the
launcher. Hydra discovers them here (the `hydra_plugins` namespace)."""
