"""Experiment tooling: grids of training runs from one YAML file (`grid`: `load_grid`, `run_grid`) and the
report that sets their results beside the paper's tables (`report`: `write_report`).

Import from the submodules: `report` needs no torch, so `clearpeft report` starts fast.
"""
