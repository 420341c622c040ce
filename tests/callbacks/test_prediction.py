"""The prediction writer: rows one batch behind (formatting overlaps the next batch), none lost at the end."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch

from lit_convnext.callbacks.prediction_writer import PredictionWriter


def test_rows_are_written_one_batch_behind_and_flushed_at_the_end(tmp_path: Path) -> None:
    paths = [tmp_path / f"img{i}.jpg" for i in range(5)]
    trainer = SimpleNamespace(predict_dataloaders=SimpleNamespace(dataset=SimpleNamespace(paths=paths)), world_size=1)
    module = SimpleNamespace(class_names=["cat", "dog", "owl"])
    writer = PredictionWriter(tmp_path / "out.csv", top_k=2)
    writer.on_predict_start(trainer, module)
    batches = [(torch.tensor([0, 1]), torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])),
               (torch.tensor([2, 3]), torch.tensor([[0.2, 0.5, 0.3], [0.9, 0.05, 0.05]])),
               (torch.tensor([4]), torch.tensor([[0.3, 0.3, 0.4]]))]
    written = []
    for i, (indices, probabilities) in enumerate(batches):
        writer.write_on_batch_end(trainer, module, {"probabilities": probabilities, "indices": indices},
                                  None, None, i)
        written.append(writer.rows)
    assert written == [0, 2, 4]  # each batch's rows appear once the next batch has been handed over
    writer.on_predict_end(trainer, module)
    lines = (tmp_path / "out.csv").read_text().splitlines()
    assert lines[0] == "path,class_1,probability_1,class_2,probability_2,error"
    assert [line.split(",")[1] for line in lines[1:]] == ["cat", "owl", "dog", "cat", "owl"]
    assert lines[1].split(",")[0] == str(paths[0]) and lines[-1].split(",")[0] == str(paths[4])
