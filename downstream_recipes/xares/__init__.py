"""X-ARES (xares 0.1.3) recipes: local task configs (tasks.py), the process that runs xares's own
runner after the compatibility layer (entry.py), the resumable multi-task runner (runner.py)
and the `usad xares run` command (commands.py)."""
