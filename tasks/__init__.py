"""lm-eval task configs of kvbench, installed as kvbench.tasks (see README, "Tasks")."""
