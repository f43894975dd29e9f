"""GRPO: records (types), advantage estimators, pure losses, the training loop and its diagnostics."""
