"""`python -m mtlora ...`, which is also how `accelerate launch -m mtlora train ...` starts it."""

from mtlora.cli import app

app(prog_name="mtlora")
