"""Pruning and fine-pruning defenses against backdoored face recognizers (BadNets / Fine-Pruning, CSAW-HackML-2020).

The project's module map (the only one). The method is in the notebooks (``notebooks/02``-``07``), in short
cells over ``lib.defense`` and ``lib.sweep``; each ends with one record call of ``lib.steps``.
Packages are floors, listed bottom to top: a module imports from its own floor and the floors below it, never
from a higher one; the commands ``lib.eval`` and ``lib.verify`` sit on top.

``lib.core``                  what every other package uses
    ``errors``                ``InputError``: the one exception type, which names a file and a fix
    ``atomic``                write-to-temp-then-rename: nothing half-written is ever left behind
    ``paths``                 where the project's folders and each run's result files live; the cache folder
    ``read_only``             data folders a run cannot write: fine when complete, else one clear error
    ``rows``                  the name of every model row (B, B'_t%, G_t%, FT, GFT, FP_t%, GFP_t%)
    ``step_names``            the step names, spelled once (as their notebooks are named)
    ``shapes``                ``IMAGE_SHAPE_NHWC``: the face as the networks see it
    ``quiet``                 TensorFlow without its start-up lines or its retracing advice on the console
``lib.network``               the DeepID-style BadNet as a Keras model
    ``architecture``          its layers, named as in the CSAW files
    ``models``                load a BadNet safely, predict, save models atomically
    ``prunable``              can the defense prune this model (the conv reaches the output only via the pool)
    ``pruning``               zero or copy conv channels in a Keras model
``lib.data``                  the datasets and their files
    ``catalog``               every dataset: its files, where they come from, its input scale, its references
    ``datasets``              read, validate and write the CSAW HDF5 schema; degenerate data refused
    ``images``                read an image file as a careful photo tool would
    ``input_scale``           each network fed pixels as its publisher did (x/255 built into the model)
    ``reference``             B checked against its publishers' figures
    ``download``              the real CSAW data: gdown + GitHub, SHA-256 checked
    ``fetch``                 bytes onto the disk: the network boundary, the shared Drive cache, a full disk
    ``checksums``             the lock files ``checksums/<dataset>.sha256`` (read, write; file and array digests)
``lib.runs``                  one run of one dataset
    ``workspace``             where the run reads and writes
    ``locks``                 one run at a time per data and results folder
    ``provenance``            what each step read and wrote (``run.json``): results follow their inputs
    ``notebook``              run a step's notebook headlessly with papermill, only when it is out of date
    ``reproducibility``       seeds and TensorFlow op determinism
    ``machine``               the processor, GPUs and library versions a result was computed with
``lib.defense``               the defense's measurements and repairs
    ``metrics``               clean accuracy, attack success rate, near ties
    ``activations``           mean activation of every channel of the last pooling layer; the pruning order
    ``goodnet``               the repaired network G and the test-data evaluation of every model
    ``model_layers``          the custom layers saved G and G+STRIP hold, registered with Keras
    ``goodnet_model``         G as one loadable Keras model (both networks and N)
    ``plans``                 pruning by a ranking (CLP's, ANP's): scan on validation data, budgets, test data
    ``clp``                   CLP: channels pruned by their Lipschitz bound, u chosen on validation data
    ``anp``                   ANP: neurons pruned by masks learnt under adversarial perturbation
    ``strip``                 STRIP: inputs flagged by the entropy of their blends; G combined with it as one model
    ``finetune``              fine-tuning on clean data, pruned channels kept pruned (fine-pruning)
``lib.sweep``                 the pruning sweep
    ``engine``                the engine (exact; why, in its docstring) and the naive reference
    ``table``                 the sweep table and the thresholds (exact counts)
    ``batches``               the reference batches ``predict`` forms, and near ties settled in them
    ``closed_form.tail``      the CSAW tail in closed form, pruned channel by channel
    ``closed_form.kernels``   the closed form's arithmetic, compiled by numba, image by image
``lib.report``                what people read
    ``tables``                tables as CSV (full precision) and Markdown
    ``plots``                 the figures
    ``reading``               each notebook's closing reading, computed from its numbers
    ``summary``               one table across datasets (``make all``, ``make csaw-all``); no step imports it
``lib.demo``                  the offline demos: synthetic faces, BadNets trained here, published Bs
    ``recipe``                ``DemoRecipe``, its fingerprint, the files and ``recipe.json`` of a build
    ``drawing``               anti-aliased shapes, vectorised over images
    ``faces``                 random identities and their images (pose, lighting, noise)
    ``trigger``               ``stamp_sunglasses``: the trigger, drawn on each image's eyes
    ``data``                  the clean, poisoned and triggered image sets of a recipe
    ``attacks``               BadNets and the pruning-aware attack (Keras training)
    ``scenario``              ``build_demo_scenario`` / ``ensure_demo_scenario``: write a demo to disk
    ``published``             each demo's published B, pinned with its image sets; ``make demo-rebuild``
``lib.steps``                 what each notebook records (one call at its end), and the run's view of its data
    ``common``                what every step shares: its dataset's lock, how its CSVs round activations
    ``scenario``              B loaded as its publisher fed it, and the run's validated image sets
    ``data``                  01 ``prepare_data``: the dataset in place, B checked against its publishers
    ``activations``           02 ``record_activations``; ``read_activation_table`` for notebook 03
    ``pruning_sweep``         03 ``record_sweep``: sweep.csv, thresholds.csv, each B'; ``read_pruned`` for 04-05
    ``goodnet``               04 ``record_goodnets``: goodnet.csv and each G as a model; the test data
    ``fine_pruning``          05 ``record_fine_pruning``: the fine-tuned models, their tables and history
    ``clp``                   06 ``record_clp``: CLP's scan, its rows and models
    ``strip``                 07 ``record_strip``: detection.csv, STRIP's scores, each G+STRIP as a model
    ``anp``                   08 ``record_anp``: ANP's masks, its scan, its rows and models
``lib.study``                 multi-seed studies on Dask (``make study``; ``__main__``: ``python -m lib.study``)
    ``spec``                  the study file: read, checked, its runs and their notebook parameters
    ``runner``                one job on a worker: a run's notebooks in one kernel, threads pinned
    ``engine``                the Dask side: cluster, what is out of date, fan-out, progress, report
    ``stats``                 the bootstrap interval every table and figure uses; exact Wilcoxon test; Holm
    ``contrasts``             paired differences between models of the same runs, and their verdicts
    ``aggregate``             runs.csv, sweeps.csv, summary.csv/.md, contrasts.csv/.md; ``summarize``
    ``figures``               against the threshold; every run's sweep; seeds as pairs; the contrasts
    ``reading``               the reading in words: the paired verdicts
``lib.eval``                  ``python -m lib.eval --model G IMAGE...``: the competition's eval command
``lib.verify``                ``make verify``: a fresh run against the committed results
"""
