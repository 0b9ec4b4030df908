"""`python -m distill` is the CLI too, so launchers (torchrun, accelerate, deepspeed) can run it."""

from distill.cli import main

if __name__ == "__main__":
    main()
