"""Pruning defense against backdoored face recognizers (BadNets / Fine-Pruning, CSAW-HackML-2020 lab 3).

The notebooks in ``notebooks/`` are thin: every step they show lives in one of these modules.

========================  =====================================================================
module                    what it holds
========================  =====================================================================
``lib.pipeline``          the four steps the notebooks run, one function each: start reading here
``lib.run_notebook``      run a notebook headlessly with papermill; failed runs kept apart
``lib.errors``            ``InputError``: the one exception type that names a file and a fix
``lib.atomic``            write-to-temp-then-rename, so nothing half-written is ever left behind
``lib.paths``             where each dataset's files and results live
``lib.reproducibility``   seeds and TensorFlow op determinism
``lib.datasets``          read, validate and write the CSAW HDF5 schema
``lib.architecture``      the DeepID-style BadNet architecture, layer names as in the CSAW files
``lib.models``            load a BadNet safely, check its layers, save models atomically
``lib.download``          the real ``csaw-lab3`` data: gdown + GitHub, SHA-256 checked
``lib.demo``              the offline demo scenario: synthetic faces, a sunglasses BadNet
``lib.activations``       mean activation of every channel of the last pooling layer
``lib.sweep``             the pruning sweep engine (cached prefix, exact) and the naive reference
``lib.pruning``           zero conv channels in a copy of a Keras model
``lib.goodnet``           the repaired network G and its evaluation table
``lib.metrics``           clean accuracy and attack success rate
``lib.plots``             the figures
========================  =====================================================================
"""
