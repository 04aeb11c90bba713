"""The trainer writes history.csv without following a link planted in the run folder."""

import pytest

from trainer.errors import UserError


@pytest.mark.tf
def test_history_csv_is_written_without_following_a_link(tmp_path):
    from trainer.training.callbacks import SafeCSVLogger

    target = tmp_path / "shadow"
    target.write_text("precious\n")
    (tmp_path / "history.csv").symlink_to(target)
    with pytest.raises(UserError, match="history.csv: it is a link"):
        SafeCSVLogger(str(tmp_path / "history.csv"), append=True).on_train_begin()
    assert target.read_text() == "precious\n"
    path = tmp_path / "run" / "history.csv"
    path.parent.mkdir()
    for epoch in (0, 1):  # a run, then its resume: one header
        logger = SafeCSVLogger(str(path), append=True)
        logger.on_train_begin()
        logger.on_epoch_end(epoch, {"loss": 0.5, "val_loss": 0.7})
        logger.on_train_end()
    assert path.read_text().splitlines() == ["epoch,loss,val_loss", "0,0.5,0.7", "1,0.5,0.7"]
