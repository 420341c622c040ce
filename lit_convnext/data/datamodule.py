"""The LightningDataModule: image folders or a label file in, loaders out.

Preprocessing (size, mean, std, interpolation, crop) is owned by the model, which resolves it from
the weights and stores it in the checkpoint; this module reads it from the attached model in
``setup`` so training, validation, test and predict transform images identically.
"""


import importlib.util
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.fabric.utilities.data import suggested_max_num_workers
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import CombinedLoader, rank_zero_info
from torch.utils.data import DataLoader, Dataset, Sampler
# Imported with the module: Lightning records a loader's arguments (to rebuild it with a distributed sampler) only
# for DataLoader classes that exist when it calls train_dataloader().
from torchdata.stateful_dataloader import StatefulDataLoader

from lit_convnext.checks.bad_files import BAD_FILES_NAME, check_samples
from lit_convnext.data.datasets import LabeledImages, UnlabeledImages
from lit_convnext.checks.file_checks import inspect_files
from lit_convnext.data.folders import FolderSplits, Sample, iter_images, read_folder_splits, write_split_manifest
from lit_convnext.data.labels import Task, data_task, multi_hot, read_label_splits, sample_labels
from lit_convnext.data.transforms import (
    TrainAugmentation,
    build_eval_transform,
    build_train_transform,
    build_weak_transform,
    eval_decode_size,
    train_decode_size,
)
from lit_convnext.errors import UserError
from lit_convnext.ranges import NonNegativeInt, OpenFraction, PositiveInt
from lit_convnext.data.streaming import OptimizedDataset, is_optimized, remote_url
from lit_convnext.data.resumable import EpochSeededSampler, SeededSamples, ignore_sigterm
from lit_convnext.data.samplers import added_classes, balanced_sampler, eval_sampler, replay_groups, replay_sampler
from lit_convnext.data.unlabeled import TwoViewImages, UnlabeledPool, find_unlabeled_images, unlabeled_sampler

log = logging.getLogger(__name__)

#: The splits whose files are checked before each stage runs.
CHECKED_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}
#: The unlabelled images (``unlabeled_root``), checked with the training split.
UNLABELED = "unlabeled"

SPLIT_MANIFEST_NAME = "split_manifest.csv"


def default_num_workers(devices_per_node: int = 1) -> int:
    """Loader workers per process: the node's cores shared among its processes, one left for each main process
    (Lightning's ``suggested_max_num_workers``), at most 8, since 8 ranks on 16 cores must not start 64 workers."""
    return min(8, suggested_max_num_workers(max(1, devices_per_node)))


class ImageFolderDataModule(LightningDataModule):
    """Images sorted into one sub-folder per class, or listed in a label file (``labels``).

    Args:
        root: Folder with ``train/`` (and optionally ``val/``, ``test/``), each holding one sub-folder per
            class; or a folder of class sub-folders, from which a stratified validation split is drawn.
            Not needed for ``predict``. With ``labels``: the folder the file's relative paths start from.
            Or a dataset written by ``lit-convnext optimize`` (a directory or ``s3://bucket/prefix``), streamed
            with litdata (:mod:`lit_convnext.data.streaming`; the ``stream`` extra).
        labels: A ``.csv`` (with a header) or ``.jsonl`` label file instead of class folders: a ``path`` column and
            a ``label`` (one class) or ``labels`` column (multi-label), optionally ``split`` (train/val/test).
            Relative paths start at ``root``, or at the file's folder when ``root`` is not given.
        label_separator: What separates the class names in a ``labels`` cell (class names may contain spaces).
        task: ``multilabel`` (any number of classes per image: multi-hot targets for a sigmoid per class) or
            ``multiclass``; ``None`` decides from the data: a label file with a ``labels`` column is multi-label,
            anything else multi-class. The data owns the task; the CLI links it to the model (``model.task``).
        predict_dir: Folder of images to label with ``predict`` (searched recursively).
        val_fraction: Share of each class held out for validation when ``root`` has no ``val/``.
        split_seed: Seed of that split; the split is also written to ``split_manifest.csv`` in the run directory.
        split_manifest: A ``split_manifest.csv`` from an earlier run, to reproduce its split exactly.
        batch_size: Images per device per step; ``auto``: on a GPU, the largest that fits in its memory (every
            device's, under DDP), found when ``fit`` is set up (:class:`~lit_convnext.callbacks.batch_size.AutoBatchSize`);
            without a GPU, 32.
        num_workers: Loader processes per device; ``None`` shares the node's cores among its devices, one
            left for each training process (at most 8).
        pin_memory: Page-locked batches for faster host-to-GPU copies; ``None`` means on when CUDA is used.
        persistent_workers: Keep loader workers alive between epochs instead of restarting them.
        augmentation: Training augmentation (timm's random resized crop, flips, RandAugment, erasing).
        skip_bad_files: Undecodable images are left out (with a logged summary) instead of stopping the run:
            those the check before training finds, and any that fails to load mid-run (replaced by the
            next image). Either way they are listed in the run directory's ``bad_files.csv``.
        sampler: ``shuffle`` (each image once per epoch), ``balanced`` (draws with replacement, every class
            equally likely; works with DDP through Lightning's sampler wrapper), ``replay`` (old-class and new-class
            images drawn sqrt(old/new):1 when ``--model.pretrained`` weights gained new classes by name; see
            docs/new-classes.md) or ``auto`` (``replay`` when it applies, else ``shuffle``).
        check_files: Check every file of the splits in use before the first step (pixels decoded, in
            threads); ``false`` saves that time on data already checked with ``lit-convnext doctor``.
        near_duplicates: Before ``fit``, also look for the same picture re-saved in train and in val/test (a
            re-encoded, resized, slightly cropped or brightened copy: leakage that inflates the score) by perceptual
            hashes, and warn with their number and the first pairs. Off by default: a second decode of every file
            (about a millisecond each per core); ``lit-convnext doctor --near_duplicates true`` lists every pair.
            Needs the ``doctor`` extra.
        reduced_decode: Decode large JPEGs at 1/2, 1/4 or 1/8 size when the transform needs no more
            pixels than that (several times faster loading of camera photos).
        unlabeled_root: A folder of images without labels (searched recursively; images that are also labelled
            images of the run are left out, with a count) that ``fit`` learns from as well: labelled by the
            teacher when ``--model.teacher`` is set, else by the model itself (semi-supervised). Each training
            batch then also holds ``batch_size * unlabeled_ratio`` of them, each in a weak and a strong view
            (see :mod:`lit_convnext.data.unlabeled`).
        unlabeled_ratio: Unlabelled images per labelled image in a training batch.
        stream_cache_dir: Where the chunks of an ``s3://`` ``root`` are kept locally; ``None``: litdata's default
            cache directory.
    """

    def __init__(
        self,
        root: Path | None = None,
        predict_dir: Path | None = None,
        labels: Path | None = None,
        label_separator: str = ";",
        task: Task | None = None,
        val_fraction: OpenFraction = 0.2,
        split_seed: int = 42,
        split_manifest: Path | None = None,
        batch_size: PositiveInt | Literal["auto"] = 32,
        num_workers: NonNegativeInt | None = None,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        augmentation: TrainAugmentation = TrainAugmentation(),
        skip_bad_files: bool = False,
        sampler: Literal["auto", "shuffle", "balanced", "replay"] = "auto",
        check_files: bool = True,
        near_duplicates: bool = False,
        reduced_decode: bool = True,
        unlabeled_root: Path | None = None,
        unlabeled_ratio: PositiveInt = 1,
        stream_cache_dir: Path | None = None,
    ) -> None:
        super().__init__()
        self.root = Path(root).expanduser() if root is not None else None
        self.predict_dir = Path(predict_dir).expanduser() if predict_dir is not None else None
        self.labels = Path(labels).expanduser() if labels is not None else None
        self.label_separator = label_separator
        self._task = task
        self._resolved_task: Task | None = None
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.split_manifest = Path(split_manifest) if split_manifest is not None else None
        self.batch_size = batch_size
        self._num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.augmentation = augmentation
        self.skip_bad_files = skip_bad_files
        self.check_files = check_files
        if near_duplicates and importlib.util.find_spec("imagehash") is None:
            raise UserError("--data.near_duplicates needs imagehash: pip install 'lit-convnext[doctor]'")
        self.near_duplicates = near_duplicates
        self.sampler = sampler
        self._checked: set[str] = set()
        self.reduced_decode = reduced_decode
        self.unlabeled_root = Path(unlabeled_root).expanduser() if unlabeled_root is not None else None
        self.unlabeled_ratio = unlabeled_ratio
        self._unlabeled: UnlabeledPool | None = None
        self.preprocessing: dict[str, Any] | None = None
        self._splits: FolderSplits | None = None
        self.datasets: dict[str, Dataset] = {}
        self.stream_cache_dir = Path(stream_cache_dir).expanduser() if stream_cache_dir is not None else None
        self._stream: OptimizedDataset | None = None
        self._run_seed: int | None = None

    @property
    def stream(self) -> OptimizedDataset | None:
        """The optimized dataset that ``root`` names (metadata read once), or ``None`` for a folder."""
        if self._stream is None and is_optimized(self.root):
            self._stream = OptimizedDataset.open(self.root, self.stream_cache_dir)
        return self._stream

    @property
    def num_workers(self) -> int:
        """Loader processes for this process (see ``num_workers`` in the class docstring)."""
        if self._num_workers is not None:
            return self._num_workers
        return default_num_workers(self.trainer.num_devices if self.trainer is not None else 1)

    @property
    def splits(self) -> FolderSplits:
        """The scanned folder (done once, on first use)."""
        if self._splits is None and self.stream is not None:
            self._splits = self.stream.splits
        if self._splits is None and self.labels is not None:
            self._splits = read_label_splits(self.labels, self.root, self.label_separator, self.val_fraction,
                                             self.split_seed, self.split_manifest)
        if self._splits is None:
            if self.root is None:
                raise UserError("no training data given: pass --data.root PATH (a folder of class sub-folders)")
            self._splits = read_folder_splits(self.root, self.val_fraction, self.split_seed, self.split_manifest)
        return self._splits

    @property
    def unlabeled(self) -> UnlabeledPool | None:
        """The images of ``unlabeled_root`` that are not labelled images of the run (found once, on first use),
        or ``None`` without ``unlabeled_root``."""
        if self._unlabeled is None and self.unlabeled_root is not None:
            splits = self.splits
            labelled = (sample.path for split in (splits.train, splits.val, splits.test) for sample in split)
            self._unlabeled = find_unlabeled_images(self.unlabeled_root, labelled)
        return self._unlabeled

    @property
    def class_names(self) -> list[str] | None:
        """Class names from the training folder or label file, or ``None`` without either (predict)."""
        return None if self._no_data else self.splits.class_names

    @property
    def task(self) -> Task:
        """``multiclass`` or ``multilabel`` (see ``task`` in the class docstring; reads only a label file's header)."""
        if self._resolved_task is None:
            self._resolved_task = data_task(self.labels, self._task)
        return self._resolved_task

    def state_dict(self) -> dict[str, Any]:
        """What the run was trained on, kept in every checkpoint (Lightning stores it under this class's name):
        ``suggest`` leaves these images out of a pool of unlabelled ones. Resuming reads back only the seed of
        the training order and augmentation (:attr:`run_seed`)."""
        return {"root": (remote_url(self.root) or str(self.root.resolve())) if self.root is not None else None,
                "labels": str(self.labels.resolve()) if self.labels is not None else None,
                "label_separator": self.label_separator,
                "run_seed": self._run_seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("run_seed") is not None:  # absent in checkpoints written before it was kept
            self._run_seed = int(state_dict["run_seed"])

    @property
    def _no_data(self) -> bool:
        return self.root is None and self.labels is None

    @property
    def _source(self) -> Path | None:
        """What the user pointed at (for messages): the label file, else the folder."""
        return self.labels or self.root

    def prepare_data(self) -> None:
        """Under multi-process training, check the files of the splits this run uses once per machine, before
        ``setup`` checks them on every process. Lightning runs this hook on each machine's first process while the
        others wait, so they then find every result in the check cache (one ``stat`` per file) instead of all
        decoding every file at the same time, each with its own worker processes; the waiting processes leave the
        machine's cores to this check. A single process checks in ``setup`` only."""
        trainer = self.trainer
        if not self.check_files or self._no_data or trainer is None or trainer.world_size <= 1 or self.stream is not None:
            return
        names = CHECKED_SPLITS.get(trainer.state.fn.value if trainer.state.fn is not None else "", ())
        paths = [sample.path for name in names for sample in getattr(self.splits, name)]
        if self.unlabeled is not None and "train" in names:
            paths += self.unlabeled.paths
        if paths:
            inspect_files(paths)  # one worker per core; bad files are reported by setup's check on every process

    def setup(self, stage: str) -> None:
        preprocessing = self._resolve_preprocessing()
        eval_transform = build_eval_transform(preprocessing)
        eval_size = eval_decode_size(preprocessing) if self.reduced_decode else None
        if stage == "predict":
            self.datasets["predict"] = UnlabeledImages(self._predict_paths(), eval_transform, eval_size)
            return
        splits = self.splits
        if self.stream is not None:
            self._setup_stream(stage, preprocessing, eval_transform)
            return
        self._drop_bad_files(CHECKED_SPLITS.get(stage, ()))
        if stage == "fit":
            if isinstance(self.batch_size, int) and len(splits.train) < self.batch_size:  # else auto: found later
                raise UserError(
                    f"only {len(splits.train)} training images in {self._source} but --data.batch_size is "
                    f"{self.batch_size}: lower the batch size or add images"
                )
            if not splits.val:
                raise UserError(f"no validation images found under {self._source}: add "
                                + ("rows with split 'val'" if self.labels else f"{self.root}/val/<class>/..."))
            augmentation = self._task_augmentation()
            if augmentation.enabled:
                train_transform = build_train_transform(preprocessing, augmentation)
                weak_transform = build_weak_transform(preprocessing, augmentation)
                train_size = train_decode_size(preprocessing, augmentation) if self.reduced_decode else None
            else:
                train_transform, weak_transform, train_size = eval_transform, eval_transform, eval_size
            self.datasets["train"] = self._labeled(splits.train, train_transform, train_size, evaluation=False)
            if self.unlabeled is not None:
                self._drop_bad_unlabeled()
                self.datasets[UNLABELED] = TwoViewImages(self.unlabeled.paths, weak_transform, train_transform,
                                                         train_size)
            self._write_manifest()
            if self.near_duplicates and (self.trainer is None or self.trainer.is_global_zero):
                self._warn_near_duplicates()
        if stage in ("fit", "validate"):
            self.datasets["val"] = self._labeled(splits.val, eval_transform, eval_size)
        if stage == "test":
            if not splits.test:
                raise UserError(f"no test images in {self._source}: add "
                                + ("rows with split 'test'" if self.labels else f"{self.root}/test/<class>/...")
                                + " to run `test`")
            self.datasets["test"] = self._labeled(splits.test, eval_transform, eval_size)

    def _setup_stream(self, stage: str, preprocessing: dict[str, Any], eval_transform: Any) -> None:
        """The datasets of an optimized dataset (:mod:`lit_convnext.data.streaming`): its files were checked when it
        was written, its splits drawn then."""
        unsupported = {"--data.unlabeled_root": self.unlabeled_root is not None,
                       f"--data.sampler {self.sampler}": self.sampler in ("balanced", "replay"),
                       "--data.near_duplicates": self.near_duplicates}
        named = [name for name, used in unsupported.items() if used]
        if named:
            raise UserError(f"{', '.join(named)} cannot be used with the optimized dataset {self.stream.root}: "
                            "train from the original folder for it")
        self.stream.check_resolution(eval_decode_size(preprocessing))
        if stage == "fit":
            if isinstance(self.batch_size, int) and len(self.splits.train) < self.batch_size:
                raise UserError(f"only {len(self.splits.train)} training images in {self.stream.root} but "
                                f"--data.batch_size is {self.batch_size}: lower the batch size")
            if not self.splits.val:
                raise UserError(f"{self.stream.root} has no validation split: write it again with "
                                "`lit-convnext optimize` from a folder with val/ images or with --val_fraction")
            augmentation = self._task_augmentation()
            train_transform = build_train_transform(preprocessing, augmentation) if augmentation.enabled \
                else eval_transform
            self.datasets["train"] = self.stream.train_dataset(train_transform, self.split_seed)
        for split in ("val",) if stage in ("fit", "validate") else ("test",) if stage == "test" else ():
            if split == "test" and not self.splits.test:
                raise UserError(f"{self.stream.root} has no test split: there was none where it was optimized from")
            self.datasets[split] = self.stream.eval_dataset(split, eval_transform)

    @property
    def class_counts(self) -> list[int] | None:
        """Training images per class (multi-label: images having the class), in class order (``None`` without
        data); the model's ``auto`` class weights use them."""
        if self._no_data:
            return None
        counts = Counter(name for sample in self.splits.train for name in sample_labels(sample))
        return [counts.get(name, 0) for name in self.splits.class_names]

    def _warn_near_duplicates(self) -> None:
        """Log the pairs of near-identical pictures that cross train/val/test (see ``near_duplicates``)."""
        from lit_convnext.checks.near_duplicates import near_duplicates

        group_of = {str(sample.path): (split, "") for split in ("train", "val", "test")
                    for sample in getattr(self.splits, split)}
        pairs = [pair for pair in near_duplicates(list(group_of), group_of, {}, self.num_workers or None)
                 if pair[3] == "across splits"]
        if pairs:
            first = "; ".join(f"{a} ~ {b}" for a, b, *_ in pairs[:2])
            log.warning("%d near-duplicate pair(s) across train/val/test (the same picture re-saved: the score is "
                        "inflated), e.g. %s; `lit-convnext doctor %s --near_duplicates true` lists them all",
                        len(pairs), first, self._source)

    def _drop_bad_files(self, split_names: tuple[str, ...]) -> None:
        for name in split_names:
            if not self.check_files or name in self._checked:
                continue
            listing = self._bad_file_list()  # every rank checks; one writes the list
            kept = check_samples(getattr(self.splits, name), name, self.skip_bad_files, self.num_workers or None,
                                 listing if self.trainer is None or self.trainer.is_global_zero else None)
            setattr(self.splits, name, kept)
            self._checked.add(name)

    def _drop_bad_unlabeled(self) -> None:
        """Check the unlabelled images as the training split's are checked (same rules for undecodable files)."""
        if not self.check_files or UNLABELED in self._checked:
            return
        pool = self.unlabeled
        listing = self._bad_file_list()
        kept = check_samples([Sample(path, "") for path in pool.paths], UNLABELED, self.skip_bad_files,
                             self.num_workers or None,
                             listing if self.trainer is None or self.trainer.is_global_zero else None)
        if not kept:
            raise UserError(f"no image under --data.unlabeled_root {pool.root} can be decoded")
        self._unlabeled = UnlabeledPool(pool.root, [sample.path for sample in kept], pool.left_out)
        self._checked.add(UNLABELED)

    def _task_augmentation(self) -> TrainAugmentation:
        """The augmentation with the task's values for the options left to it (``TrainAugmentation.for_task``);
        when the task changes any, with the model's (``ConvNeXtClassifier.task_defaults``), one line says which."""
        augmentation, changed = self.augmentation.for_task(self.task)
        model = self.trainer.lightning_module if self.trainer is not None else None
        changed = {**changed, **getattr(model, "task_defaults", {})}
        if changed:
            values = ", ".join(f"{name} {list(value) if isinstance(value, tuple) else value}"
                               for name, value in changed.items())
            rank_zero_info(f"{self.task.capitalize()} task: {values}, so that training and evaluation images keep "
                           "what their labels name (set an option to choose its value).")
        return augmentation

    def _resolve_preprocessing(self) -> dict[str, Any]:
        model = self.trainer.lightning_module if self.trainer is not None else None
        preprocessing = getattr(model, "preprocessing", None) or self.preprocessing
        if preprocessing is None:
            raise RuntimeError("ImageFolderDataModule needs a model with a `preprocessing` config, or set .preprocessing")
        self.preprocessing = preprocessing
        return preprocessing

    def _labeled(self, samples: list, transform: Any, decode_min_size: int | None = None,
                 evaluation: bool = True) -> LabeledImages:
        if self.task == "multilabel":
            targets = multi_hot(samples, self.splits.class_names)
        else:
            targets = self.splits.targets(samples)
        return LabeledImages([s.path for s in samples], targets, transform, decode_min_size,
                             skip_bad=self.skip_bad_files, bad_file_list=self._bad_file_list(), evaluation=evaluation)

    def _bad_file_list(self) -> Path | None:
        """The run directory's ``bad_files.csv`` (``None`` without a trainer)."""
        if self.trainer is None:
            return None
        return Path(self.trainer.log_dir or self.trainer.default_root_dir) / BAD_FILES_NAME  # a collective under DDP

    def _predict_paths(self) -> list[Path]:
        if self.predict_dir is None:
            raise UserError("nothing to predict: pass --data.predict_dir FOLDER")
        if not self.predict_dir.is_dir():
            raise UserError(f"predict folder {self.predict_dir} does not exist or is not a folder")
        paths = list(iter_images(self.predict_dir))
        if not paths:
            raise UserError(f"predict folder {self.predict_dir} contains no images (searched recursively)")
        return paths

    def _write_manifest(self) -> None:
        if not self.splits.val_is_held_out or self.trainer is None:
            return
        run_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)  # log_dir is a collective under DDP
        if not self.trainer.is_global_zero:
            return
        base = self.root if self.root is not None else self.labels.parent
        write_split_manifest(run_dir / SPLIT_MANIFEST_NAME, base, self.splits)
        log.info("validation split (%d images) written to %s", len(self.splits.val), run_dir / SPLIT_MANIFEST_NAME)

    def _loader(self, split: str) -> DataLoader:
        if split == "train":
            return self._train_loader()
        workers = self.num_workers
        sampler = None
        if split in ("val", "test"):  # each image on exactly one device, so multi-device metrics count it once
            sampler = eval_sampler(self.datasets[split], self.trainer)
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=workers,
            pin_memory=self._pin,
            persistent_workers=self.persistent_workers and workers > 0,
            worker_init_fn=ignore_sigterm if workers > 0 else None,
            # Its own generator for the workers' base seed: iterating an evaluation loader leaves the training
            # RNG as it was, so a resumed run's draws do not depend on whether a validation ran in between.
            generator=torch.Generator(),
        )

    @property
    def _pin(self) -> bool:
        return self.pin_memory if self.pin_memory is not None else torch.cuda.is_available()

    def _train_loader(self) -> DataLoader:
        """The labelled training loader (see :meth:`_resumable_loader`); an optimized dataset's is litdata's own
        (resumable too)."""
        if self.stream is not None:
            return self.stream.train_loader(self.datasets["train"], self.batch_size, self.num_workers, self._pin)
        order = None
        if self.sampler == "balanced":
            order = balanced_sampler(self.datasets["train"].targets, self.split_seed)
        elif self.sampler in ("auto", "replay"):
            order = self._replay_sampler()
        return self._resumable_loader(self.datasets["train"], self.batch_size, order)

    def _resumable_loader(self, dataset: Dataset, batch_size: int, order: Sampler | None) -> DataLoader:
        """A training loader resumable mid-epoch: torchdata's ``StatefulDataLoader``, whose position Lightning
        saves in every checkpoint, over :class:`~lit_convnext.data.resumable.EpochSeededSampler`'s ``(index, seed)``
        draws in ``order`` (``None``: a shuffle); see :mod:`lit_convnext.data.resumable`."""
        # The epoch the loader's first iteration draws: Lightning creates it before it calls set_epoch, and a
        # resumed run starts inside (or at the end of) the checkpoint's epoch.
        epoch = self.trainer.fit_loop.epoch_progress.current.processed if self.trainer is not None else 0
        workers = self.num_workers
        return StatefulDataLoader(
            SeededSamples(dataset),
            batch_size=batch_size,
            sampler=EpochSeededSampler(len(dataset), self.run_seed, epoch, order),
            drop_last=True,  # equal-size training batches (see check_mixup_batch in model.classifier)
            num_workers=workers,
            pin_memory=self._pin,
            persistent_workers=self.persistent_workers and workers > 0,
            worker_init_fn=ignore_sigterm if workers > 0 else None,
            generator=torch.Generator(),  # the workers' base seed, unused (each draw has its seed): see _loader
        )

    @property
    def run_seed(self) -> int:
        """The seed of the training order and augmentation: the run's (``seed_everything``, which Lightning keeps in
        ``PL_GLOBAL_SEED``), else 0 as for Lightning's own distributed sampler, so that every process of a run
        draws the same order; kept in the checkpoint, so a resumed run draws with it again."""
        if self._run_seed is None:
            self._run_seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        return self._run_seed

    def _replay_sampler(self) -> Sampler | None:
        """The replay sampler when the model's pretrained head gained classes and the folder holds images of both
        old and new classes; ``None`` (shuffle) otherwise under ``auto``; ``replay`` without them is an error."""
        added = added_classes(self.trainer.lightning_module if self.trainer is not None else None)
        if not added and self.sampler == "auto":
            return None
        names = self.splits.class_names
        is_new = replay_groups(self.datasets["train"].targets, [names.index(n) for n in added if n in names],
                               len(names))
        n_new, n_old = int(is_new.sum()), len(is_new) - int(is_new.sum())
        if not added or not n_new or not n_old:
            if self.sampler == "replay":
                why = (f"the training images hold {n_old} of old classes and {n_new} of new ones" if added else
                       "the model's --model.pretrained head gained no classes by name")
                raise UserError(f"--data.sampler replay replays old classes while new ones are learnt, but {why}: "
                                "use --data.sampler shuffle (or auto)")
            return None
        rank_zero_info(f"Replaying old classes: {n_old} old-class and {n_new} new-class training images drawn "
                       f"{(n_old / n_new) ** 0.5:.2g}:1 (sqrt of {n_old}/{n_new}) instead of {n_old / n_new:.2g}:1 "
                       "(--data.sampler shuffle turns it off)")
        return replay_sampler(is_new, self.split_seed)

    def train_dataloader(self) -> DataLoader | CombinedLoader:
        labelled = self._loader("train")
        if UNLABELED not in self.datasets:
            return labelled
        return CombinedLoader({"labeled": labelled, "unlabeled": self._unlabeled_loader(len(labelled))},
                              mode="min_size")

    def _unlabeled_loader(self, labelled_batches: int) -> DataLoader:
        """Unlabelled batches, as many per epoch as labelled ones (see :func:`unlabeled_sampler`)."""
        dataset = self.datasets[UNLABELED]
        batch_size = self.batch_size * self.unlabeled_ratio
        world_size = self.trainer.world_size if self.trainer is not None else 1
        order = unlabeled_sampler(len(dataset), labelled_batches, batch_size, world_size)
        return self._resumable_loader(dataset, batch_size, order)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict")
