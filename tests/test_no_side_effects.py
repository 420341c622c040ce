"""Importing and calling the library leaves the process it runs in as it was: it is used inside other people's
programs, servers and threads.

One fresh Python process imports the dependencies (their own import-time changes are theirs: Lightning, for one,
replaces ``warnings.formatwarning``), then notes the process-wide state, imports lit_convnext's public names, notes
it again, predicts on LZW TIFFs while another thread writes lines to stderr, and notes it a third time; then a plain
LightningModule's fit and the app's fit from Python (a plain Trainer) are each followed by a note, and the second
must equal the first.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from tests.bad_corpus import write_pixel_bad_files
from tests.helpers import TINY_MODEL, make_folder

#: LZW TIFFs predicted while the other thread writes (each decode is a window in which libtiff could report).
TIFFS = 40

PROBE = r'''
import ctypes, gc, json, logging, multiprocessing, os, signal, sys, threading, time, warnings

import lightning.pytorch, timm, torch
from PIL import Image, ImageFile

try:  # the report extra's cleanlab imports scikit-learn, which sets KMP_* variables in os.environ when imported
    import sklearn
except ImportError:
    pass

LOGGERS = ("", "PIL", "PIL.TiffImagePlugin", "lightning", "lightning.pytorch", "lightning.fabric", "huggingface_hub",
           "timm")


def libtiff_error_handler():
    try:
        set_handler = ctypes.CDLL(Image.core.__file__).TIFFSetErrorHandler
    except (AttributeError, OSError):
        return None
    set_handler.restype, set_handler.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
    current = set_handler(None)
    set_handler(current)
    return current


def snapshot():
    stat = os.fstat(2)
    state = {
        "Image.MAX_IMAGE_PIXELS": Image.MAX_IMAGE_PIXELS,
        "ImageFile.LOAD_TRUNCATED_IMAGES": ImageFile.LOAD_TRUNCATED_IMAGES,
        "libtiff error handler": libtiff_error_handler(),
        "warnings.filters": repr(warnings.filters),
        "warnings.formatwarning": repr(warnings.formatwarning),
        "warnings.showwarning": repr(warnings.showwarning),
        "sys.meta_path": repr(sys.meta_path),
        "sys.path_hooks": repr(sys.path_hooks),
        "sys.excepthook": repr(sys.excepthook),
        "threading.excepthook": repr(threading.excepthook),
        "sys.stderr": repr(sys.stderr),
        "gc.isenabled": gc.isenabled(),
        "gc.get_freeze_count": gc.get_freeze_count(),
        "gc.get_threshold": gc.get_threshold(),
        "fd 2": [stat.st_dev, stat.st_ino, stat.st_mode],
        "signal handlers": {s.name: repr(signal.getsignal(s)) for s in signal.Signals},
        "os.environ": dict(os.environ),
        "cwd": os.getcwd(),
        "threads": sorted(t.name for t in threading.enumerate()),
        "child processes": len(multiprocessing.active_children()),
        "torch": [str(torch.get_default_dtype()), torch.get_float32_matmul_precision(), torch.is_grad_enabled(),
                  torch.are_deterministic_algorithms_enabled()],
    }
    for name in LOGGERS:
        logger = logging.getLogger(name)
        state[f"logger {name or 'root'}"] = [repr(logger.handlers), repr(logger.filters), logger.level,
                                             logger.propagate, logger.disabled]
    return state


def changes(before, after):
    return {key: [before[key], after[key]] for key in before if before[key] != after[key]}


checkpoint, folder, labelled, workdir = sys.argv[1:5]
start = snapshot()
import lit_convnext
from lit_convnext import ConvNeXtClassifier, ImageFolderDataModule, load_predictor
imported = snapshot()

stop, written = threading.Event(), []


def write_lines():
    number = 0
    while not stop.is_set() or number < 200:
        line = f"writer line {number}\n"
        if number % 2:
            sys.stderr.write(line)
            sys.stderr.flush()
        else:
            os.write(2, line.encode())
        number += 1
        time.sleep(0.0001)
    written.append(number)


predictor = load_predictor(checkpoint)
writer = threading.Thread(target=write_lines, name="writer")
writer.start()
predictions = predictor.predict(folder, top_k=1)
stop.set()
writer.join()
predicted = snapshot()

from lightning.pytorch import LightningModule, Trainer


class Plain(LightningModule):
    """A plain LightningModule: what a fit changes by itself (Lightning's own doing), to tell from the app's."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 2)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).sum()

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 4)), batch_size=4)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(model, name, **kwargs):
    Trainer(default_root_dir=os.path.join(workdir, name), max_epochs=1, accelerator="cpu", enable_progress_bar=False,
            enable_model_summary=False).fit(model, **kwargs)


fit(Plain(), "plain")
plain_fitted = snapshot()
data = ImageFolderDataModule(root=labelled, batch_size=4, num_workers=0)
fit(ConvNeXtClassifier(model_name="convnext_atto", pretrained=False, image_size=32, class_names=data.class_names),
    "app", datamodule=data)
app_fitted = snapshot()
print(json.dumps({
    "import": changes(start, imported),
    "predict": changes(imported, predicted),
    "fit": changes(plain_fitted, app_fitted),
    "written": written[0],
    "results": {os.path.basename(p.source): p.error for p in predictions},
}))
'''


def _tiny_checkpoint(path: Path) -> Path:
    """A ConvNeXtClassifier checkpoint as Lightning writes it, without training (the weights are never judged)."""
    from lightning.pytorch import Trainer

    from lit_convnext import ConvNeXtClassifier

    model = ConvNeXtClassifier(model_name=TINY_MODEL, pretrained=False, class_names=["cat", "dog"], image_size=32)
    trainer = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("side_effects")
    checkpoint = _tiny_checkpoint(base / "tiny.ckpt")
    folder = base / "images"
    folder.mkdir()
    for i in range(TIFFS):
        colour = (i * 6 % 256, 80, 255 - i * 6 % 256)
        Image.new("RGB", (128, 128), colour).save(folder / f"valid_{i:02d}.tif", compression="tiff_lzw")
    write_pixel_bad_files(base / "bad")
    (folder / "corrupt_fax.tif").write_bytes((base / "bad" / "tiff_corrupt_fax.tif").read_bytes())
    labelled = make_folder(base / "labelled", per_class=4)
    done = subprocess.run([sys.executable, "-c", PROBE, str(checkpoint), str(folder), str(labelled), str(base / "runs")],
                          capture_output=True, text=True,
                          cwd=Path(__file__).parents[1], timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return {**json.loads(done.stdout), "stderr": done.stderr}


@pytest.mark.slow  # one fresh Python process that imports torch and Lightning
def test_importing_predicting_and_fitting_change_no_process_state(probe: dict[str, Any]) -> None:
    assert probe["import"] == {}
    assert probe["predict"] == {}
    assert probe["fit"] == {}  # beyond what a plain LightningModule's fit changes


@pytest.mark.slow  # one fresh Python process that imports torch and Lightning
def test_tiffs_decode_while_another_thread_writes_to_stderr(probe: dict[str, Any]) -> None:
    """Every valid TIFF predicts, the corrupt one is refused with libtiff's own words (none of the other thread's),
    and every line the other thread wrote, through ``sys.stderr`` and straight to file descriptor 2, arrives."""
    results = probe["results"]
    assert len(results) == TIFFS + 1
    assert {name: error for name, error in results.items() if name.startswith("valid_") and error} == {}
    assert "corrupt TIFF data (libtiff: Fax4Decode" in results["corrupt_fax.tif"]
    assert "writer line" not in results["corrupt_fax.tif"]
    lines = set(probe["stderr"].splitlines())
    missing = [n for n in range(probe["written"]) if f"writer line {n}" not in lines]
    assert missing == [], f"{len(missing)} of {probe['written']} lines lost"
    assert "Fax4Decode" not in probe["stderr"]  # libtiff's complaint about the file we read is in its reason only
