"""Dataset preparation: physical degradations (``degradations``), YAML recipes (``recipes``) and
the per-item pipeline behind ``hires prepare`` (``prepare``: plan → process → write_item)."""
