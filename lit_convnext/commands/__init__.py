"""Commands outside LightningCLI's subcommands, one module each; a command's typed signature is its command line.

Each is run by the console entry (:func:`lit_convnext.cli.entry.main`) through jsonargparse's ``auto_cli`` and imported only when asked for, so
``lit-convnext doctor`` does not pay for torch and Lightning it does not use.
"""

#: ``lit-convnext NAME ...`` -> ``module:function``.
COMMANDS: dict[str, str] = {
    "doctor": "lit_convnext.commands.doctor:doctor",
    "export": "lit_convnext.commands.export:export",
    "serve": "lit_convnext.commands.serve:serve",
    "report": "lit_convnext.commands.report:report",
    "suggest": "lit_convnext.commands.suggest:suggest",
    "optimize": "lit_convnext.commands.optimize:optimize",
}
