"""Pruning and fine-pruning defenses against backdoored face recognizers (BadNets / Fine-Pruning, CSAW-HackML-2020).

The notebooks in ``notebooks/`` are thin: every step they show lives in one of these modules.

==========================  ===================================================================
module                      what it holds
==========================  ===================================================================
``lib.pipeline``            the five steps the notebooks run, one function each: start reading here
``lib.steps``               one module per step (data, activations, pruning_sweep, goodnet, fine_pruning)
``lib.rows``                the name of every model row (B, B'_t%, G_t%, FT, GFT, FP_t%, GFP_t%)
``lib.run_notebook``        run a step's notebook headlessly with papermill, only when it is out of date
``lib.provenance``          what each step read and wrote (``run.json``): results follow their inputs
``lib.locks``               one run at a time per data and results folder
``lib.catalog``             every dataset: its files, where they come from, its input scale, its references
``lib.workspace``           where one run of one dataset reads and writes
``lib.paths``               where the project's folders and each run's result files live
``lib.scenario``            B loaded as its publisher fed it, and the run's validated image sets
``lib.errors``              ``InputError``: the one exception type that names a file and a fix
``lib.atomic``              write-to-temp-then-rename, so nothing half-written is ever left behind
``lib.tables``              tables as CSV (full precision) and Markdown
``lib.reproducibility``     seeds and TensorFlow op determinism
``lib.machine``             the processor and library versions a result was computed with
``lib.datasets``            read, validate and write the CSAW HDF5 schema; degenerate data refused
``lib.architecture``        the DeepID-style BadNet architecture, layer names as in the CSAW files
``lib.models``              load a BadNet safely, predict, save models atomically
``lib.prunable``            can the defense prune this model (the conv reaches the output only via the pool)
``lib.input_scale``         each network fed pixels as its publisher did (x/255 built into the model)
``lib.reference``           B checked against its publishers' figures
``lib.download``            the real CSAW data: gdown + GitHub, SHA-256 checked
``lib.checksums``           the lock files ``checksums/<dataset>.sha256`` (read, write, SHA-256)
``lib.fetch``               bytes onto the disk: the network boundary, the shared Drive cache, a full disk
``lib.demo``                the offline demos: synthetic faces, BadNets and pruning-aware attacks, published Bs
``lib.activations``         mean activation of every channel of the last pooling layer
``lib.sweep``               the pruning sweep engine (exact) and the naive reference
``lib.sweep_closed_form``   the CSAW tail in closed form, pruned channel by channel
``lib.sweep_kernels``       the closed form's arithmetic, compiled by numba, image by image
``lib.sweep_screen``        the output layer screened in bfloat16, then the few candidate classes exactly
``lib.cache_lines``         float32 vectors that start on a cache line, for the kernels
``lib.simd``                bit casts and vector compresses for the kernels, and which processor has them
``lib.sweep_batches``       the reference batches ``predict`` forms, and near ties settled in them
``lib.sweep_table``         the sweep table and the thresholds (exact counts)
``lib.pruning``             zero or copy conv channels in a Keras model
``lib.goodnet``             the repaired network G and the test-data evaluation of every model
``lib.goodnet_model``       G as one loadable Keras model (both networks and N)
``lib.finetune``            fine-tuning on clean data, pruned channels kept pruned (fine-pruning)
``lib.images``              read an image file as a careful photo tool would
``lib.eval``                ``python -m lib.eval --model G IMAGE...``: the competition's eval command
``lib.summary``             one table across datasets (``make all``, ``make csaw-all``)
``lib.verify``              ``make verify``: a fresh run against the committed results
``lib.study``               multi-seed studies on Dask (``make study``)
``lib.reading``             each notebook's closing reading, computed from its numbers
``lib.metrics``             clean accuracy and attack success rate
``lib.plots``               the figures
==========================  ===================================================================
"""
