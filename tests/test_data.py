"""Data: exact 2-D densities (normalisation, Jacobian, entropy), user arrays, the registry."""

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from pyrodiff import ConfigError, DataError
from pyrodiff.data import (
    Checkerboard,
    Dataset,
    DatasetName,
    Density,
    GaussianMixture2D,
    Split,
    Standardized,
    Toy2D,
    dataset_names,
    get_dataset,
    load_array,
    load_digits,
    load_toy2d,
    toy_density,
)
from pyrodiff.likelihoods import DiscretizedGaussianLikelihood, GaussianLikelihood

KINDS = list(Toy2D)


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.value)
def test_log_prob_integrates_to_one(kind):
    """∫ p = (box area) · E_{u ~ U(box)}[p(u)], estimated with its measured standard error."""
    density = toy_density(kind)
    L, n = 4.0, 100_000
    u = (torch.rand(n, 2, generator=torch.Generator().manual_seed(1)) * 2 - 1) * L
    values = density.log_prob(u).exp() * (2 * L) ** 2
    total, se = values.mean(), values.std() / math.sqrt(n)
    assert abs(total - 1) < 4 * se, (total, se)
    # and essentially no mass outside the box
    x = density.sample(20_000, torch.Generator().manual_seed(2))
    assert x.abs().max() < L


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.value)
def test_data_are_standardised(kind):
    ds = load_toy2d(kind, num_train=20_000, num_test=10, seed=3)
    x = ds.train
    se_mean = x.std(0) / math.sqrt(x.shape[0])
    d2 = (x - x.mean(0)) ** 2
    se_var = d2.std(0) / math.sqrt(x.shape[0])
    assert (x.mean(0).abs() < 4 * se_mean).all()
    assert ((d2.mean(0) - 1).abs() < 4 * se_var).all()
    assert torch.allclose(ds.density.mean, torch.zeros(2), atol=1e-12)
    assert torch.allclose(ds.density.variance, torch.ones(2), atol=1e-12)


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.value)
def test_entropy_agrees_with_the_log_density_of_fresh_samples(kind):
    """H = −E[log p]: an independent sample's mean agrees within the combined error."""
    density = toy_density(kind)
    x = density.sample(20_000, torch.Generator().manual_seed(4))
    nlp = -density.log_prob(x)
    assert torch.isfinite(nlp).all()
    se = math.sqrt(nlp.var().item() / x.shape[0] + density.entropy_se**2)
    assert abs(nlp.mean().item() - density.entropy) < 4 * se + 1e-12


def test_checkerboard_entropy_is_closed_form_and_log_density_constant():
    density = toy_density(Toy2D.CHECKERBOARD)
    # raw: 8 unit cells, H = log 8; standardising by s = 2/√3 per axis: log 8 − 2 log s = log 6
    assert density.entropy == pytest.approx(math.log(6), abs=1e-12)
    assert density.entropy_se == 0
    x = density.sample(1000, torch.Generator().manual_seed(5))
    assert torch.allclose(density.log_prob(x), torch.full((1000,), -math.log(6)))
    # a light cell of the raw board, and a point off the board, have no mass
    off = density.forward_map(torch.tensor([[0.5, -0.5], [2.5, 0.0]], dtype=torch.float64))
    assert torch.isinf(density.log_prob(off)).all()


def test_mixture_log_density_matches_torch_mixture():
    mix = GaussianMixture2D(torch.randn(5, 2), std=0.3, weights=torch.tensor([1, 2, 3, 4, 5.0]))
    ref = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(probs=mix.weights),
        torch.distributions.Independent(
            torch.distributions.Normal(mix.means, torch.full_like(mix.means, 0.3)), 1
        ),
    )
    x = torch.randn(100, 2) * 2
    assert torch.allclose(mix.log_prob(x), ref.log_prob(x), atol=1e-10)


def test_standardising_carries_the_jacobian():
    mix = GaussianMixture2D(torch.tensor([[3.0, -1.0]]), std=0.5)
    std = Standardized(mix, loc=torch.tensor([1.0, 2.0]), scale=torch.tensor([2.0, 0.25]))
    y = torch.randn(50, 2)
    # y = (x − loc)/scale of x ~ N((3, −1), 0.25 I) is N(((3 − 1)/2, (−1 − 2)/0.25), diag(.5/2, .5/.25)²)
    ref = torch.distributions.Independent(
        torch.distributions.Normal(torch.tensor([1.0, -12.0]), torch.tensor([0.25, 2.0])), 1
    )
    assert torch.allclose(std.log_prob(y), ref.log_prob(y), atol=1e-12)
    assert std.entropy == pytest.approx(ref.entropy().item(), abs=4 * std.entropy_se + 1e-12)


def test_eight_gaussians_entropy_lies_within_the_mixture_bounds():
    density = toy_density(Toy2D.EIGHT_GAUSSIANS)
    lo, hi = density.base.entropy_bounds()
    h, se = density.entropy + density.log_det, density.entropy_se
    assert lo - 4 * se <= h <= hi + 4 * se
    # the components are 7.6 σ apart: the entropy is within a hair of the upper bound
    assert hi - h < 1e-3


def test_toy_datasets_are_reproducible_and_carry_their_density():
    a = load_toy2d("two-moons", num_train=100, num_test=30, seed=1)
    b = load_toy2d(Toy2D.TWO_MOONS, num_train=100, num_test=30, seed=1)
    c = load_toy2d(Toy2D.TWO_MOONS, num_train=100, num_test=30, seed=2)
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)
    assert not torch.equal(a.train, c.train)
    assert a.train.shape == (100, 2) and a.test.shape == (30, 2)
    assert isinstance(a.density, Density) and isinstance(a.likelihood(), GaussianLikelihood)
    assert a.num_dims == 2 and a.name == "two_moons"


def test_toy_validation_is_a_third_independent_draw_and_leaves_train_and_test_as_they_were():
    a = load_toy2d("eight_gaussians", num_train=100, num_test=30, seed=1, num_validation=40)
    b = load_toy2d("eight_gaussians", num_train=100, num_test=30, seed=1, num_validation=7)
    assert a.validation.shape == (40, 2) and b.validation.shape == (7, 2)
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)
    # the draws are distinct points of a continuous density: no datum is in two splits
    every = torch.cat([a.train, a.test, a.validation])
    assert torch.unique(every, dim=0).shape[0] == every.shape[0]
    assert get_dataset("two_moons").validation.shape == (2000, 2)  # the documented default


def test_digits_splits_train_validation_test_in_order_and_test_is_the_last_297():
    from sklearn.datasets import load_digits as sk_digits

    images = torch.as_tensor(sk_digits().images, dtype=torch.float64)
    ds = load_digits()
    assert (ds.train.shape[0], ds.validation.shape[0], ds.test.shape[0]) == (1300, 200, 297)
    levels = torch.cat([ds.to_levels(s) for s in (ds.train, ds.validation, ds.test)])
    assert torch.equal(levels.squeeze(1), images.long())
    assert torch.equal(ds.to_levels(ds.test).squeeze(1), images[-297:].long())
    assert ds.split(Split.VALIDATION) is ds.validation and ds.split(Split.TEST) is ds.test


def test_a_dataset_without_validation_says_so():
    ds = Dataset("g", train=torch.zeros(3, 2), test=torch.zeros(2, 2))
    with pytest.raises(DataError, match="no validation split"):
        ds.split(Split.VALIDATION)


def test_integer_data_without_num_levels_gets_a_quantised_hint(tmp_path):
    np.save(tmp_path / "counts.npy", np.arange(300).reshape(150, 2))
    with pytest.warns(UserWarning, match=r"looks quantised.*--num-levels 300"):
        ds = load_array(tmp_path / "counts.npy")
    assert ds.num_levels is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_array(tmp_path / "counts.npy", num_levels=300)
        np.save(tmp_path / "real.npy", np.linspace(-1, 1, 40).reshape(20, 2))
        load_array(tmp_path / "real.npy")


def test_toy_arguments_are_checked():
    with pytest.raises(ConfigError, match="expected one of"):
        load_toy2d("spirals")
    with pytest.raises(ConfigError, match="num_train"):
        load_toy2d(Toy2D.CHECKERBOARD, num_train=0)
    with pytest.raises(ConfigError, match="even"):
        Checkerboard(num_cells=3)
    with pytest.raises(DataError, match=r"\(N, 2\)"):
        toy_density(Toy2D.CHECKERBOARD).log_prob(torch.zeros(3, 3))


# --- user arrays ---------------------------------------------------------------------------


def test_npy_is_split_reproducibly_and_completely(tmp_path):
    a = np.arange(40, dtype=np.float32).reshape(20, 2) + 0.5
    np.save(tmp_path / "x.npy", a)
    ds = load_array(tmp_path / "x.npy", test_fraction=0.25, seed=3, validation_fraction=0.1)
    again = load_array(tmp_path / "x.npy", test_fraction=0.25, seed=3, validation_fraction=0.1)
    assert ds.train.shape == (13, 2) and ds.validation.shape == (2, 2) and ds.test.shape == (5, 2)
    assert torch.equal(ds.train, again.train) and torch.equal(ds.validation, again.validation)
    # the three splits are a partition of the rows
    rows = torch.cat([ds.train, ds.validation, ds.test])
    assert torch.equal(rows[rows[:, 0].argsort()], torch.from_numpy(a).double())
    assert ds.train.dtype == torch.get_default_dtype() and ds.name == "x"
    # the test set of a seed does not depend on the validation fraction
    none = load_array(tmp_path / "x.npy", test_fraction=0.25, seed=3, validation_fraction=0.0)
    assert torch.equal(none.test, ds.test) and none.validation is None
    assert none.train.shape == (15, 2)


def test_npz_pair_is_kept_and_single_array_split(tmp_path):
    train, test = np.random.rand(7, 3, 2, 2), np.random.rand(4, 3, 2, 2)
    np.savez(tmp_path / "pair.npz", train=train, test=test)
    ds = load_array(tmp_path / "pair.npz", validation_fraction=0)
    assert torch.equal(ds.train, torch.from_numpy(train)) and ds.event_shape == (3, 2, 2)
    assert torch.equal(ds.test, torch.from_numpy(test)) and ds.validation is None
    # a validation array is used as given; without one, a fraction of train is held out
    validation = np.random.rand(2, 3, 2, 2)
    np.savez(tmp_path / "three.npz", train=train, test=test, validation=validation)
    three = load_array(tmp_path / "three.npz")
    assert torch.equal(three.validation, torch.from_numpy(validation))
    assert torch.equal(three.train, torch.from_numpy(train))
    carved = load_array(tmp_path / "pair.npz", validation_fraction=0.3)
    assert carved.validation.shape[0] == round(7 * 0.3) and carved.train.shape[0] == 7 - 2
    rows = torch.cat([carved.train, carved.validation]).flatten(1)
    assert torch.equal(rows[rows[:, 0].argsort()], torch.from_numpy(train).flatten(1)[
        torch.from_numpy(train).flatten(1)[:, 0].argsort()])  # fmt: skip
    np.savez(tmp_path / "one.npz", data=np.random.rand(10, 2))
    assert load_array(tmp_path / "one.npz", test_fraction=0.2).test.shape == (2, 2)


def test_quantised_levels_are_rescaled_to_the_discretised_grid(tmp_path):
    K = 4
    a = np.array([[0, 1], [2, 3], [3, 0], [1, 1]], dtype=np.uint8)
    np.savez(tmp_path / "q.npz", train=a, test=a[:2])
    ds = load_array(tmp_path / "q.npz", num_levels=K, validation_fraction=0)
    assert torch.allclose(ds.train, torch.from_numpy(a).double() * 2 / 3 - 1)
    assert isinstance(ds.likelihood(), DiscretizedGaussianLikelihood)
    ds.likelihood().validate(ds.train)
    assert torch.equal(ds.to_levels(ds.train), torch.from_numpy(a).long())


@pytest.mark.parametrize(
    "array, kwargs, message",
    [
        (np.array([[1.0, np.nan], [0.0, 1.0]] * 5), {}, "NaN or inf"),
        (np.array([[1.0, np.inf], [0.0, 1.0]] * 5), {}, "NaN or inf"),
        (np.zeros((0, 3)), {}, "empty"),
        (np.zeros((5, 0)), {}, "empty"),
        (np.arange(10.0), {}, "no datum dimension"),
        (np.ones((10, 2), dtype=bool), {}, "dtype bool"),
        (np.ones((10, 2), dtype=complex), {}, "dtype complex"),
        (np.full((10, 2), 0.5), {"num_levels": 4}, "non-integer"),
        (np.full((10, 2), 4), {"num_levels": 4}, r"0 … 3"),
        (np.full((10, 2), -1), {"num_levels": 4}, r"0 … 3"),
        (np.ones((1, 2)), {}, "cannot be split"),
    ],
)
def test_bad_arrays_raise_one_clear_data_error(tmp_path, array, kwargs, message):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(DataError, match=message):
        load_array(tmp_path / "bad.npy", **kwargs)


def test_bad_files_raise_data_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_array(tmp_path / "missing.npy")
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(DataError, match=".npy or .npz"):
        load_array(tmp_path / "x.csv")
    (tmp_path / "junk.npy").write_bytes(b"not numpy at all")
    with pytest.raises(DataError, match="not a .npy file") as info:
        load_array(tmp_path / "junk.npy")
    assert "unpickl" not in str(info.value)
    # a text file given a .npy name is called what it is, not a pickle
    np.savetxt(tmp_path / "text.npy", np.ones((4, 2)))
    with pytest.raises(DataError, match="numpy.loadtxt") as info:
        load_array(tmp_path / "text.npy")
    assert "unpickl" not in str(info.value)
    (tmp_path / "text.npz").write_text("1 2\n")
    with pytest.raises(DataError, match="not a .npz archive"):
        load_array(tmp_path / "text.npz")
    np.savez(tmp_path / "keys.npz", a=np.ones((3, 2)), b=np.ones((3, 2)))
    with pytest.raises(DataError, match="'train' and 'test'"):
        load_array(tmp_path / "keys.npz")
    np.savez(tmp_path / "shapes.npz", train=np.ones((3, 2)), test=np.ones((3, 4)))
    with pytest.raises(DataError, match="share a datum shape"):
        load_array(tmp_path / "shapes.npz")
    np.save(tmp_path / "ok.npy", np.ones((10, 2)))
    with pytest.raises(ConfigError, match="test_fraction"):
        load_array(tmp_path / "ok.npy", test_fraction=1.0)
    with pytest.raises(ConfigError, match="validation_fraction"):
        load_array(tmp_path / "ok.npy", test_fraction=0.5, validation_fraction=0.5)
    with pytest.raises(ConfigError, match="num_levels"):
        load_array(tmp_path / "ok.npy", num_levels=1)


class _Payload:
    """Unpickling this would create a file: the loader must never unpickle."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (Path.write_text, (self.target, "executed"))


def test_pickled_content_is_refused_and_never_executed(tmp_path):
    target = tmp_path / "side_effect.txt"
    obj = np.empty((2, 1), dtype=object)
    obj[0, 0], obj[1, 0] = _Payload(target), 1.0
    np.save(tmp_path / "evil.npy", obj, allow_pickle=True)
    with pytest.raises(DataError, match="unpickling"):
        load_array(tmp_path / "evil.npy")
    np.savez(tmp_path / "evil.npz", train=obj, test=obj)
    with pytest.raises(DataError, match="unpickling"):
        load_array(tmp_path / "evil.npz")
    assert not target.exists()


# --- the registry --------------------------------------------------------------------------


def test_registry_loads_every_name_and_files(tmp_path):
    assert dataset_names() == [n.value for n in DatasetName]
    for name in DatasetName:
        kwargs = {} if name is DatasetName.DIGITS else {"num_train": 8, "num_test": 4}
        ds = get_dataset(name, **kwargs)
        assert isinstance(ds, Dataset) and ds.name == name.value
        assert ds.num_levels == (17 if name is DatasetName.DIGITS else None)
    assert get_dataset(" Two-Moons", num_train=2, num_test=1).name == "two_moons"
    np.save(tmp_path / "mine.npy", np.ones((10, 3)))
    assert get_dataset(str(tmp_path / "mine.npy"), test_fraction=0.5).test.shape == (5, 3)
    assert get_dataset(tmp_path / "mine.npy").name == "mine"


def test_registry_errors_list_the_valid_choices():
    with pytest.raises(ConfigError) as info:
        get_dataset("mnist")
    for name in dataset_names():
        assert name in str(info.value)
    with pytest.raises(ConfigError, match="num_train"):
        get_dataset("checkerboard", num_samples=5)
    with pytest.raises(ConfigError, match="DatasetName"):
        get_dataset(3)
