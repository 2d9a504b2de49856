"""Export: the ONNX graph contract, parity with eager PyTorch, TorchScript, int8, and the CLI."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from deploy_helpers import CLASSES, make_artifact, tiny_exported  # noqa: E402

from mnistlab.artifact import load_artifact  # noqa: E402
from mnistlab.cli.main import main  # noqa: E402
from mnistlab.data.imagedata import normalize  # noqa: E402
from mnistlab.export import check_parity, export_torchscript, load_torchscript, quantize_onnx  # noqa: E402
from mnistlab.predict import META_CARD  # noqa: E402


def random_pixels(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, 28, 28), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_onnx_graph_contract():
    _, path = tiny_exported()
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    [inp] = proto.graph.input
    assert inp.name == "pixels" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, 28, 28]  # dynamic batch
    outputs = {o.name: o for o in proto.graph.output}
    assert set(outputs) == {"logits", "probabilities"}
    for out in outputs.values():
        assert out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        assert out.type.tensor_type.shape.dim[1].dim_value == 10
    meta = {p.key: p.value for p in proto.metadata_props}
    card = json.loads(meta[META_CARD])
    assert card["classes"] == CLASSES and card["arch"] == "cnn"
    assert json.loads(meta["classes"]) == CLASSES
    assert json.loads(meta["preprocess"])["mean"] == pytest.approx(0.1307)


def test_onnx_matches_eager_for_any_batch_size():
    artifact, path = tiny_exported()
    model, card = load_artifact(artifact)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 3, 257):
        pixels = random_pixels(n, seed=n)
        logits, probs = session.run(["logits", "probabilities"], {"pixels": pixels.numpy()})
        with torch.no_grad():
            eager = model(normalize(pixels, card.preprocess.mean, card.preprocess.std)).numpy()
        assert logits.shape == (n, 10) and logits.dtype == np.float32
        np.testing.assert_allclose(logits, eager, atol=1e-5, rtol=0)  # normalisation is inside the graph
        np.testing.assert_allclose(probs, torch.from_numpy(logits).softmax(1).numpy(), atol=1e-6)
    parity = check_parity(model, card, path, "onnx", random_pixels(600), None, "random")
    assert parity.same_predictions == 1.0 and parity.max_logit_diff <= 1e-5 and parity.images == 600


def test_the_default_recipes_network_exports_with_parity(tmp_path):
    """fastcnn with the default recipe's knobs (stride-2 stem, pool before BatchNorm) and its contrast stretch
    in the ONNX graph (the graph selects the paper's quantiles by topk, eager PyTorch by kthvalue)."""
    from mnistlab.config import load_config, resolve_recipe
    from mnistlab.export import export_onnx
    from mnistlab.models import create_model

    cfg = load_config(resolve_recipe("mnist-fast"))
    assert cfg.model.args.get("strided_stem") and cfg.model.args.get("pool_first")
    torch.manual_seed(0)
    model = create_model(cfg.model.name, **cfg.model.args)
    with torch.no_grad():  # BatchNorm statistics away from 0/1 so that the order of pool and BN matters
        model.train()(torch.rand(64, 1, 28, 28) * 3)
    model.eval()
    artifact = make_artifact(tmp_path / "art", arch="fastcnn")
    _, card = load_artifact(artifact)
    card.arch_args = dict(model.arch_args)
    card.preprocess = replace(card.preprocess, autocontrast=cfg.data.autocontrast)
    assert card.preprocess.autocontrast
    path = export_onnx(model, card, tmp_path / "fast.onnx")
    parity = check_parity(model, card, path, "onnx", random_pixels(300), None, "random")
    assert parity.same_predictions == 1.0 and parity.max_logit_diff <= 1e-4 and parity.images == 300


def test_torchscript_export_roundtrip(tmp_path):
    artifact, _ = tiny_exported()
    model, card = load_artifact(artifact)
    path = export_torchscript(model, card, tmp_path / "model.pt")
    module, meta = load_torchscript(path)
    assert meta["classes"] == CLASSES and meta["preprocess"]["std"] == pytest.approx(0.3081)
    logits, probs = module(random_pixels(5))
    assert logits.shape == (5, 10) and probs.sum(1).allclose(torch.ones(5))
    parity = check_parity(model, card, path, "torchscript", random_pixels(300), None, "random")
    assert parity.same_predictions == 1.0 and parity.max_logit_diff <= 1e-5


def test_int8_quantization_keeps_the_contract(tmp_path):
    artifact, path = tiny_exported()
    model, card = load_artifact(artifact)
    out = quantize_onnx(path, tmp_path / "int8.onnx", random_pixels(256).numpy(), card)
    assert out.stat().st_size < 0.5 * path.stat().st_size
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(uint8)"
    assert json.loads(session.get_modelmeta().custom_metadata_map[META_CARD])["classes"] == CLASSES
    logits, probs = session.run(None, {"pixels": random_pixels(7).numpy()})
    assert logits.shape == (7, 10) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert any("QuantizeLinear" in n.op_type for n in onnx.load(str(out)).graph.node)


def test_cli_export_with_parity_and_int8_report(synthetic_data, tmp_path, capsys):
    artifact = make_artifact(tmp_path / "art", arch="lenet5")
    out = tmp_path / "m.onnx"
    assert main(["export", str(artifact), "--out", str(out), "--int8", "--json", "--calibration-images", "200"]) == 0
    report = json.loads(capsys.readouterr().out)
    parity = report["parity"]
    assert parity["images"] == 300 and parity["source"] == "mnist test"  # the synthetic test split
    assert parity["same_predictions"] == 1.0 and parity["max_logit_diff"] <= 1e-4
    assert parity["accuracy_eager"] == parity["accuracy_export"]
    assert report["int8_parity"]["accuracy_export"] is not None
    text_out = tmp_path / "m2.pt"
    assert main(["export", str(artifact), "--out", str(text_out), "--format", "torchscript", "--check-images", "50"]) == 0
    text = capsys.readouterr().out
    assert "identical predictions 100.00%" in text and "50 mnist test images" in text
    # never replaces a file silently; --int8 is ONNX only
    assert main(["export", str(artifact), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["export", str(artifact), "--out", str(tmp_path / "x.pt"), "--format", "torchscript", "--int8"]) == 2


def test_cli_export_without_dataset_checks_on_random_pixels(tmp_path, capsys):
    artifact = make_artifact(tmp_path / "art", arch="linear", dataset="")
    assert main(["export", str(artifact), "--out", str(tmp_path / "m.pt"), "--format", "torchscript",
                 "--check-images", "64"]) == 0
    captured = capsys.readouterr()
    assert "random pixels" in captured.err and "identical predictions 100.00%" in captured.out


@pytest.mark.real_data
def test_parity_on_all_mnist_test_images(real_data_dir, tmp_path):
    """The done criterion: identical predictions on all 10,000 test images, logits within 1e-4."""
    from mnistlab.data.dataset import load_dataset
    from mnistlab.export import export_onnx

    train = load_dataset("mnist", "train", data_dir=real_data_dir, progress=False)
    test = load_dataset("mnist", "test", data_dir=real_data_dir, progress=False)
    model, card = load_artifact(make_artifact(tmp_path / "art"))
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small batches: one thread is fastest, and far faster on busy shared cores
    try:
        for _ in range(100):  # a briefly trained model: confident logits, ~95% accuracy
            idx = torch.randint(0, len(train), (128,), generator=g)
            x = normalize(train.images[idx], train.mean, train.std)
            loss = torch.nn.functional.cross_entropy(model(x), train.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    path = export_onnx(model, card, tmp_path / "m.onnx")
    parity = check_parity(model, card, path, "onnx", test.images, test.labels, "mnist test")
    assert parity.images == 10_000
    assert parity.same_predictions == 1.0 and parity.max_logit_diff <= 1e-4
    assert parity.accuracy_eager > 0.9 and parity.accuracy_export == parity.accuracy_eager
    int8 = quantize_onnx(path, tmp_path / "q.onnx", train.images[:500].numpy(), card)
    q = check_parity(model, card, int8, "onnx", test.images, test.labels, "mnist test")
    assert q.accuracy_export > parity.accuracy_eager - 0.01  # int8 costs under a point
