"""``r1lab rm``: scalar reward models trained on preference pairs (Bradley-Terry), for stage 4's rewards.

:mod:`r1lab.rm.data` reads the pairs, :mod:`r1lab.rm.train` trains and evaluates; the trained model becomes a GRPO
reward through :mod:`r1lab.rewards.reward_model`.
"""
