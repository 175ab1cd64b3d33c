"""Package list only (everything else is in pyproject.toml): kvbench*, plus tasks/ installed as kvbench.tasks."""

from setuptools import find_packages, setup

setup(packages=find_packages(include=["kvbench*"]) + ["kvbench.tasks"]
      + ["kvbench.tasks." + name for name in find_packages("tasks")])
