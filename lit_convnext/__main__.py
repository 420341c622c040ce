"""``python -m lit_convnext``: same as the ``lit-convnext`` command."""

from lit_convnext.cli.entry import main

main()
