"""Checkpoints from elsewhere into MJP-ViT: a stock transformers ViT or DeiT to fine-tune with MJP (`from_vit`), and
the authors' released checkpoints into both publishing layouts (`original`). Each runs with `python -m`."""
