"""Checkpoints: atomic writes, weights-only loading, and one clear error for each bad file."""

import os
import pathlib
import pickle

import pytest
import torch

from pyrodiff import CheckpointError, Diffusion, ForwardGuide, linear_schedule
from pyrodiff.checkpoint import (
    FORMAT_VERSION,
    check_model_config,
    load_checkpoint,
    restore_weights,
    save_checkpoint,
)
from pyrodiff.networks import MLPDenoiser

STATE = {
    "step": 3,
    "model": {"w": torch.arange(6.0).reshape(2, 3)},
    "rng": {"torch": torch.get_rng_state(), "python": {"version": 3, "gauss_next": None}},
    "config": {"lr": 1e-3, "names": ["a", "b"], "nested": {"t": (1, 2)}},
}


def _pair(T=4, hidden=8):
    torch.manual_seed(1)
    s = linear_schedule(T)
    return Diffusion(MLPDenoiser(2, hidden, 1, 4), s), ForwardGuide(s)


def test_round_trip_keeps_tensors_and_plain_values(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", STATE)
    out = load_checkpoint(path)
    assert out["format_version"] == FORMAT_VERSION
    assert out["step"] == 3
    assert torch.equal(out["model"]["w"], STATE["model"]["w"])
    assert torch.equal(out["rng"]["torch"], STATE["rng"]["torch"])
    assert out["config"] == STATE["config"]
    # a run folder is accepted in place of the file
    save_checkpoint(tmp_path / "checkpoint.pt", STATE)
    assert load_checkpoint(tmp_path)["step"] == 3


def test_save_replaces_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, STATE)
    save_checkpoint(path, dict(STATE, step=4))
    assert load_checkpoint(path)["step"] == 4
    assert sorted(os.listdir(tmp_path)) == ["c.pt"]


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint(path, STATE)

    def half_then_fail(obj, f, *a, **k):
        f.write(b"PK\x03\x04 partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, dict(STATE, step=99))
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 3
    assert sorted(os.listdir(tmp_path)) == ["c.pt"]


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="folder .* does not exist"):
        save_checkpoint(tmp_path / "missing" / "c.pt", STATE)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: b"", "empty"),
        (lambda b: b[: len(b) // 2], "truncated or corrupt"),
        (lambda b: b[:-30], "truncated or corrupt"),
        (lambda b: b"not a checkpoint at all " * 20, "not a torch checkpoint"),
        (lambda b: b[:200] + bytes(len(b) - 200), "truncated or corrupt"),
    ],
    ids=["empty", "half", "tail-cut", "garbage", "zeroed"],
)
def test_damaged_files_are_refused(tmp_path, damage, message):
    path = save_checkpoint(tmp_path / "c.pt", STATE)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_newer_format_and_foreign_content_are_refused(tmp_path):
    newer = tmp_path / "newer.pt"
    torch.save(dict(STATE, format_version=FORMAT_VERSION + 1), newer)
    with pytest.raises(CheckpointError, match=f"format version {FORMAT_VERSION + 1}.*upgrade"):
        load_checkpoint(newer)
    a_list = tmp_path / "list.pt"
    torch.save([torch.ones(2)], a_list)
    with pytest.raises(CheckpointError, match="holds a list"):
        load_checkpoint(a_list)
    bare = tmp_path / "bare.pt"
    torch.save({"model": {}}, bare)
    with pytest.raises(CheckpointError, match="lacks format_version, step"):
        load_checkpoint(bare)


class Payload:
    """Unpickling this creates the file ``path``: a stand-in for any code a pickle can run."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch.save", "pickle-2", "pickle-4"])
def test_pickle_payload_is_refused_and_never_runs(tmp_path, writer):
    ckpt, marker = tmp_path / "evil.pt", tmp_path / "pwned"
    state = {"format_version": 1, "step": 0, "model": Payload(marker)}
    if writer == "torch.save":
        torch.save(state, ckpt)
    else:
        with open(ckpt, "wb") as f:
            pickle.dump(state, f, protocol=int(writer[-1]))
    # torch's own format and protocol 2 reach the payload's global; protocol 4 stops earlier,
    # at an opcode the weights-only reader does not know
    message = "could run code" if writer != "pickle-4" else "not a torch checkpoint"
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(ckpt)
    assert not marker.exists()
    # the payload is real: an unsafe load does run it, so the assertion above can fail
    if writer == "torch.save":
        torch.load(ckpt, weights_only=False)
    else:
        with open(ckpt, "rb") as f:
            pickle.load(f)
    assert marker.exists()


def test_other_model_configuration_is_named(tmp_path):
    model, guide = _pair(T=4)
    state = {"step": 1, "model": model.state_dict(), "guide": guide.state_dict()}
    state["model_config"] = model.config()
    path = save_checkpoint(tmp_path / "c.pt", state)
    other, other_guide = _pair(T=5)
    with pytest.raises(CheckpointError, match="another model configuration: num_steps is 4"):
        check_model_config(load_checkpoint(path), other.config())
    with pytest.raises(CheckpointError, match="num_steps"):
        restore_weights(other, other_guide, path)
    # same structure, other widths: no config difference, but the tensors do not fit
    wider, wider_guide = _pair(T=4, hidden=16)
    with pytest.raises(CheckpointError, match="does not fit this model"):
        restore_weights(wider, wider_guide, path)


def test_restore_weights_prefers_the_ema(tmp_path):
    model, guide = _pair()
    raw = {k: v.clone() for k, v in model.state_dict().items()}
    shadow = {f"model.{n}": torch.full_like(p, 0.25) for n, p in model.named_parameters()}
    state = {
        "step": 1,
        "model": raw,
        "guide": guide.state_dict(),
        "model_config": model.config(),
        "ema": {"decay": 0.9, "num_updates": 1, "shadow": shadow},
    }
    path = save_checkpoint(tmp_path / "c.pt", state)
    fresh, fresh_guide = _pair()
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    restore_weights(fresh, fresh_guide, path, use_ema=False)
    assert all(torch.equal(fresh.state_dict()[k], raw[k]) for k in raw)
    restore_weights(fresh, fresh_guide, path)
    assert all(bool((p == 0.25).all()) for p in fresh.parameters())


def test_load_does_not_unpickle_with_plain_pickle(tmp_path, monkeypatch):
    # weights-only loading must not fall back to pickle.load (which would run payloads)
    path = save_checkpoint(tmp_path / "c.pt", STATE)

    def forbidden(*a, **k):
        raise AssertionError("pickle.load called")

    monkeypatch.setattr(pickle, "load", forbidden)
    assert load_checkpoint(path)["step"] == 3
