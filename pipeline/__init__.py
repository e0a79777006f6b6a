"""SemAlign: cross-scale knowledge transfer through latent semantic alignment.

The library behind the DVC stages in ``stages/``. Every module holds one concept of the
method (see ``../shared/docs/method.md`` in the project's docs, mirrored in README.md):

- ``adapter``      where a model family keeps its blocks, final norm and LM head
- ``loading``      loading models/tokenizers from a local directory or a hub name; vocab check
- ``data``         task records and their tokenisation with the chat template
- ``capture``      source activations at supervised positions and top-K output logits
- ``attribution``  layer Gradient x Activation, all layers in one backward pass
- ``pairing``      exactly one source layer per target layer
- ``alignment``    semantic bases and the training-free alignment map
- ``fisher``       the Fisher-weighted quadratic surrogate and its statistics
- ``objectives``   per-stage losses (Fisher surrogate, v1 cosine, v2 relation geometry, KL)
- ``frontier``     shallow-to-deep training of one target block
- ``export``       assembling trained blocks into a Hugging Face model directory
- ``quality``      transfer-quality metrics on a held-out split
- ``artifacts``    safetensors/JSON I/O that never leaves half-written files
- ``chain``        the per-layer frontier chain in params.yaml
- ``baselines``    SFT, KD, hidden-state KD, SEEKING and LaTen, each exported as a model directory
- ``lora``         LoRA adapters through PEFT (attach by module role, merge)
- ``training``     the seeded AdamW loop the baselines share
- ``cost``         wall time and peak resident memory of a run
"""

__version__ = "0.1.0"
