"""``python -m lit_convnext``: same as the ``lit-convnext`` command."""

from lit_convnext.entry import main

main()
