"""SUPERB recipes: per-task configs (configs/*.yaml) and a staged runner over s3prl's run_downstream."""
