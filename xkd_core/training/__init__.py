"""Training: the config, the trainer (single process or torchrun/DDP) and the `xkd-train` command."""
