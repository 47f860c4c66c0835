"""Exactness against the official implementation's outputs (../shared/reference/golden_unireplknet_a.pt)."""

import torch

import unireplknet
from tests.conftest import rel_error

TOL = 1e-5  # float32, relative ‖a−b‖/‖b‖


def test_training_form_matches_official_logits(golden):
    model = unireplknet.UniRepLKNet(**golden["constructor"])
    model.load_state_dict(golden["train_state_dict"], strict=True)  # official key names: plain load works
    with torch.no_grad():
        logits = model.eval()(golden["input"])
    assert rel_error(logits, golden["logits_train_form_eval"]) < TOL


def test_reparameterized_matches_official_deploy_logits(golden):
    model = unireplknet.UniRepLKNet(**golden["constructor"])
    unireplknet.load_checkpoint(model, {"model": golden["train_state_dict"]})
    deployed = model.eval().reparameterize()
    assert deployed is model
    with torch.no_grad():
        logits = deployed(golden["input"])
    assert rel_error(logits, golden["logits_deploy"]) < TOL
    # our re-parameterization yields the official deploy weights themselves
    ours = deployed.state_dict()
    assert set(ours) == set(golden["deploy_state_dict"])
    for key, value in golden["deploy_state_dict"].items():
        assert torch.allclose(ours[key], value, rtol=1e-4, atol=1e-6), key


def test_deploy_model_loads_official_deploy_weights(golden):
    model = unireplknet.UniRepLKNet(deploy=True, **golden["constructor"])
    unireplknet.load_checkpoint(model, golden["deploy_state_dict"], strict=True)
    with torch.no_grad():
        logits = model.eval()(golden["input"])
    assert rel_error(logits, golden["logits_deploy"]) < TOL


def test_channels_last_input_gives_the_same_logits(golden):
    model = unireplknet.UniRepLKNet(**golden["constructor"]).eval()
    model.load_state_dict(golden["train_state_dict"])
    x = golden["input"].contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert rel_error(model(x), golden["logits_train_form_eval"]) < TOL
