"""What each notebook records, one module per step (data, activations, pruning_sweep, goodnet, fine_pruning), and
the run's view of its dataset (``scenario``). The method itself is in the notebooks, over ``lib.defense`` and
``lib.sweep``."""
