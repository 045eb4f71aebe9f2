"""Pruning and fine-pruning defenses against backdoored face recognizers (BadNets / Fine-Pruning, CSAW-HackML-2020).

The notebooks in ``notebooks/`` are thin: every step they show lives in one of these modules.

========================  =====================================================================
module                    what it holds
========================  =====================================================================
``lib.pipeline``          the five steps the notebooks run, one function each: start reading here
``lib.run_notebook``      run a notebook headlessly with papermill; failed runs kept apart
``lib.errors``            ``InputError``: the one exception type that names a file and a fix
``lib.atomic``            write-to-temp-then-rename, so nothing half-written is ever left behind
``lib.catalog``           every dataset: its files and where they come from (demos, lab 3, competition)
``lib.paths``             where each dataset's files and results live
``lib.reproducibility``   seeds and TensorFlow op determinism
``lib.datasets``          read, validate and write the CSAW HDF5 schema
``lib.architecture``      the DeepID-style BadNet architecture, layer names as in the CSAW files
``lib.models``            load a BadNet safely, check its layers, save models atomically
``lib.download``          the real CSAW data: gdown + GitHub, SHA-256 checked
``lib.checksums``         the lock files ``checksums/<dataset>.sha256`` (read, write, SHA-256)
``lib.fetch``             bytes onto the disk: the network boundary, the shared Drive cache, a full disk
``lib.demo``              the offline demos: synthetic faces, a BadNets or pruning-aware BadNet
``lib.activations``       mean activation of every channel of the last pooling layer
``lib.sweep``             the pruning sweep engine (cached prefix, exact) and the naive reference
``lib.pruning``           zero conv channels in a copy of a Keras model
``lib.goodnet``           the repaired network G and its evaluation table
``lib.goodnet_model``     G as one loadable Keras model (both networks and N)
``lib.finetune``          fine-tuning on clean data, pruned channels kept pruned (fine-pruning)
``lib.eval``              ``python -m lib.eval --model G IMAGE...``: the competition's eval command
``lib.summary``           one table across datasets (``make csaw-all``)
``lib.metrics``           clean accuracy and attack success rate
``lib.plots``             the figures
========================  =====================================================================
"""
