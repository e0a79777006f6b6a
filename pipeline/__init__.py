"""SemAlign: cross-scale knowledge transfer through latent semantic alignment.

The library behind the DVC stages in ``stages/``, one concept per module, grouped by concern
(the method as the project's docs describe it, method.md, is mirrored in README.md):

- ``method``      the paper's method: capture of source activations, attribution, layer
                  pairing, the alignment map, source-side supervision, the Fisher surrogate,
                  the frontier objectives and training, export, quality, the held-out curve,
                  CKA and the analysis figures
- ``evaluation``  benchmark protocols (generation, multiple-choice scoring, answer parsing,
                  the code sandbox), held-out agreement, statistics and paired tests, budgets,
                  the results report and the ablation table
- ``baselines``   SFT, KD, hidden-state KD, SEEKING and LaTen, and the training loop they share
- ``tasks``       the task builders: deterministic, disjoint splits
- ``compute``     device and precision placement, data-parallel launch, model sizes, the plan
- ``core``        params, artifact layout and I/O, the model adapter, loading and
                  materialising models, LoRA, task records, the chain, the stage runner,
                  cost records, training logs, presets, errors
"""

__version__ = "0.1.0"
