"""`python -m distill` is the CLI too, so launchers (torchrun, accelerate, deepspeed) can run it."""

from distill.cli import entry

if __name__ == "__main__":
    entry()
