"""The codec: colour, shapes, pooling, batch invariance, weights, reference latents."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from latentsweep.codec import colour, layout, pooling, reference, weights
from latentsweep.codec.embed import Embedder
from latentsweep.codec.settings import EmbedSettings
from latentsweep.schema import ALL_COLUMNS, TENSORS


@pytest.fixture(scope="module")
def embedder():
    return Embedder(EmbedSettings(weights="untrained", feature_set="all", device="cpu"))


def random_image(rng, height, width):
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_bt709_matches_hand_computed_values():
    rgb = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0],
                        [0.2, 0.4, 0.6]]).T.reshape(1, 3, 5, 1)
    yuv = colour.rgb_to_yuv(rgb)[0, :, :, 0].T
    # Y = .2126R + .7152G + .0722B; U = (B - Y)/1.8556 + .5; V = (R - Y)/1.5748 + .5
    expected = torch.tensor([
        [0.2126, (0 - 0.2126) / 1.8556 + 0.5, (1 - 0.2126) / 1.5748 + 0.5],
        [0.7152, (0 - 0.7152) / 1.8556 + 0.5, (0 - 0.7152) / 1.5748 + 0.5],
        [0.0722, (1 - 0.0722) / 1.8556 + 0.5, (0 - 0.0722) / 1.5748 + 0.5],
        [1.0, 0.5, 0.5],
        [0.37192, (0.6 - 0.37192) / 1.8556 + 0.5, (0.2 - 0.37192) / 1.5748 + 0.5],
    ])
    assert torch.allclose(yuv, expected, atol=1e-6)
    assert torch.allclose(colour.yuv_to_rgb(colour.rgb_to_yuv(rgb)), rgb, atol=1e-6)


def test_branch_packing():
    yuv = torch.arange(3 * 4 * 4, dtype=torch.float32).reshape(1, 3, 4, 4)
    luma, chroma = colour.branch_inputs(yuv)
    assert luma.shape == (1, 1, 4, 4) and chroma.shape == (1, 12, 2, 2)
    # channel 0 of the chroma input is Y at even rows and even columns; channel 4 is U there
    assert torch.equal(chroma[0, 0], yuv[0, 0, ::2, ::2])
    assert torch.equal(chroma[0, 4], yuv[0, 1, ::2, ::2])
    assert torch.equal(chroma[0, 8], yuv[0, 2, ::2, ::2])


@pytest.mark.parametrize("height,width", [(64, 64), (100, 37), (130, 200), (17, 300)])
def test_exported_shapes(embedder, height, width):
    rng = np.random.default_rng(height)
    tensors, sizes = embedder.exported([random_image(rng, height, width)])
    padded_h, padded_w = colour.padded_size(height, width)
    assert padded_h % 64 == 0 and padded_w % 64 == 0
    for branch, channels in (("luma", 160), ("chroma", 96)):
        assert tensors[f"y_hat_{branch}"].shape == (1, channels, padded_h // 16, padded_w // 16)
        assert tensors[f"z_hat_{branch}"].shape == (1, channels, padded_h // 64, padded_w // 64)
        assert tensors[f"psi_{branch}"].shape == (1, 4 * channels, padded_h // 32, padded_w // 32)
        quant = tensors[f"residual_quant_{branch}"]
        assert torch.equal(quant, quant.round())
        assert torch.equal(tensors[f"z_hat_{branch}"], tensors[f"z_hat_{branch}"].round())
        assert torch.allclose(tensors[f"y_hat_{branch}"],
                              tensors[f"residual_{branch}"] + tensors[f"mu_{branch}"])
    vectors = embedder.embed([random_image(rng, height, width)])
    assert set(vectors) == set(ALL_COLUMNS)
    assert vectors["y_hat_luma"].shape == (1, 160) and vectors["psi_chroma"].shape == (1, 384)
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in vectors.values())


def test_pooling_ignores_padding():
    tensor = torch.zeros(2, 3, 4, 4)
    tensor[:, :, :2, :3] = 1.0  # valid area of both items
    tensor[1, :, 2:, :] = 100.0  # padding garbage in item 1 only
    pooled = pooling.pool(tensor, [(2, 3), (2, 3)], "gap")
    assert torch.allclose(pooled, torch.ones(2, 3))
    tensor[0, 0, 0, 0] = 3.0
    with_std = pooling.pool(tensor, [(2, 3), (2, 3)], "gap+std")
    assert with_std.shape == (2, 6)
    expected = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]).view(2, 6)
    expected[0, 0] = (3 + 5) / 6
    expected[0, 3] = np.std([3, 1, 1, 1, 1, 1])
    expected[:, 4:] = 0
    expected[1, 3:] = 0
    assert torch.allclose(with_std, expected, atol=1e-6)


def test_batched_equals_one_by_one(embedder):
    rng = np.random.default_rng(7)
    images = [random_image(rng, h, w) for h, w in [(64, 64), (100, 120), (64, 64), (130, 64),
                                                   (100, 120), (70, 70)]]
    together = embedder.embed(images)
    for index, image in enumerate(images):
        alone = embedder.embed([image])
        for column, values in alone.items():
            np.testing.assert_allclose(together[column][index], values[0], atol=1e-5, rtol=1e-5)


def test_feature_sets_and_dims():
    assert layout.column_dims("2lat", "gap") == {"y_hat_luma": 160, "y_hat_chroma": 96}
    assert sum(layout.column_dims("2lat", "gap").values()) == 256
    assert len(layout.feature_columns("selected")) == 6
    assert len(layout.feature_columns("all")) == 2 * len(TENSORS)
    assert layout.column_dims("2lat", "gap+std")["y_hat_luma"] == 320
    with pytest.raises(ValueError, match="unknown feature set"):
        layout.feature_columns("3lat")


def test_weights_save_load_roundtrip_and_checksum(tmp_path):
    model = weights.untrained(seed=3)
    path = tmp_path / "codec.pt"
    digest = weights.save(model, path, {"note": "test"})
    loaded, loaded_digest, meta = weights.load(path)
    assert loaded_digest == digest and meta == {"note": "test"}
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = model.half().float().eval().export(x)["y_hat_luma"]
        assert torch.allclose(loaded.export(x)["y_hat_luma"], expected, atol=1e-4)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(weights.WeightsError, match="checksum mismatch"):
        weights.load(path)
    (tmp_path / "codec.json").unlink()
    with pytest.raises(weights.WeightsError, match="no checksum file"):
        weights.load(path)


def test_reference_names_roundtrip():
    source, target = weights.untrained(seed=1), weights.untrained(seed=2)
    checkpoint = {f"model_y.encoder.{k}": v for k, v in source.luma_analysis.state_dict().items()}
    checkpoint.update({f"model_uv.encoder.{k}": v for k, v in source.chroma_analysis.state_dict().items()})
    buffer = io.BytesIO()
    torch.save({"state_dict": checkpoint}, buffer)
    path_bytes = buffer.getvalue()
    report = weights.load_reference(target, torch.load(io.BytesIO(path_bytes), weights_only=True),
                                    luma_prefix="model_y.encoder.", chroma_prefix="model_uv.encoder.")
    assert report.ok and not report.unexpected
    assert "model_y.encoder.act1.conv2.weight" in report.loaded
    x = torch.rand(1, 1, 64, 64) * 255
    with torch.no_grad():
        assert torch.equal(source.luma_analysis(x), target.luma_analysis(x))
        chroma = torch.rand(1, 12, 32, 32) * 255
        assert torch.equal(source.chroma_analysis(chroma), target.chroma_analysis(chroma))


def test_reference_loader_reports_problems():
    model = weights.untrained()
    before = model.luma_analysis.conv1.weight.clone()
    bad = {f"enc.{k}": v for k, v in model.luma_analysis.state_dict().items() if k != "conv5.weight"}
    bad["enc.conv1.weight"] = torch.zeros(64, 1, 3, 3)
    bad["enc.extra.weight"] = torch.zeros(1)
    with pytest.raises(weights.WeightsError) as caught:
        weights.load_reference(model, bad, luma_prefix="enc.")
    message = str(caught.value)
    assert "missing: enc.conv5.weight" in message and "mismatched: enc.conv1.weight" in message
    assert "unexpected: enc.extra.weight" in message
    assert torch.equal(model.luma_analysis.conv1.weight, before)  # nothing half-loaded


def tensor_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def test_reference_latents_concatenated_y_hat():
    y_hat = torch.randn(1, 256, 5, 7)
    out = reference.read(tensor_bytes(y_hat))
    assert torch.equal(out["y_hat_luma"], y_hat[:, :160]) and torch.equal(out["y_hat_chroma"], y_hat[:, 160:])


def test_reference_latents_decision_dict_derives_mu():
    luma = {"y_hat": torch.randn(1, 160, 4, 4), "residual": torch.randn(1, 160, 4, 4),
            "z_hat": torch.randn(1, 160, 1, 1), "psi": torch.randn(1, 640, 2, 2)}
    chroma = {"y_hat": torch.randn(1, 96, 4, 4), "residual": torch.randn(1, 96, 4, 4)}
    out = reference.read(tensor_bytes({"model_y": luma, "model_uv": chroma}))
    assert torch.allclose(out["mu_luma"], luma["y_hat"] - luma["residual"])
    assert {"y_hat_luma", "residual_luma", "z_hat_luma", "psi_luma", "mu_chroma"} <= set(out)


class Payload:
    """A pickled object: must never be executed by the reader."""

    def __reduce__(self):
        return (exec, ("raise SystemExit('executed')",))


@pytest.mark.parametrize("obj,message", [
    (torch.randn(1, 100, 4, 4), "100 channels"),
    (torch.randn(256), "shape"),
    ({"model_y": {"y_hat": torch.randn(1, 96, 2, 2)}}, "expected 160"),
    ({"model_y": [1, 2]}, "expected a dict"),
    ({"other": 1}, "neither"),
    ([1, 2, 3], "neither"),
])
def test_reference_latents_refusals(obj, message):
    with pytest.raises(reference.LatentFileError, match=message):
        reference.read(tensor_bytes(obj))


def test_reference_latents_refuse_pickled_objects():
    import pickle

    with pytest.raises(reference.LatentFileError, match="weights_only"):
        reference.read(pickle.dumps(Payload()))
    with pytest.raises(reference.LatentFileError):
        reference.read(b"not a torch file at all")


def test_shipped_default_weights_are_verified_and_beat_untrained():
    """The default checkpoint ships with the package, is verified, and beats the untrained network
    on a held-out photo (a real evaluation here, not the numbers recorded at training time)."""
    from latentsweep_lab.training import codec as train

    record = json.loads(weights.sidecar(weights.DEFAULT_WEIGHTS).read_text())
    model, digest, meta = weights.load()
    assert digest == record["sha256"] and meta["trained"] and meta["not_reference_weights"]
    cpu = torch.device("cpu")
    trained = train.evaluate(model, ["clock"], cpu)
    baseline = train.evaluate(weights.untrained().eval(), ["clock"], cpu)
    assert trained["psnr_db"] > baseline["psnr_db"] + 5
    assert trained["bpp"] < baseline["bpp"] * 1.5
