"""Evaluations of MJP-ViT and stock ViT image classifiers, each a module runnable with `python -m`:

* `mjp_hf.evaluation.privacy`: gradient inversion (analytic attacks with and without an image prior, the
  optimisation attack, a multi-round attacker; in `privacy_attacks`) against the gradients a client shares for the
  training steps the model takes;
* `mjp_hf.evaluation.robustness`: accuracy under common corruptions, under a heavy jigsaw, and the consistency of
  predictions between clean and jigsawed inputs;
* `mjp_hf.evaluation.position`: linear probes of what the position embeddings encode, their similarity map, and the
  DALR head's position error.

Every module exposes plain functions (the CLIs are thin wrappers) and writes a JSON and a PNG.
"""
