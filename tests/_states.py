"""Comparing two pretraining checkpoints' full training state (weights, Adam moments, step and masks)."""
import torch


def assert_same_training_state(a: dict, b: dict, why: str) -> None:
    """``a`` and ``b``: loaded official-layout checkpoints that must be bit-identical (``why`` names the cause)."""
    for key in ("encoder", "predictor", "target_encoder"):
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), f"{key}.{k} differs {why}"
    for pid, s in a["opt"]["state"].items():
        for moment in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(s[moment], b["opt"]["state"][pid][moment]), f"opt {pid} {moment} differs {why}"
    assert a["jepa_eval"] == b["jepa_eval"]
