"""``lit-convnext tune``: every ``fit`` option, plus ``--tune.*`` for the search (:mod:`lit_convnext.tuning`).

The command only splits its command line: the ``--tune.*`` options are parsed from :func:`tune_options`'s typed
signature, everything else is handed unchanged to each trial's ``fit``.
"""

# No ``from __future__ import annotations``: jsonargparse reads the ranges of the ``Annotated`` option types.

import sys
from typing import Any, Literal

from lit_convnext.errors import UserError
from lit_convnext.ranges import NonNegativeInt, PositiveInt

PREFIX = "--tune."


def tune_options(
    trials: PositiveInt | None = 20,
    max_time: str | None = None,
    study_name: str = "study",
    storage: str | None = None,
    space: str | None = None,
    pruner: Literal["hyperband", "halving", "none"] = "hyperband",
    seed: NonNegativeInt = 0,
) -> dict[str, Any]:
    """The search's options (``--tune.*``).

    Args:
        trials: Finished trials (complete, pruned or failed) the study should have, counted across every process
            and every resume of the study; null: the time budget alone.
        max_time: This process's budget for the whole search: seconds or DD:HH:MM:SS; a trial gets what is left as
            its --trainer.max_time.
        study_name: The study's name in the storage; the same name and storage continue a killed search or join
            another process's.
        storage: Optuna's database URL (sqlite:///PATH, postgresql://USER:PASSWORD@HOST/DB); default
            sqlite:///<default_root_dir>/tune/<study_name>/study.db.
        space: A YAML file (or an inline YAML mapping) of `option: {low, high[, log, int]}` or `{choices: [...]}`
            entries over the default space; an entry set to null leaves that option out.
        pruner: Stop unpromising trials after an epoch: hyperband, halving (successive halving) or none.
        seed: The sampler's seed (each trial trains with the configuration's seed_everything).
    """
    return dict(trials=trials, max_time=max_time, study_name=study_name, storage=storage, space=space,
                pruner=pruner, seed=seed)


def split_arguments(argv: list[str]) -> tuple[list[str], list[str]]:
    """``--tune.*`` options (``--tune.x V`` or ``--tune.x=V``) apart from the ``fit`` options."""
    tune, fit = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith(PREFIX):
            tune.append(arg)
            if "=" not in arg and i + 1 < len(argv):
                tune.append(argv[i + 1])
                i += 1
        else:
            fit.append(arg)
        i += 1
    return tune, fit


def parse_tune_options(argv: list[str]) -> dict[str, Any]:
    from jsonargparse import ArgumentParser

    from lit_convnext.cli.messages import option_error

    class Parser(ArgumentParser):
        def error(self, message: str, ex: Exception | None = None):
            raise UserError(option_error(message, ex))

    parser = Parser(prog="lit-convnext tune", exit_on_error=False)
    parser.add_function_arguments(tune_options, "tune")
    return dict(parser.parse_args(argv).tune)


HELP = """\
usage: lit-convnext tune [FIT OPTIONS] [TUNE OPTIONS]

Search the recipe's hyper-parameters with Optuna: every trial is a `fit` with the FIT OPTIONS (see
`lit-convnext fit --help`) and the trial's values, in its own run directory under
<default_root_dir>/tune/<study_name>/; the search writes trials.csv, best.yaml and tune_report.html there.

tune options:
"""


def tune(argv: list[str]) -> None:
    """Run ``lit-convnext tune`` with ``argv`` (without ``tune``)."""
    from lit_convnext.tuning import outputs
    from lit_convnext.tuning.search import Search, parse_duration

    if "-h" in argv or "--help" in argv:
        print(HELP + "\n".join(f"  {PREFIX}{line}" for line in _option_lines()))
        return
    tune_argv, fit_args = split_arguments(argv)
    options = parse_tune_options(tune_argv)
    if any(arg.startswith("--print_config") for arg in fit_args):
        # The configuration every trial starts from (the space's values are added per trial), as `fit` prints it.
        from lit_convnext.cli.lightning_cli import build_cli

        build_cli(["fit", *fit_args])
        return
    search = Search(fit_args, trials=options["trials"], max_time=parse_duration(options["max_time"]),
                    study_name=options["study_name"], storage=options["storage"], space=options["space"],
                    pruner=options["pruner"], seed=options["seed"])
    search.run()
    study, root = search.study, search.root
    root.mkdir(parents=True, exist_ok=True)
    files = [outputs.write_trials_csv(study, root / "trials.csv")]
    best = outputs.best_trial(study)
    if best is None:
        raise UserError(f"no trial of study {search.study_name} completed (see {files[0]}): fix what the failed "
                        "trials say, or give the search more time")
    files += [outputs.write_best_yaml(search.fit_args, best.params, root / "best.yaml"),
              outputs.write_report(study, search.monitor, root)]
    search.mlflow.log_results(best.value, search.monitor, files + [root / "tune.png"])
    print(f"Best {search.monitor} {best.value:.4f} (trial {best.number} of {len(study.trials)}); reproduce it with: "
          f"lit-convnext fit --config {root / 'best.yaml'}")


def _option_lines() -> list[str]:
    """``trials (default 20): ...`` for each option, from :func:`tune_options`'s signature and docstring."""
    import inspect

    defaults = {name: p.default for name, p in inspect.signature(tune_options).parameters.items()}
    args = (inspect.getdoc(tune_options) or "").split("Args:", 1)[1]
    described: dict[str, str] = {}
    name = ""
    for line in args.splitlines():
        if line.startswith("    ") and not line.startswith("        ") and ":" in line:
            name, text = line.strip().split(":", 1)
            described[name] = text.strip()
        elif line.strip() and name:
            described[name] += " " + line.strip()
    return [f"{name} (default {'null' if defaults[name] is None else defaults[name]}): {text}"
            for name, text in described.items()]


def main(argv: list[str] | None = None) -> None:
    """``python -m lit_convnext.commands.tune ...``."""
    tune(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":  # pragma: no cover
    main()
