"""The command line: the console entry (``entry``), LightningCLI wired for this app (``lightning_cli``), the Trainer
options only the command line adds (``trainer``), its one-line messages (``messages``) and what reaches the terminal
from other libraries (``terminal``). It parses and wires; what a run does lives in the model, data and callbacks."""
