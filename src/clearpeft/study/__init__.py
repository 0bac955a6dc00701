"""A study: a grid of training runs from one YAML file (`grid`: `load_grid`, `run_grid`) and the report that
sets their results beside the paper's tables (`report`: `write_report`). The grid files themselves live in the
repository's top-level `experiments/` folder.

Import from the submodules: `report` needs no torch, so `clearpeft report` starts fast.
"""
