from pathlib import Path

import pytest

from r1lab.config import PipelineConfig, ZeroConfig
from r1lab.options import load_config

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_shipped_recipes_load_and_pass_the_checks(recipe):
    command = PipelineConfig if recipe.name.startswith("r1-") else ZeroConfig  # r1-*: `r1lab pipeline` recipes
    cfg = load_config(command, ["--config", str(recipe)])  # load_config validates; once more, explicitly:
    cfg.validate()
