"""SFMA adapters: fresh ones change nothing, trained ones are verified, named in every row's weights
digest and in the bitstream, the unchanged decoder decodes their bitstreams, decoder adapters change the
decoded pixels and nothing before them, a set without the part a command runs is refused, a trace
writer's checkpoint is refused, and tiny training runs of both stages write checkpoints that load."""

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
from latentsweep.codec.adapters import AdapterSet
from latentsweep.codec.embed import Embedder
from latentsweep.codec.settings import EmbedSettings
from latentsweep.codec.weights import WeightsError
from latentsweep_lab import photos
from latentsweep_lab.training import formation


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.ascontiguousarray(photos.load("astronaut")[100:196, 200:328])  # 96 x 128: padded to 128 x 128


def padded(image: np.ndarray) -> torch.Tensor:
    rgb = torch.from_numpy(image).permute(2, 0, 1)[None].float().div(255)
    return torch.nn.functional.pad(rgb, (0, 0, 0, 32))


def test_fresh_adapters_leave_the_codec_unchanged(image):
    model, _, _ = weights.load(None)
    with torch.inference_mode():
        before = model.export(padded(image))
        handles = AdapterSet().attach(model)
        after = model.export(padded(image))
    assert all(torch.equal(before[name], after[name]) for name in before)
    for handle in handles:
        handle.remove()


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
    with pytest.raises(WeightsError, match="not found"):
        weights.adapters_digest("default")  # nothing ships under that name any more


def test_a_trace_writer_checkpoint_is_refused_saying_what_replaced_it(random_adapters, tmp_path):
    """A card that says ``sfma: false`` or names a trace writer is no SFMA: its digest would claim ``+sfma-``."""
    state = torch.load(random_adapters, weights_only=True)
    for name, card in (("writer", {"sfma": False, "trace_code": 128}), ("both", {"sfma": True, "trace_code": 8})):
        path = tmp_path / f"{name}.pt"
        weights.write_checkpoint(state, path, {"base_weights_sha256": weights.digest(None), **card})
        for refused in (weights.adapters_digest, weights.load_adapters, lambda spec: weights.digest(None, spec)):
            with pytest.raises(WeightsError, match="trace writer.*forensic field"):
                refused(path)


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


def test_decoder_adapters_change_the_decoded_pixels_and_nothing_before_them(random_decoder_adapters, image):
    """Stage one's parts: the same bitstream, the same latents and rate, other pixels; fresh decoder
    adapters decode exactly as the base decoder."""
    base = BitstreamCodec(Embedder(EmbedSettings(feature_set="2lat", device="cpu")))
    adapted = BitstreamCodec(Embedder(EmbedSettings(feature_set="2lat", device="cpu", adapters=random_decoder_adapters)))
    data, tensors = base.compress(image)
    assert adapted.compress(image)[0] == data  # the encoder, the rate and the file are the base codec's
    assert adapted.adapters_id == b"" and adapted.decoder_digest.startswith(f"{base.weights_digest}+sfma-")
    for name, value in adapted.latents(data)[0].items():
        assert torch.equal(value, base.latents(data)[0][name]), name
    pixels, base_pixels = adapted.decompress(data), base.decompress(data)
    assert pixels.shape == base_pixels.shape == image.shape and not np.array_equal(pixels, base_pixels)
    fresh = BitstreamCodec(Embedder(EmbedSettings(feature_set="2lat", device="cpu")))
    AdapterSet(parts=("decoder",)).attach(fresh.model)
    assert np.array_equal(fresh.decompress(data), base_pixels)


def test_a_set_without_the_part_a_command_runs_is_refused(random_adapters, random_decoder_adapters, tmp_path):
    """Decoder adapters change no latent (ingest, compress, sweep refuse them); encoder adapters change no
    decoded pixel (decompress refuses them): one line, exit 2, nothing written."""
    from processes import refused_before_writing

    with pytest.raises(WeightsError, match="decoder adapters only.*decompress --adapters"):
        weights.digest(None, random_decoder_adapters)
    assert weights.digest(None, random_decoder_adapters, part="decoder").startswith(f"{weights.digest(None)}+sfma-")
    source = tmp_path / "source"
    source.mkdir()
    (source / "a.png").write_bytes(b"not read: the refusal comes first")
    out = tmp_path / "out"
    said = refused_before_writing([sys.executable, "-m", "latentsweep", "ingest", str(source), "--out", str(out),
                                   "--adapters", random_decoder_adapters, "--quiet"], out)
    assert "decompress --adapters" in said
    said = refused_before_writing([sys.executable, "-m", "latentsweep", "decompress", str(source), "--out", str(out),
                                   "--adapters", random_adapters, "--quiet"], out)
    assert "encoder adapters only" in said and "compress, ingest and sweep" in said


def test_both_stages_train_save_and_load_with_their_provenance_at_rate_parity(tmp_path):
    """Stage one (decoder) and stage two (both, started from stage one) on a few small crops: verified
    checkpoints whose cards name their parts and origin; stage two's estimated rate on small crops of
    held-out photos stays within 5% of the base codec's."""
    from latentsweep_lab.training.adapters import AdapterTrainSettings, rate, train

    quiet = lambda line: None  # noqa: E731
    first, second = tmp_path / "stage1.pt", tmp_path / "stage2.pt"
    settings = dict(steps=2, batch_size=2, crops=4, log_every=1, evaluate=False)
    one = train(AdapterTrainSettings(stage="decoder", **settings), str(first), progress=quiet)
    two = train(AdapterTrainSettings(stage="both", init=str(first), **settings), str(second), progress=quiet)
    assert one["parts"] == ["decoder"] and two["parts"] == ["encoder", "decoder"] and two["stage"] == "both"
    assert two["init"] == one["sha256"] == weights.adapters_digest(first, "decoder")
    for path, meta in ((first, one), (second, two)):
        record = json.loads(weights.sidecar(path).read_text())
        assert record["sha256"] == meta["sha256"] and record["meta"]["base_weights_sha256"] == weights.digest(None)
        assert meta["steps_done"] == 2
    adapters, _, _ = weights.load_adapters(second, weights.digest(None))
    assert adapters.parts == ("encoder", "decoder")
    assert any(p.abs().sum() > 0 for name, p in adapters.encoder.named_parameters() if name.endswith("out.weight"))
    # rate parity, measured: held-out photos' 64-pixel crops with and without the trained encoder adapters
    model, _, _ = weights.load(None)
    adapters.attach(model)
    crops = torch.cat([padded(image)[..., :64, :64] for image in
                       (np.ascontiguousarray(photos.load(name)[:64, :64]) for name in photos.names("held_out"))])
    with torch.no_grad():
        adapters.enabled = False
        base = rate(model, model.export(crops), 64 * 64).mean()
        adapters.enabled = True
        adapted = rate(model, model.export(crops), 64 * 64).mean()
    assert abs(adapted / base - 1) <= 0.05, (adapted / base).item()
    with pytest.raises(ValueError, match="nothing to train"):
        train(AdapterTrainSettings(steps=0, evaluate=False), str(tmp_path / "none.pt"))
    with pytest.raises(ValueError, match="unknown stage"):
        train(AdapterTrainSettings(stage="latent", evaluate=False), str(tmp_path / "none.pt"))
    assert not (tmp_path / "none.pt").exists()


def test_train_adapters_options_default_to_the_training_settings():
    """`latentsweep train-adapters` with no options trains with ``AdapterTrainSettings()``: what the docs
    describe as the default run is what a user gets."""
    from dataclasses import asdict

    import typer

    from latentsweep.cli import application
    from latentsweep_lab.training.adapters import AdapterTrainSettings

    defaults = asdict(AdapterTrainSettings())
    command = typer.main.get_command(application()).commands["train-adapters"]
    options = {param.name: param.default for param in command.params if param.name in defaults}
    assert len(options) >= 5 and options == {name: defaults[name] for name in options}


def test_cheapest_channels_rank_by_their_price_against_the_guard():
    """The oracle bound's channels: PSNR drop / 0.5 dB plus rate rise / 5%, a falling rate costing nothing."""
    from latentsweep_lab.training.trace import cheapest

    costs = np.array([[0.0, 0.0, 0.0],     # free
                      [0.01, 0.001, 0.5],  # cheap
                      [0.2, 0.02, 0.9],    # dear
                      [0.0, -0.01, 0.2]])  # free (rate falls)
    assert list(cheapest(costs, 3)) == [0, 3, 1]


@pytest.mark.parametrize("options, says", [
    (["--steps", "0"], "nothing to train"),
    (["--crop", "100"], "multiple of 64"),
    (["--stage", "latent"], "--stage must be one of"),
    (["--init", "stage1.pt"], "--init starts stage two"),
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


def test_the_experiments_round_trip_codes_real_files_and_decodes_with_the_adapters(random_decoder_adapters, tmp_path):
    """The SFMA table's round trip: labels kept, the bits per pixel of real files, decoder adapters in the
    decoded pixels only (same bytes, other pixels), and a rerun reads what it wrote."""
    from PIL import Image

    from latentsweep_lab.experiment.common import manifest_rows, write_manifest
    from latentsweep_lab.experiment.sfma import round_trip

    source = tmp_path / "queries"
    (source / "real").mkdir(parents=True)
    rows = []
    for number, name in enumerate(photos.names("held_out")[:2]):
        Image.fromarray(np.ascontiguousarray(photos.load(name)[:64, :96])).save(source / "real" / f"{number}.png")
        rows.append({"uri": f"real/{number}.png", "label": "real", "family": "real"})
    write_manifest(source, rows)
    base = round_trip(source, tmp_path / "codec", None)
    adapted = round_trip(source, tmp_path / "stage-one", random_decoder_adapters)
    assert [r["label"] for r in manifest_rows(tmp_path / "stage-one")] == ["real", "real"]
    assert adapted["bpp"] == base["bpp"] > 0 and 20 < base["psnr_db"] < 60 and adapted["psnr_db"] != base["psnr_db"]
    first = [np.asarray(Image.open(tmp_path / folder / "real" / "0.png")) for folder in ("codec", "stage-one")]
    assert first[0].shape == (64, 96, 3) and not np.array_equal(*first)
    assert round_trip(source, tmp_path / "stage-one", random_decoder_adapters) == adapted
