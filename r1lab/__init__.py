"""r1lab: the DeepSeek-R1 recipe on your own model and tasks."""

__version__ = "0.1.0"
