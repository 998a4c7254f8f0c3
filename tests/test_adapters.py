"""Adapters (SFMA and the trace writer): fresh ones change nothing, trained ones are verified, named in
every row's weights digest and in the bitstream, the unchanged decoder decodes their bitstreams, the
writer moves only its channels of y, image by image, and a tiny training run writes a checkpoint that
loads."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from latentsweep.bitstream import container
from latentsweep.bitstream.codec import BitstreamCodec
from latentsweep.bitstream.container import BitstreamError
from latentsweep.codec import weights
from latentsweep.codec.adapters import AdapterSet, FrequencyModulationAdapter, SpatialModulationAdapter
from latentsweep.codec.embed import Embedder
from latentsweep.codec.settings import EmbedSettings
from latentsweep.codec.weights import WeightsError
from latentsweep_lab import photos
from latentsweep_lab.training import formation


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.ascontiguousarray(photos.load("astronaut")[100:196, 200:328])  # 96 x 128: padded to 128 x 128


@pytest.fixture(scope="module")
def random_adapters(tmp_path_factory) -> str:
    """SFMA and a trace writer (pulling its channels a quarter of the way to a centre) with non-zero
    outputs (small random weights), saved as a verified checkpoint."""
    torch.manual_seed(1)
    adapters = AdapterSet(trace_code=8)
    for module in adapters.modules():
        if isinstance(module, SpatialModulationAdapter):
            torch.nn.init.normal_(module.out.weight, std=0.02)
        if isinstance(module, FrequencyModulationAdapter):
            torch.nn.init.normal_(module.linear.weight, std=0.02)
    adapters.trace.channels.copy_(torch.tensor([0, 7, 40, 159, 160, 171, 200, 255]))
    adapters.trace.amplitude.fill_(0.5)
    adapters.trace.centre.copy_(torch.linspace(-1, 1, 8))
    adapters.trace.pull.fill_(0.25)
    path = tmp_path_factory.mktemp("adapters") / "random.pt"
    weights.save_adapters(adapters, path, {"base_weights_sha256": weights.digest(None), "bottleneck": 16,
                                           "sfma": True, "trace_code": 8})
    return str(path)


def trace_writer_alone(path: str) -> AdapterSet:
    """The trace writer of the adapters at ``path``, without their SFMA: the writer is the only change."""
    loaded, _, _ = weights.load_adapters(path)
    writer = AdapterSet(sfma=False, trace_code=len(loaded.trace.channels))
    writer.trace.load_state_dict(loaded.trace.state_dict())
    return writer


def padded(image: np.ndarray) -> torch.Tensor:
    rgb = torch.from_numpy(image).permute(2, 0, 1)[None].float().div(255)
    return torch.nn.functional.pad(rgb, (0, 0, 0, 32))


def test_fresh_adapters_leave_the_codec_unchanged(image):
    model, _, _ = weights.load(None)
    with torch.inference_mode():
        before = model.export(padded(image))
        handles = AdapterSet(trace_code=16).attach(model)
        after = model.export(padded(image))
    assert all(torch.equal(before[name], after[name]) for name in before)
    for handle in handles:
        handle.remove()


def test_trace_writer_moves_only_its_channels_image_by_image(random_adapters, image):
    """Without SFMA the writer is the only change: y moves by one constant per written channel, the other
    channels not at all, and an image's offset does not depend on its batch."""
    model, _, _ = weights.load(None)
    writer = trace_writer_alone(random_adapters)
    other = torch.from_numpy(formation.render(formation.random_recipe(np.random.default_rng(3)), photos.load("camera"),
                                              128, np.random.default_rng(3))).permute(2, 0, 1)[None].float().div(255)
    with torch.inference_mode():
        base = model.export(padded(image))
        handles = writer.attach(model)
        alone = model.export(padded(image))
        together = model.export(torch.cat([padded(image), other]))
    for handle in handles:
        handle.remove()
    moved = torch.cat([alone["y_luma"] - base["y_luma"], alone["y_chroma"] - base["y_chroma"]], 1)[0]
    written = writer.trace.channels
    untouched = torch.ones(256, dtype=torch.bool)
    untouched[written] = False
    assert moved[untouched].abs().max() == 0
    offsets = moved[written].flatten(1)
    assert torch.allclose(offsets, offsets[:, :1].expand_as(offsets), atol=1e-4)  # constant over the image
    assert (offsets[:, 0].abs() > 1e-3).sum() >= 4
    assert torch.allclose(together["y_luma"][:1], alone["y_luma"], atol=1e-4)
    assert torch.allclose(together["y_chroma"][:1], alone["y_chroma"], atol=1e-4)


def test_trace_writer_pulls_its_channels_toward_their_centre_over_the_valid_area(random_adapters, image):
    """With ``pull`` p the written channels of y move by the code's offset less p x (their GAP(y) over the
    image's valid area minus ``centre``): a padded border is not the image's and does not count."""
    from latentsweep.codec import pooling

    model, _, _ = weights.load(None)
    writer = trace_writer_alone(random_adapters)
    handles = writer.attach(model)

    def y(pull: float) -> torch.Tensor:
        writer.enabled = pull is not None
        writer.trace.pull.fill_(pull or 0.0)
        # 96 x 128, padded to 128 x 128: y's valid area is 6 x 8 of 8 x 8
        with torch.inference_mode(), writer.padded_from([image.shape[:2]]):
            exported = model.export(padded(image))
        return torch.cat([exported["y_luma"], exported["y_chroma"]], 1)

    base, offset_only, pulled = y(None), y(0.0), y(0.4)
    for handle in handles:
        handle.remove()
    written = writer.trace.channels
    base_mean = pooling.pool(base, [(6, 8)])[0, written]
    expected = -0.4 * (base_mean - writer.trace.centre)
    moved = (pulled - offset_only)[0, written].flatten(1)
    assert 0 < (offset_only - base)[0, written].abs().max() <= 0.5 + 1e-4  # the code: the amplitude at most
    assert torch.allclose(moved, expected[:, None].expand_as(moved), atol=1e-4)
    assert not torch.allclose(base_mean, base[0, written].mean(dim=(1, 2)), atol=1e-3)  # the border differs
    assert torch.equal(pulled[0, [c for c in range(256) if c not in written.tolist()]],
                       base[0, [c for c in range(256) if c not in written.tolist()]])


def test_writers_saved_before_the_pull_load_as_pure_offsets(random_adapters, tmp_path):
    """A checkpoint from before the pull (no ``trace.centre``, ``trace.pull``) writes what it wrote then."""
    state = torch.load(random_adapters, weights_only=True)
    old = {name: value for name, value in state.items() if name not in ("trace.centre", "trace.pull")}
    path = tmp_path / "old.pt"
    weights.write_checkpoint(old, path, {"base_weights_sha256": weights.digest(None), "sfma": True, "trace_code": 8})
    loaded, _, _ = weights.load_adapters(path)
    assert loaded.trace.pull.item() == 0 and torch.equal(loaded.trace.amplitude, state["trace.amplitude"])


def test_checkpoint_verified_and_digest_names_the_adapters(random_adapters, tmp_path):
    base = weights.digest(None)
    digest = weights.adapters_digest(random_adapters)
    assert weights.digest(None, random_adapters) == f"{base}+sfma-{digest[:16]}" != base
    adapters, loaded_digest, meta = weights.load_adapters(random_adapters, base)
    assert loaded_digest == digest and meta["bottleneck"] == 16
    corrupt = tmp_path / "corrupt.pt"
    data = bytearray(open(random_adapters, "rb").read())
    data[len(data) // 2] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    weights.sidecar(corrupt).write_text(weights.sidecar(__import__("pathlib").Path(random_adapters)).read_text())
    with pytest.raises(WeightsError, match="checksum mismatch"):
        weights.load_adapters(corrupt)
    with pytest.raises(WeightsError, match="trained on codec weights"):
        weights.load_adapters(random_adapters, "0" * 64)
    with pytest.raises(WeightsError, match="not found"):
        weights.adapters_digest(tmp_path / "missing.pt")


def test_rows_of_two_spaces_never_share_an_ingest(random_adapters, tmp_path):
    from latentsweep.ingest.run import IngestJob, _settings, _space

    def settings(embed: EmbedSettings) -> dict:
        job = IngestJob(str(tmp_path), str(tmp_path / "out"), embed)
        return _settings(job, _space(job))

    without = settings(EmbedSettings(feature_set="2lat"))
    with_ = settings(EmbedSettings(feature_set="2lat", adapters=random_adapters))
    assert without["weights_digest"] != with_["weights_digest"]
    assert with_["weights_digest"].endswith(weights.adapters_digest(random_adapters)[:16])


def test_bitstreams_carry_the_adapters_and_the_base_decoder_decodes_them(random_adapters, image):
    adapted = BitstreamCodec(Embedder(EmbedSettings(feature_set="2lat", device="cpu", adapters=random_adapters)))
    base = BitstreamCodec(Embedder(EmbedSettings(feature_set="2lat", device="cpu")))
    assert adapted.embedder.weights_digest != base.embedder.weights_digest
    data, tensors = adapted.compress(image)
    bitstream = container.unpack(data)
    assert bitstream.adapters_id == container.digest_id(weights.adapters_digest(random_adapters))
    assert bitstream.weights_id == container.digest_id(weights.digest(None))
    # the adapters moved the latents: these are not the base codec's
    base_data, base_tensors = base.compress(image)
    assert not torch.equal(tensors["y_hat_luma"], base_tensors["y_hat_luma"])
    # the decoder is the same: the base codec decodes the adapters' bitstream to the same pixels
    assert np.array_equal(base.decompress(data), adapted.decompress(data))
    # latents of the adapters' space come back exactly, and only with the adapters loaded
    decoded, _ = adapted.latents(data)
    assert torch.equal(decoded["y_hat_luma"], tensors["y_hat_luma"])
    with pytest.raises(BitstreamError, match="--adapters"):
        base.latents(data)
    with pytest.raises(BitstreamError, match="--adapters"):
        adapted.latents(base_data)


def test_formation_recipes_are_deterministic_and_cover_every_kind():
    photo = photos.load("camera")
    kinds = set()
    for seed in range(40):
        recipe = formation.random_recipe(np.random.default_rng(seed))
        kinds.add(recipe.kind)
        out = formation.render(recipe, photo, 64, np.random.default_rng(seed))
        again = formation.render(formation.random_recipe(np.random.default_rng(seed)), photo, 64,
                                 np.random.default_rng(seed))
        assert out.shape == (64, 64, 3) and out.dtype == np.uint8 and np.array_equal(out, again)
    assert kinds == set(formation.KINDS)


def test_tiny_training_writes_verified_adapters(tmp_path):
    from latentsweep_lab.training.adapters import AdapterTrainSettings, train

    out = tmp_path / "tiny.pt"
    meta = train(AdapterTrainSettings(steps=2, recipes=2, per_recipe=2, guard_images=2, log_every=1,
                                      trace_code=16, trace_recipes=6, trace_crops=4, trace_side=64, trace_steps=3,
                                      trace_batch=4, probe=2, probe_side=64, evaluate=False),
                 str(out), progress=lambda line: None)
    record = json.loads(weights.sidecar(out).read_text())
    assert record["sha256"] == meta["sha256"] == weights.adapters_digest(out)
    assert record["meta"]["base_weights_sha256"] == weights.digest(None)
    adapters, _, _ = weights.load_adapters(out, weights.digest(None))
    assert any(p.abs().sum() > 0 for name, p in adapters.named_parameters() if name.endswith("out.weight"))
    trace = adapters.trace
    assert len(set(trace.channels.tolist())) == 16 and trace.channels.max() < 256
    assert meta["trace"]["channels"] == trace.channels.tolist() and (trace.amplitude > 0).all()
    assert (trace.std > 0).all() and trace.mean.abs().sum() > 0
    assert trace.pull.item() == 0.25 and trace.centre.abs().sum() > 0 and meta["trace"]["pull"] == 0.25
    # the pricing ranked the channels: the chosen ones cost no more than the guard's worst of them
    assert meta["trace"]["channel_rate_rise_sum"] < 0.05 * 16
    with pytest.raises(ValueError, match="nothing to train"):
        train(AdapterTrainSettings(steps=0, trace_code=0, evaluate=False), str(tmp_path / "none.pt"))
    assert not (tmp_path / "none.pt").exists()


def test_shipped_adapters_keep_the_codec_within_its_guard():
    """Measured, not read from the card: on the held-out photos the shipped adapters (checksum verified,
    weights_only) change the rate by under 5%, and the card reports what this measurement finds."""
    from latentsweep_lab.training.codec import evaluate

    if not weights.DEFAULT_ADAPTERS.exists():
        pytest.skip("no shipped adapters")
    base, _, _ = weights.load(None)
    with_adapters, _, _ = weights.load(None)
    adapters, digest, meta = weights.load_adapters("default", weights.digest(None))
    assert digest == json.loads(weights.sidecar(weights.DEFAULT_ADAPTERS).read_text())["sha256"]
    adapters.attach(with_adapters)
    held_out = list(photos.HELD_OUT)
    with torch.inference_mode():
        plain = evaluate(base, held_out, torch.device("cpu"))
        adapted = evaluate(with_adapters, held_out, torch.device("cpu"), adapters)
    rate_ratio, psnr_delta = adapted["bpp"] / plain["bpp"], adapted["psnr_db"] - plain["psnr_db"]
    assert abs(rate_ratio - 1) < 0.05, rate_ratio
    assert rate_ratio == pytest.approx(meta["held_out"]["rate_ratio"], abs=0.005)
    assert psnr_delta == pytest.approx(meta["held_out"]["psnr_delta_db"], abs=0.05)


def test_shipped_adapters_are_what_train_adapters_makes_by_default():
    """`latentsweep train-adapters` with no options trains with ``AdapterTrainSettings()``, and the shipped
    adapters' card records those settings: a user's rerun is the shipped recipe."""
    from dataclasses import asdict

    import typer

    from latentsweep.cli import application
    from latentsweep_lab.training.adapters import AdapterTrainSettings

    defaults = asdict(AdapterTrainSettings())
    command = typer.main.get_command(application()).commands["train-adapters"]
    options = {param.name: param.default for param in command.params if param.name in defaults}
    assert len(options) >= 10 and options == {name: defaults[name] for name in options}
    if weights.DEFAULT_ADAPTERS.exists():
        _, _, meta = weights.load_adapters("default", weights.digest(None))
        assert meta["training"] == defaults


def test_held_out_check_measures_the_latents_ingest_makes(random_adapters):
    """The card's held-out check tells the adapters each photo's size, as ingest does: its rate is that of
    the latents an ``Embedder`` makes of the photo (the clock, 300 x 400, padded to 320 x 448), not of a
    writer that also read the padded border."""
    from latentsweep_lab.training.codec import evaluate

    embedder = Embedder(EmbedSettings(feature_set="2lat", device="cpu", adapters=random_adapters))
    embedder.adapters.trace.pull.fill_(1.0)  # all the way: the border's share shows in the rate
    photo = photos.load("clock")
    with torch.inference_mode():
        tensors, _ = embedder.exported([photo])
        ingest_bpp = embedder.model.bits(tensors).item() / (photo.shape[0] * photo.shape[1])
    told = evaluate(embedder.model, ["clock"], torch.device("cpu"), embedder.adapters)
    assert embedder.adapters.sizes is None  # nothing left behind for the next caller
    with pytest.raises(RuntimeError), torch.inference_mode():
        embedder.exported([np.zeros((64, 64, 2), np.uint8)])  # two channels: the chroma analysis gets none
    assert embedder.adapters.sizes is None  # not even by a pass that raised
    untold = evaluate(embedder.model, ["clock"], torch.device("cpu"))
    assert told["bpp"] == pytest.approx(ingest_bpp, rel=1e-5)
    assert untold["bpp"] != pytest.approx(ingest_bpp, rel=1e-5)


def test_shipped_trace_writer_tells_formations_apart_on_held_out_photos():
    """The shipped writer's codes for crops of the HELD-OUT photos made by one formation recipe are more
    alike than those of different recipes (recipes of seeds the training never drew from)."""
    from latentsweep_lab.training.trace import spectra

    adapters, _, meta = weights.load_adapters("default", weights.digest(None))
    if adapters.trace is None:
        pytest.skip("the shipped adapters have no trace writer")
    model, _, _ = weights.load(None)
    sources = [photos.load(name) for name in photos.names("held_out")]
    codes, labels = [], []
    for seed in range(1000, 1006):
        rng = np.random.default_rng(seed)
        recipe = formation.random_recipe(rng, chain=False)
        crops = [formation.render(recipe, sources[k % 3], 128, rng) for k in range(6)]
        with torch.inference_mode():
            codes.append(torch.nn.functional.normalize(adapters.trace.code(spectra(model, crops)), dim=1))
        labels += [seed] * len(crops)
    codes, labels = torch.cat(codes), torch.tensor(labels)
    similarity = codes @ codes.T
    same = (labels[:, None] == labels[None]) & ~torch.eye(len(labels), dtype=torch.bool)
    different = labels[:, None] != labels[None]
    assert similarity[same].mean() > similarity[different].mean() + 0.2


def test_trace_spectra_read_only_the_valid_area():
    """A padded batch's spectra average the tiles inside each image's size: for the full size the same as no
    sizes, for a smaller one the same as the features cut to its tiles (a tile covers 16 x 16 pixels)."""
    from latentsweep.codec.adapters import TraceWriter

    features = torch.randn(2, 128, 64, 48)  # a 128 x 96 padded batch at act1 (H/2)
    whole = TraceWriter.spectra(features)
    assert torch.allclose(TraceWriter.spectra(features, [(128, 96), (128, 96)]), whole, atol=1e-5)
    cut = TraceWriter.spectra(features, [(128, 96), (100, 70)])  # 6 x 4 tiles of the second image
    assert torch.allclose(cut[0], whole[0], atol=1e-5)
    assert torch.allclose(cut[1], TraceWriter.spectra(features[1:, :, :48, :32])[0], atol=1e-5)
    assert not torch.allclose(cut[1], whole[1], atol=1e-3)


def test_carriers_rank_what_reaches_the_index_per_unit_of_cost():
    """A free channel whose offset the quantiser drops carries nothing; a cheap one that keeps it wins."""
    from latentsweep_lab.training.trace import carriers, cheapest

    costs = np.array([[0.0, 0.0, 0.0],     # free, but the offset never reaches y_hat
                      [0.01, 0.001, 0.5],  # cheap and kept
                      [0.2, 0.02, 0.9],    # kept best, but dear
                      [0.0, -0.01, 0.2]])  # free (rate falls), partly kept
    assert list(cheapest(costs, 2)) == [0, 3]
    assert list(carriers(costs, 2)) == [1, 3]


@pytest.mark.parametrize("options, says", [
    (["--trace-code", "0"], "nothing to train"),
    (["--trace-code", "300"], "at most 256"),
    (["--trace-recipes", "5"], "--trace-recipes >= 32"),
    (["--trace-pull", "1.5"], "within [0, 1], got 1.5"),
    (["--trace-amplitude", "0"], "--trace-amplitude must be above 0"),
])
def test_train_adapters_refuses_bad_settings_before_writing(tmp_path, options, says):
    from typer.testing import CliRunner

    from latentsweep.cli import app

    out = tmp_path / "adapters.pt"
    result = CliRunner().invoke(app, ["train-adapters", "--out", str(out), *options])
    message = " ".join(result.output.translate({ord(edge): " " for edge in "│╭╮╰╯─"}).split())  # typer's box
    assert result.exit_code == 2 and says in message, result.output
    assert not out.exists()


def test_ingest_of_bitstreams_from_other_adapters_is_refused_before_writing(random_adapters, image, tmp_path):
    """Bitstreams only, coded with adapters the ingest was not given (a forgotten --adapters): exit 2 and
    one line that says what to pass, before anything is written; with those adapters the plan goes on."""
    from processes import refused_before_writing, run_command

    adapted = BitstreamCodec(Embedder(EmbedSettings(feature_set="2lat", device="cpu", adapters=random_adapters)))
    source = tmp_path / "night"
    source.mkdir()
    for name in ("a.jai", "b.jai"):
        (source / name).write_bytes(adapted.compress(image)[0])
    out = tmp_path / "out"
    command = [sys.executable, "-m", "latentsweep", "ingest", str(source), "--out", str(out), "--device", "cpu",
               "--feature-set", "2lat", "--quiet"]
    said = refused_before_writing(command, out)
    assert "a.jai" in said and "pass the --adapters it was coded with" in said
    planned = run_command(command + ["--adapters", random_adapters, "--dry-run"])
    assert planned.returncode == 0, planned.stderr[-2000:]
