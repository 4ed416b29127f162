"""Linear CKA (full and minibatch estimators), activation capture, and `cka` / `cka-time`."""

from __future__ import annotations

import itertools
import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close
from typer.testing import CliRunner

from mgtool.analysis.activations import (
    ChannelBlock,
    LayerTap,
    default_layers,
    glob_to_regex,
    growth_factor,
)
from mgtool.analysis.checkpoints import EpochCheckpoint
from mgtool.analysis.cka import (
    MinibatchCKA,
    gram,
    linear_cka,
    minibatch_linear_cka,
    unbiased_hsic,
)
from mgtool.analysis.estimators import ESTIMATORS, make_estimator
from mgtool.analysis.plot import matplotlib_available, plot_heatmap
from mgtool.analysis.results import CkaSide, Estimate, LayerCka, TimeCka
from mgtool.analysis.similarity import EvalSettings
from mgtool.archs import ArchSpec, build_plain, resolve_spec
from mgtool.checkpoint import CheckpointMeta, save_checkpoint
from mgtool.cli import app
from mgtool.data import DataConfig
from mgtool.errors import MgtoolError, SettingError
from mgtool.loading import load_checkpoint
from mgtool.provenance import new_provenance
from mgtool.templates import fresh_template_mixing
from mgtool.train.paths import run_paths

runner = CliRunner()
HAVE_MPL = matplotlib_available()
F64 = torch.float64
DATA = ["--data", "synthetic", "--data-opt", "shape=3x8x8", "--samples", "64", "--batch-size", "32"]


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _orthogonal(d: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(_randn(d, d, seed=seed))
    return q


# ---------------------------------------------------------------------------------------
# The maths


@pytest.mark.parametrize("shape", [(64, 10), (48, 3, 4, 4)])
def test_cka_of_a_representation_with_itself_is_one(shape):
    x = _randn(*shape, seed=0)
    assert_close(linear_cka(x, x), 1.0, rtol=0, atol=1e-12)
    assert_close(minibatch_linear_cka(x, x, batch_size=16), 1.0, rtol=0, atol=1e-12)


@pytest.mark.parametrize("estimator", ["full", "minibatch"])
def test_invariant_to_orthogonal_transforms_and_isotropic_scaling(estimator):
    def cka(a, b):
        return linear_cka(a, b) if estimator == "full" else minibatch_linear_cka(a, b, 32)

    x = _randn(128, 12, seed=1)
    y = torch.relu(x @ _randn(12, 20, seed=2)) + 0.5 * _randn(128, 20, seed=3)
    reference = cka(x, y)
    assert 0.05 < reference < 0.95  # a value the transforms could visibly move
    q = _orthogonal(12, seed=4)
    assert_close(cka(x @ q, y), reference, rtol=1e-10, atol=0)
    assert_close(cka(3.7 * x, 0.01 * y), reference, rtol=1e-10, atol=0)
    assert_close(cka(x @ q * 25.0, y @ _orthogonal(20, seed=5)), reference, rtol=1e-10, atol=0)
    # Not invariant to anisotropic scaling: the checks above are not vacuous.
    stretch = torch.ones(12, dtype=F64)
    stretch[:3] = 10.0
    assert abs(cka(x * stretch, y) - reference) > 1e-3


def test_known_values_on_hand_built_matrices():
    # One feature each: linear CKA is the squared Pearson correlation.
    # Centred x = (-1.5, -0.5, 0.5, 1.5), y = (-1.5, 0.5, -0.5, 1.5): x.y = 4, |x|^2 = |y|^2 = 5.
    x = torch.tensor([[1.0], [2.0], [3.0], [4.0]], dtype=F64)
    y = torch.tensor([[1.0], [3.0], [2.0], [4.0]], dtype=F64)
    assert_close(linear_cka(x, y), (4 / 5) ** 2, rtol=1e-12, atol=0)

    # Two features: X is centred with X^T X = 2 I; Y = X diag(1, 2).
    # ||Y^T X||_F^2 = |diag(2, 4)|^2 = 20, ||X^T X||_F = sqrt(8), ||Y^T Y||_F = |diag(2, 8)| = sqrt(68)
    # so CKA = 20 / sqrt(8 * 68) = 5 / sqrt(34).
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]], dtype=F64)
    y = x @ torch.diag(torch.tensor([1.0, 2.0], dtype=F64))
    assert_close(linear_cka(x, y), 5 / math.sqrt(34), rtol=1e-12, atol=0)
    # Same samples, shifted by a constant: centring removes it.
    assert_close(linear_cka(x + 7.0, y - 3.0), 5 / math.sqrt(34), rtol=1e-12, atol=0)


@pytest.mark.parametrize("n", [20, 60])
def test_gram_path_and_feature_path_agree(n):
    # n = 20 < d takes the Gram path inside linear_cka, n = 60 > d the feature path;
    # each is checked against the other formula written out here.
    x = _randn(n, 30, seed=6)
    y = torch.tanh(x[:, :25] @ _randn(25, 25, seed=7)) + 0.3 * _randn(n, 25, seed=8)
    xc, yc = x - x.mean(0), y - y.mean(0)
    if n < 25:
        expected = (yc.T @ xc).square().sum() / ((xc.T @ xc).norm() * (yc.T @ yc).norm())
    else:
        k, l_ = xc @ xc.T, yc @ yc.T
        expected = (k * l_).sum() / torch.sqrt((k * k).sum() * (l_ * l_).sum())
    assert_close(linear_cka(x, y), float(expected), rtol=1e-10, atol=0)


def test_unbiased_hsic_is_the_u_statistic_of_song_et_al():
    # Song et al. (2012): HSIC_1 = 1/(n)_4 * sum over distinct (i, j, q, r) of
    # k_ij l_ij + k_ij l_qr - 2 k_ij l_iq. Checked against the closed form by brute force.
    n = 7
    x, y = _randn(n, 3, seed=10), _randn(n, 4, seed=11)
    k, l_ = x @ x.T, y @ y.T
    total = 0.0
    for i, j, q, r in itertools.permutations(range(n), 4):
        total += float(k[i, j] * l_[i, j] + k[i, j] * l_[q, r] - 2 * k[i, j] * l_[i, q])
    expected = total / (n * (n - 1) * (n - 2) * (n - 3))
    assert_close(unbiased_hsic(k, l_), expected, rtol=1e-10, atol=0)
    # gram() centres the features first, which leaves the unbiased estimator unchanged.
    assert_close(unbiased_hsic(gram(x), gram(y)), expected, rtol=1e-9, atol=0)


def test_accumulator_matrix_matches_pairwise_estimates():
    xs = [_randn(96, d, seed=20 + d) for d in (3, 5, 8)]
    ys = [torch.tanh(xs[0] @ _randn(3, 6, seed=30)), _randn(96, 4, seed=31)]
    acc = MinibatchCKA()
    for start in range(0, 96, 24):
        part = slice(start, start + 24)
        acc.update(torch.stack([gram(x[part]) for x in xs]), torch.stack([gram(y[part]) for y in ys]))
    assert (acc.batches, acc.samples) == (4, 96)
    expected = torch.tensor([[minibatch_linear_cka(x, y, 24) for y in ys] for x in xs], dtype=F64)
    assert_close(acc.compute(), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_minibatch_estimator_agrees_with_the_full_one_on_enough_samples(seed):
    # 4096 samples of low-dimensional features: the full (biased) estimator's bias is
    # O(d / n) and the minibatch estimator's spread a few 1e-3 here; they must agree within 0.01.
    n, d = 4096, 8
    x = _randn(n, d, seed=100 + seed)
    mixing = _randn(d, 8, seed=200 + seed)
    y = torch.relu(x @ mixing + (1.0 + seed) * _randn(n, 8, seed=300 + seed))
    full, mini = linear_cka(x, y), minibatch_linear_cka(x, y, batch_size=512)
    assert 0.1 < full < 0.99
    assert abs(full - mini) <= 0.01, (full, mini)


def test_minibatch_estimator_is_free_of_the_wide_layer_bias():
    # Independent 512-d features, 1024 samples: the population CKA is 0. The biased
    # full estimator reports ~d / (n + d) ~ 0.33; the unbiased minibatch one stays near 0.
    x, y = _randn(1024, 512, seed=40), _randn(1024, 512, seed=41)
    assert linear_cka(x, y) > 0.25
    assert abs(minibatch_linear_cka(x, y, batch_size=128)) < 0.02


def test_constant_representation_gives_nan_not_an_error():
    x = torch.ones(32, 4, dtype=F64)
    y = _randn(32, 4, seed=50)
    assert math.isnan(linear_cka(x, y))
    assert math.isnan(minibatch_linear_cka(x, y, 16))


# ---------------------------------------------------------------------------------------
# Layers and activations


def test_layer_globs():
    blocks = glob_to_regex("stages.*.*")
    assert blocks.match("stages.0.1") and not blocks.match("stages.0.1.conv1")
    assert glob_to_regex("**conv2").match("stages.2.0.conv2")
    assert not glob_to_regex("conv?").match("conv10")


def test_default_layers_per_family():
    wrn = build_plain(resolve_spec(ArchSpec("wrn", 0.5, 10, 3, {"depth": 10, "stem_width": 8})))
    assert default_layers(wrn, "wrn") == ["stem", "stages.0.0", "stages.1.0", "stages.2.0"]
    resnet = build_plain(resolve_spec(ArchSpec("resnet18", 0.0625, 7, 3, {})))
    assert default_layers(resnet, "resnet18") == ["act1"] + [f"layer{s}.{b}" for s in (1, 2, 3, 4) for b in (0, 1)]
    cnn = fresh_template_mixing(resolve_spec(ArchSpec("tiny-cnn", 1.0, 5, 3, {})))
    assert default_layers(cnn, "tiny-cnn") == ["conv1", "conv2", "conv3"]
    mlp = build_plain(resolve_spec(ArchSpec("tiny-mlp", 1.0, 4, 1, {})))
    assert default_layers(mlp, "tiny-mlp") == ["fc1", "fc2", "fc3"]


def test_layer_tap_returns_hooked_outputs_and_channel_blocks(ckpts):
    grown, _ = load_checkpoint(ckpts["grown"])
    assert growth_factor(grown) == 2
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with LayerTap(grown, ["conv2"], lambda t: t.clone()) as tap:
        (whole,) = tap.run(x)
    assert whole.shape == (6, 16, 8, 8)
    for index in (0, 1):
        with LayerTap(grown, ["conv2"], lambda t: t.clone(), ChannelBlock(index, 2)) as tap:
            (part,) = tap.run(x)
        assert torch.equal(part, whole[:, 8 * index : 8 * (index + 1)])
    assert not grown.net.conv2._forward_hooks  # hooks are removed on exit


def test_heatmap_is_a_png_with_blank_cells_for_nan(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "m.png"
    plot_heatmap([[1.0, None], [0.5, 0.25]], ["r0", "r1"], ["c0", "c1"], title="t", row_axis="A", col_axis="B", out=out)
    assert out.read_bytes().startswith(b"\x89PNG")
    assert [p.name for p in tmp_path.iterdir()] == ["m.png"]  # no temporary file left behind


# ---------------------------------------------------------------------------------------
# The commands


def _save(model, spec, path):
    meta = CheckpointMeta("template-mixing", spec, model.plan, new_provenance(()))
    save_checkpoint(path, model.state_dict(), meta, force=False)
    return path


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory):
    """Two tiny-cnn small nets, a twice-as-wide one, and the two small nets fused (zero init)."""
    from mgtool.fuse import fuse_models

    folder = tmp_path_factory.mktemp("cka")
    small = resolve_spec(ArchSpec("tiny-cnn", 1.0, 10, 3, {}))
    wide = resolve_spec(ArchSpec("tiny-cnn", 2.0, 10, 3, {}))
    nets = [fresh_template_mixing(small, seed=seed) for seed in (1, 2)]
    paths = {
        "net1": _save(nets[0], small, folder / "net1.safetensors"),
        "net2": _save(nets[1], small, folder / "net2.safetensors"),
        "wide": _save(fresh_template_mixing(wide, seed=3), wide, folder / "wide.safetensors"),
    }
    grown, layout = fuse_models(nets, small, init="zero")
    paths["grown"] = _save(grown, layout.spec, folder / "grown.safetensors")
    run = folder / "run"
    run.mkdir()
    for epoch, source in ((1, "net1"), (2, "net2"), (10, "net1")):  # epoch 10 after 2, not "10" < "2"
        shutil.copy(paths[source], run_paths(run / "net.safetensors").epoch(epoch))
    paths["run"] = run
    return paths


def _ok(result):
    assert result.exit_code == 0, result.output
    return result


def _one_line_error(result, *needles):
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert result.stdout == ""
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_help_has_examples():
    for name in ("cka", "cka-time"):
        result = _ok(runner.invoke(app, [name, "--help"]))
        assert "Example: mgtool " + name in result.stdout


def test_cka_between_widths_writes_figure_and_json(ckpts, tmp_path):
    out = tmp_path / "cka.png"
    result = _ok(runner.invoke(app, ["cka", str(ckpts["net1"]), str(ckpts["wide"]), *DATA, "-o", str(out)]))
    # The picture needs the optional matplotlib; the JSON is written either way.
    assert result.stdout == f"{out if HAVE_MPL else out.with_suffix('.json')}\n"
    assert out.exists() == HAVE_MPL
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["estimator"] == "minibatch" and report["samples"] == 64 and report["batches"] == 2
    assert report["rows"]["layers"] == report["cols"]["layers"] == ["conv1", "conv2", "conv3"]
    assert report["cols"]["arch"]["width"] == 2.0
    matrix = torch.tensor(report["matrix"])
    assert matrix.shape == (3, 3) and bool(((matrix > -0.1) & (matrix <= 1.0 + 1e-6)).all())


def test_cka_of_a_checkpoint_with_itself_has_a_unit_diagonal(ckpts, tmp_path):
    for estimator in ("minibatch", "full"):
        out = tmp_path / f"self_{estimator}.png"
        result = _ok(
            runner.invoke(
                app,
                [
                    "cka",
                    str(ckpts["net1"]),
                    str(ckpts["net1"]),
                    *DATA,
                    "--estimator",
                    estimator,
                    "-o",
                    str(out),
                    "--json",
                ],
            )
        )
        report = json.loads(result.stdout)
        assert report == json.loads(out.with_suffix(".json").read_text())
        matrix = torch.tensor(report["matrix"], dtype=F64)
        assert_close(matrix.diagonal(), torch.ones(3, dtype=F64), rtol=0, atol=1e-5)
        assert_close(matrix, matrix.T, rtol=0, atol=1e-5)


def test_half_picks_the_channels_that_came_from_each_small_net(ckpts, tmp_path):
    # fuse --init zero leaves the grown net's first (second) channel block computing
    # exactly net 1's (net 2's) features, so those halves have CKA 1 on the diagonal.
    def diagonal(half, small):
        out = tmp_path / f"{half}_{small}.png"
        result = _ok(
            runner.invoke(
                app, ["cka", str(ckpts["grown"]), str(ckpts[small]), *DATA, "--half", half, "-o", str(out), "--json"]
            )
        )
        report = json.loads(result.stdout)
        assert report["rows"]["half"] == half and report["cols"]["half"] == "both"
        return torch.tensor(report["matrix"], dtype=F64).diagonal()

    ones = torch.ones(3, dtype=F64)
    assert_close(diagonal("first", "net1"), ones, rtol=0, atol=1e-5)
    assert_close(diagonal("second", "net2"), ones, rtol=0, atol=1e-5)
    assert_close(diagonal("2", "net2"), ones, rtol=0, atol=1e-5)  # block numbers, for g > 2
    assert (diagonal("first", "net2") < 0.999).all()
    _one_line_error(
        runner.invoke(
            app, ["cka", str(ckpts["grown"]), str(ckpts["net1"]), *DATA, "--half", "3", "-o", str(tmp_path / "x.png")]
        ),
        "2 channel blocks",
    )


def test_plain_checkpoint_matches_its_template_mixing_form(ckpts, tmp_path):
    from mgtool.export import export

    plain = export(ckpts["net1"], tmp_path / "plain.safetensors").path
    result = _ok(
        runner.invoke(app, ["cka", str(plain), str(ckpts["net1"]), *DATA, "-o", str(tmp_path / "p.png"), "--json"])
    )
    matrix = torch.tensor(json.loads(result.stdout)["matrix"], dtype=F64)
    assert_close(matrix.diagonal(), torch.ones(3, dtype=F64), rtol=0, atol=1e-5)


def test_cka_time_orders_epochs_and_matches_cka(ckpts, tmp_path):
    out = tmp_path / "time.png"
    result = _ok(
        runner.invoke(
            app,
            ["cka-time", str(ckpts["run"]), str(ckpts["grown"]), "--layer", "conv3", *DATA, "-o", str(out), "--json"],
        )
    )
    report = json.loads(result.stdout)
    assert out.exists() == HAVE_MPL and report["layer"] == "conv3"
    assert [c["epoch"] for c in report["checkpoints"]] == [1, 2, 10, None]
    assert [c["label"] for c in report["checkpoints"]] == ["net:1", "net:2", "net:10", "grown"]
    matrix = torch.tensor(report["matrix"], dtype=F64)
    assert_close(matrix, matrix.T, rtol=0, atol=1e-6)
    assert_close(matrix.diagonal(), torch.ones(4, dtype=F64), rtol=0, atol=1e-5)
    assert_close(matrix[0, 2], torch.tensor(1.0, dtype=F64), rtol=0, atol=1e-5)  # same weights
    # The same pair through `cka` gives the same number (same batches, same estimator).
    pair = _ok(
        runner.invoke(
            app,
            [
                "cka",
                str(ckpts["net1"]),
                str(ckpts["net2"]),
                *DATA,
                "--layers",
                "conv3",
                "-o",
                str(tmp_path / "pair.png"),
                "--json",
            ],
        )
    )
    assert_close(matrix[0, 1].item(), json.loads(pair.stdout)["matrix"][0][0], rtol=0, atol=2e-6)


def test_without_matplotlib_the_json_is_written_with_a_hint(ckpts, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    out = tmp_path / "cka.png"
    result = _ok(runner.invoke(app, ["cka", str(ckpts["net1"]), str(ckpts["net2"]), *DATA, "-o", str(out)]))
    json_path = out.with_suffix(".json")
    assert result.stdout == f"{json_path}\n"
    assert not out.exists() and json.loads(json_path.read_text())["figure"] is None
    hint = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(hint) == 1 and "pip install 'mgtool[plots]'" in hint[0]


def test_unknown_layer_pattern_lists_available_layers(ckpts, tmp_path):
    out = tmp_path / "x.png"
    _one_line_error(
        runner.invoke(
            app, ["cka", str(ckpts["net1"]), str(ckpts["net2"]), *DATA, "--layers", "stages.*", "-o", str(out)]
        ),
        "matches no layer",
        "conv1, conv2, conv3",
    )
    assert not out.exists() and not out.with_suffix(".json").exists()
    _one_line_error(
        runner.invoke(app, ["cka-time", str(ckpts["run"]), "--layer", "conv9", *DATA, "-o", str(out)]),
        "no layer named 'conv9'",
        "conv1",
    )


def test_bad_inputs_are_one_line_errors(ckpts, tmp_path):
    net1, net2 = str(ckpts["net1"]), str(ckpts["net2"])
    out = tmp_path / "x.png"
    _one_line_error(
        runner.invoke(app, ["cka", net1, net2, *DATA, "--half", "first", "-o", str(out)]), "neither", "grown"
    )
    _one_line_error(
        runner.invoke(app, ["cka", net1, str(tmp_path / "nope.safetensors"), *DATA, "-o", str(out)]), "no such file"
    )
    _one_line_error(runner.invoke(app, ["cka", net1, net2, *DATA, "-o", str(tmp_path / "x.txt")]), ".png")
    _one_line_error(
        runner.invoke(app, ["cka", net1, net2, "--data", "synthetic", "--data-opt", "shape=1x8x8", "-o", str(out)]),
        "3-channel",
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error(
        runner.invoke(app, ["cka-time", str(empty), "--layer", "conv3", *DATA, "-o", str(out)]),
        "no per-epoch checkpoints",
    )
    assert not out.exists()
    usage = runner.invoke(app, ["cka", net1, net2, *DATA, "--half", "third", "-o", str(out)])
    assert usage.exit_code == 2


def test_existing_outputs_are_not_overwritten_without_force(ckpts, tmp_path):
    out = tmp_path / "cka.png"
    out.with_suffix(".json").write_text("keep")
    args = ["cka", str(ckpts["net1"]), str(ckpts["net2"]), *DATA, "-o", str(out)]
    _one_line_error(runner.invoke(app, args), "already exists", "--force")
    assert out.with_suffix(".json").read_text() == "keep" and not out.exists()
    _ok(runner.invoke(app, [*args, "--force"]))
    assert json.loads(out.with_suffix(".json").read_text())["kind"] == "cka"


def test_run_folder_with_several_runs_is_refused(ckpts, tmp_path):
    folder = tmp_path / "two"
    shutil.copytree(ckpts["run"], folder)
    shutil.copy(ckpts["net2"], folder / "other.epoch001.safetensors")
    _one_line_error(
        runner.invoke(app, ["cka-time", str(folder), "--layer", "conv3", *DATA, "-o", str(tmp_path / "t.png")]),
        "several runs",
        "net, other",
    )


def test_library_and_cli_share_the_epoch_listing(ckpts):
    from mgtool.analysis.similarity import epoch_checkpoints

    listed = epoch_checkpoints([Path(ckpts["run"])])
    assert [c.epoch for c in listed] == [1, 2, 10] and {c.run for c in listed} == {"net"}


# ---------------------------------------------------------------------------------------
# The estimator interface and the typed results


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_every_estimator_matches_its_reference_through_the_interface(name):
    xs = [_randn(96, d, seed=60 + d) for d in (3, 5)]
    ys = [torch.tanh(xs[0] @ _randn(3, 6, seed=70)), _randn(96, 4, seed=71)]
    pair, same = make_estimator(name, 96), make_estimator(name, 96)
    for start in range(0, 96, 32):
        part = slice(start, start + 32)
        rows, cols = [pair.keep(x[part]) for x in xs], [pair.keep(y[part]) for y in ys]
        pair.check_memory([*rows, *cols])
        pair.update(rows, cols)
        same.update([same.keep(x[part]) for x in xs])
    if name == "full":
        expected = torch.tensor([[linear_cka(x.float(), y.float()) for y in ys] for x in xs], dtype=F64)
        tol = {"rtol": 1e-5, "atol": 1e-6}  # the full estimator keeps float32 activations
    else:
        expected = torch.tensor([[minibatch_linear_cka(x, y, 32) for y in ys] for x in xs], dtype=F64)
        tol = {"rtol": 1e-10, "atol": 1e-12}
    assert_close(pair.compute(), expected, **tol)
    symmetric = same.compute()
    assert symmetric.shape == (2, 2)
    assert_close(symmetric, symmetric.T, rtol=0, atol=1e-12)
    assert_close(symmetric.diagonal(), torch.ones(2, dtype=F64), rtol=0, atol=1e-6)


def test_full_estimator_refuses_more_memory_than_its_limit():
    estimator = make_estimator("full", samples=10**6)
    estimator.check_memory([torch.zeros(2, 100)])  # 0.4 GB: fine
    with pytest.raises(MgtoolError, match="minibatch"):
        estimator.check_memory([torch.zeros(2, 100)], copies=20)
    make_estimator("minibatch", samples=10**6).check_memory([torch.zeros(2, 10**6)], copies=20)


@pytest.mark.parametrize(("settings", "field"), [
    (EvalSettings(estimator="exact"), "estimator"),
    (EvalSettings(samples=3), "samples"),
    (EvalSettings(batch_size=2), "batch_size"),
])
def test_bad_settings_name_their_field(settings, field):
    with pytest.raises(SettingError) as e:
        settings.check()
    assert e.value.field == field


def test_results_write_their_json_and_keep_the_documented_keys(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    data = DataConfig("synthetic", None, {"shape": "3x8x8"})
    estimate = Estimate(torch.tensor([[1.0, math.nan]], dtype=F64), samples=8, batches=2)
    arch = {"name": "tiny-cnn", "width": 1.0, "options": {}}
    side = CkaSide(Path("a.safetensors"), arch, ["conv1"], "both")
    cols = CkaSide(Path("b.safetensors"), arch, ["conv1", "conv2"], "first")
    layer = LayerCka("minibatch", estimate, data, "test", 4, rows=side, cols=cols)
    payload = layer.write(tmp_path / "l.png", tmp_path / "l.json", force=False)
    assert list(payload) == ["kind", "estimator", "estimator_detail", "matrix", "rows", "cols", "data", "split",
                             "samples", "batches", "batch_size", "json", "figure"]
    assert payload["matrix"] == [[1.0, None]] and payload["figure"] is None
    assert json.loads((tmp_path / "l.json").read_text()) == payload
    assert layer.summary() == "1x2 layers, 8 samples" and "a.safetensors vs b.safetensors" in layer.title
    checkpoints = [EpochCheckpoint(Path("r.epoch001.safetensors"), "r", 1), EpochCheckpoint(Path("g"), "g", None)]
    time = TimeCka("full", estimate, data, "test", 4, layer="conv2", checkpoints=checkpoints)
    payload = time.write(tmp_path / "t.png", tmp_path / "t.json", force=False)
    assert payload["kind"] == "cka-time" and [c["label"] for c in payload["checkpoints"]] == ["r:1", "g"]
    # A file that appeared at the JSON's path after the command's check is kept without --force.
    (tmp_path / "t.json").write_text("theirs")
    with pytest.raises(MgtoolError):
        time.write(tmp_path / "t.png", tmp_path / "t.json", force=False)
    assert (tmp_path / "t.json").read_text() == "theirs"
    assert list(payload)[4:6] == ["layer", "checkpoints"]
