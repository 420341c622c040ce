"""The README and docs/*.md say only what runs: every Python example is executed on the files it names, every
``lit-convnext`` command line is parsed by the real console entry, and every option the text names exists.

Command lines are checked with ``--print_config``, which parses and type-checks every option (config files
included) and exits before anything is built; the README's ``fit`` lines are also instantiated, on a tiny folder
with the fast options.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import shutil
import textwrap
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from lit_convnext.cli.entry import main
from tests.helpers import FAST, make_folder, write_image

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
#: A fenced block, possibly indented under a list item: the fence's indent, its language, its text.
FENCE = re.compile(r"^( *)```(\w*)\n(.*?)^\1```", re.S | re.M)
#: An option as the text writes it: ``--model.lr``, ``--top_k``, ``--checkpoint.*`` (the group), ``--use-ema``.
OPTION = re.compile(r"(?<![\w-])--[A-Za-z_][\w.-]*\w")
#: Options of other programs that the docs name, each with where it belongs.
FOREIGN_OPTIONS = {
    "--blr", "--layer_decay_type",  # ConvNeXt-V2's official fine-tuning script, compared with in docs/recipes.md
    "--nnodes", "--nproc_per_node", "--node_rank", "--master_addr", "--master_port",  # torchrun
    "--nodes", "--ntasks-per-node", "--gpus-per-node", "--cpus-per-task", "--time",  # #SBATCH lines
    "--ntasks", "--signal", "--requeue",  # #SBATCH lines of docs/clusters.md
}
#: Options whose value is a class (``class_path``): their init arguments are not listed by ``--help``.
CLASS_OPTIONS = ("--trainer.logger", "--trainer.callbacks", "--optimizer", "--lr_scheduler", "--trainer.plugins",
                 "--trainer.strategy")
#: Arguments of Lightning's own ``Trainer.validate``/``predict`` that the app adds nothing to (``--help`` has them).
LIGHTNING_METHOD_OPTIONS = {"--return_predictions", "--verbose", "--weights_only"}


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    lang: str
    code: str

    def __str__(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def code_blocks(lang: str) -> list[Block]:
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            if match.group(2) == lang:
                line = text.count("\n", 0, match.start()) + 1
                found.append(Block(page, line, lang, textwrap.dedent(match.group(3))))
    return found


def shell_commands(block: Block) -> list[list[str]]:
    """The words of each command of a bash block (continuations joined, comments dropped, ``&&`` chains split);
    a line that starts with an option is a fragment of a ``lit-convnext fit`` command line."""
    commands = []
    for line in block.code.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words and words[0].startswith("--"):
            words = ["lit-convnext", "fit", *words]
        while words:  # `a && b`: two commands
            end = words.index("&&") if "&&" in words else len(words)
            commands.append(words[:end])
            words = words[end + 1:]
    return commands


def lit_convnext_args(words: list[str]) -> list[str] | None:
    """The arguments ``lit-convnext`` gets from a command (also ``srun lit-convnext``, ``torchrun -m lit_convnext``)."""
    if "lit-convnext" in words:
        return words[words.index("lit-convnext") + 1:]
    if "-m" in words and words[words.index("-m") + 1:][:1] == ["lit_convnext"]:
        return words[words.index("-m") + 2:]
    return None


COMMAND_LINES = [(block, args) for block in code_blocks("bash") for words in shell_commands(block)
                 if (args := lit_convnext_args(words)) is not None]


def test_the_pages_have_the_examples_this_module_checks() -> None:
    assert (REPO / "docs" / "report.png").is_file() and "](docs/report.png)" in PAGES[0].read_text()
    assert len(PAGES[0].read_text().splitlines()) <= 300, "the README is a front page: reference goes to docs/"
    commands = {args[0] for _, args in COMMAND_LINES}
    assert commands >= {"doctor", "fit", "report", "predict", "export", "serve", "validate"}
    assert len(FIT_LINES) == 2  # the quickstart and the workflow's fit
    assert len(code_blocks("python")) == len(PYTHON_EXPECTATIONS)


@pytest.fixture
def docs_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with the repository's ``configs/`` and a ``run.yaml`` (the base recipe, standing in for
    the user's own config), as the docs' commands assume."""
    (tmp_path / "configs").symlink_to(REPO / "configs")
    shutil.copy(REPO / "configs" / "finetune.yaml", tmp_path / "run.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(("block", "args"), COMMAND_LINES, ids=[f"{b}:{a[0]}" for b, a in COMMAND_LINES])
def test_a_documented_command_line_parses(block: Block, args: list[str], docs_cwd: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--print_config"])
    captured = capsys.readouterr()
    assert exit_info.value.code == 0, f"{block}: lit-convnext {shlex.join(args)}\n{captured.err}"
    assert isinstance(yaml.safe_load(captured.out), dict)


#: The README's ``fit`` lines, the ones a new user copies, are also built (every shipped YAML is built or parsed by
#: tests/test_configs.py; the other pages' lines differ from these in options the parse above checks).
FIT_LINES = [(block, args) for block, args in COMMAND_LINES if block.page == PAGES[0] and args[0] == "fit"]


@pytest.mark.parametrize(("block", "args"), FIT_LINES, ids=[str(b) for b, _ in FIT_LINES])
def test_a_documented_fit_builds_its_run(block: Block, args: list[str], docs_cwd: Path, image_root: Path) -> None:
    """Built on the tiny folder (in place of the data the line names) with the smallest model on one CPU: the fast
    options come last and win."""
    from lit_convnext.cli.lightning_cli import build_cli

    cli = build_cli([*args[1:], "--data.root", str(image_root), *FAST, "--trainer.devices", "1"], run=False)
    assert cli.model.class_names == ["blue", "green", "red"] and cli.trainer.max_epochs >= 1


def test_other_commands_in_the_docs_name_files_and_extras_that_exist() -> None:
    extras = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    checked = 0
    for block in code_blocks("bash"):
        for words in shell_commands(block):
            if words[0] == "python" and words[1] != "-m":  # a script of this repository
                assert (REPO / words[1]).is_file(), f"{block}: {words[1]}"
                checked += 1
            for index, spec in enumerate(words[2:] if words[:2] == ["pip", "install"] else [], start=2):
                named = re.fullmatch(r"(?:lit-convnext|\.)\[([\w,]+)\]", spec)
                assert named is None or set(named.group(1).split(",")) <= extras, f"{block}: {spec}"
                if spec == "-c":  # a constraints file of this repository
                    assert (REPO / words[index + 1]).is_file(), f"{block}: {words[index + 1]}"
                checked += named is not None
    assert checked >= 4


@pytest.fixture(scope="module")
def known_options() -> dict[str, set[str]]:
    """Each command's options, read from its ``--help``."""
    found: dict[str, set[str]] = {}
    for command in ("fit", "validate", "predict", "tune", "doctor", "export", "serve", "report", "suggest"):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
            main([command, "--help"])
        found[command] = set(OPTION.findall(out.getvalue()))
    return found


def _benchmark_options(text: str) -> set[str]:
    """Options given to a benchmark script (``python benchmarks/x.py --runs 5``), each checked against its source."""
    found = set()
    for script, rest in re.findall(r"python (benchmarks/\w+\.py)([^`\n]*)", text):
        source = (REPO / script).read_text()
        for option in OPTION.findall(rest):
            assert f'"{option}"' in source, f"{script} has no {option}"
            found.add(option)
    return found


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_every_option_a_page_names_exists(page: Path, known_options: dict[str, set[str]]) -> None:
    text = page.read_text(encoding="utf-8")
    known = set().union(*known_options.values()) | FOREIGN_OPTIONS | _benchmark_options(text)
    unknown = {option for option in OPTION.findall(text)
               if option not in known and not option.startswith(tuple(f"{c}." for c in CLASS_OPTIONS))}
    assert not unknown, f"{page.name} names options no command has: {sorted(unknown)}"


def test_the_options_page_lists_every_option_of_the_apps_own_groups(known_options: dict[str, set[str]]) -> None:
    documented = set(OPTION.findall((REPO / "docs" / "options.md").read_text()))
    own = re.compile(r"--(model|data|evaluation|class_report|data_wait)\.|--progress_bar\.(?!theme)")
    fit = known_options["fit"]
    groups = {option.rsplit(".", 1)[0] for option in fit}  # --data.augmentation: set by its options
    required = {o for o in fit if own.match(o) and o not in groups}
    required |= known_options["predict"] - fit - LIGHTNING_METHOD_OPTIONS
    required |= {option for option in known_options["tune"] if option.startswith("--tune.")}  # the rest is fit's
    for command in ("doctor", "export", "serve", "report", "suggest"):
        required |= known_options[command] - {"--help", "--config", "--print_config"}
    assert required - documented == set()


def test_the_options_page_gives_the_parsers_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["fit", "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    rows, header = [], ""
    for line in (REPO / "docs" / "options.md").read_text().splitlines():
        header = line if line.startswith("| option |") else header if line.startswith("|") else ""
        row = re.match(r"\| `(--[\w.]+)` \| `([^`]*)` \|", line)
        if row and header.startswith("| option | default |"):
            rows.append(row.groups())
    assert len(rows) > 60
    for option, default in rows:
        value = config
        for key in option[2:].split("."):
            value = value[key]
        assert value == yaml.safe_load(default), f"{option}: the page says {default}, the parser {value!r}"


# Python examples ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def example_files(fitted: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files the examples name: a run's checkpoint, its ONNX export, photos, and a small ``data/digits``."""
    from lit_convnext.commands.export import export

    cwd = tmp_path_factory.mktemp("docs")
    checkpoint = cwd / "runs" / "convnext" / "version_0" / "checkpoints" / "last.ckpt"
    checkpoint.parent.mkdir(parents=True)
    shutil.copy(fitted["best"], checkpoint)
    shutil.copy(fitted["run"] / "config.yaml", checkpoint.parents[1])  # the run record: its validation images
    export(checkpoint, cwd / "model.onnx")
    write_image(cwd / "photo.jpg", (220, 30, 30))
    for i, color in enumerate([(30, 200, 40), (30, 40, 220)]):
        write_image(cwd / "new_images" / f"img{i}.png", color, seed=i)
    make_folder(cwd / "data" / "digits" / "train", 12)  # the three colours stand in for the ten digits
    make_folder(cwd / "data" / "digits" / "val", 4, seed=500)
    return cwd


COLORS = ("red", "green", "blue")


def _trained_from_python(printed: list[str]) -> None:
    assert printed[-1].endswith(".ckpt") and Path(printed[-1]).is_file()


def _predicted_from_the_checkpoint(printed: list[str]) -> None:  # photo.jpg, then new_images/'s two images
    assert len(printed) == 3 and printed[0].startswith("photo.jpg [(")
    assert all(f"'{name}'" in printed[1] for name in COLORS)


def _predicted_a_pil_image_with_onnx(printed: list[str]) -> None:
    label, top = printed[0].split(" ", 1)
    assert label == "red" and top.startswith("[('red', ") and top.count("(") == 2


def _built_from_a_class_count(printed: list[str]) -> None:
    assert printed == ["['0', '1', '2']"]


def _predicted_with_plain_onnx_runtime(printed: list[str]) -> None:
    name, probability = printed[0].split()
    assert name in COLORS and 0 < float(probability) <= 1


#: What each Python example prints, by a line only that example has.
PYTHON_EXPECTATIONS: dict[str, Callable[[list[str]], None]] = {
    "trainer.fit(model, datamodule=data)": _trained_from_python,
    'load_predictor("runs/convnext/version_0/checkpoints/last.ckpt")': _predicted_from_the_checkpoint,
    'load_predictor("model.onnx")': _predicted_a_pil_image_with_onnx,
    "num_classes=10": _built_from_a_class_count,
    "ort.InferenceSession": _predicted_with_plain_onnx_runtime,
}


@pytest.mark.parametrize("block", code_blocks("python"), ids=str)
def test_a_python_example_runs_as_written(block: Block, example_files: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expectations = [check for marker, check in PYTHON_EXPECTATIONS.items() if marker in block.code]
    assert len(expectations) == 1, f"{block}: say in PYTHON_EXPECTATIONS what this example prints"
    monkeypatch.chdir(example_files)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block.code, str(block), "exec"), {"__name__": "__docs__"})
    expectations[0]([line for line in out.getvalue().splitlines() if line.strip()])


def test_a_csv_example_is_a_label_file_without_problems(tmp_path: Path) -> None:
    """With the images it lists in place, the data module's reader finds every row and no problem."""
    from lit_convnext.data.labels import read_label_file

    blocks = code_blocks("csv")
    assert blocks
    for index, block in enumerate(blocks):
        labels = tmp_path / f"labels{index}.csv"
        labels.write_text(block.code)
        rows = block.code.splitlines()[1:]
        for row in rows:
            write_image(tmp_path / row.split(",")[0], (200, 30, 30))
        table = read_label_file(labels, tmp_path)
        assert not table.problems and len(table.rows) == len(rows), f"{block}: {table.problems}"


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.+)$", FENCE.sub("", page.read_text(encoding="utf-8")), re.M)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_every_link_between_the_pages_arrives(page: Path) -> None:
    links = re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8"))
    local = [link for link in links if not re.match(r"https?://", link)]
    for link in local:
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        assert target.is_file(), f"{page.name}: {link}"
        assert not anchor or anchor in _anchors(target), f"{page.name}: {link} (no such heading)"
