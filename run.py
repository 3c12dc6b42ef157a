"""adadf entry point: `python run.py [group=option ...] [key=value ...]`, `-m` for sweeps.

The same command as `adadf-train` (adadf/train_cli.py), run from a checkout; torchrun runs this file.
"""
from adadf.train_cli import main

if __name__ == "__main__":
    main()
