"""What follows the chosen λ (refit, average, least-squares and relaxed debias) and the product precisions,
against scikit-learn on the same rows."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import Lasso, LinearRegression, Ridge

from regression import SolverConfig, saga_lasso_path
from storage.errors import InputError


def _data(n: int = 400, n_features: int = 30, n_targets: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, n_features)) < 0.5
    beta = np.zeros((n_features, n_targets))
    beta[:8] = rng.normal(0, 0.6, size=(8, n_targets))
    y = x @ beta + rng.normal(0, 1.0, size=(n, n_targets)) + 2.0
    return x, y


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = x.astype(np.float64)
    mu, sd = x.mean(0), x.std(0)
    return (x - mu) / sd, mu, sd


TIGHT = dict(n_alphas=12, eps=1e-3, tol=1e-10, max_epochs=4000, batch_size=100, patience=12)


def _fit(x, y, n_train: int, **settings):
    return saga_lasso_path(x[:n_train], y[:n_train], X_val=x[n_train:], Y_val=y[n_train:],
                           config=SolverConfig(**{**TIGHT, **settings}), device="cpu", dtype="float64")


def test_default_refit_is_the_lasso_at_the_chosen_lambda_on_train_and_validation_rows() -> None:
    x, y = _data()
    result = _fit(x, y, 300)  # refit=True is the default
    assert result.refit and SolverConfig().refit
    xs, mu, sd = _standardise(x)  # all 400 rows: the refit's own moments
    for t in range(y.shape[1]):
        lam = float(result.lam[t])
        ref = Lasso(alpha=lam, tol=1e-12, max_iter=100_000).fit(xs, y[:, t])
        w_std = result.weight[:, t].astype(np.float64) * sd
        b = float(result.bias[t]) + float(mu @ result.weight[:, t])

        def objective(w: np.ndarray, b0: float) -> float:
            return 0.5 * float(np.mean((y[:, t] - xs @ w - b0) ** 2)) + lam * float(np.abs(w).sum())

        assert abs(objective(w_std, b) - objective(ref.coef_, ref.intercept_)) <= 1e-4 * objective(ref.coef_, ref.intercept_)
    no_refit = _fit(x, y, 300, refit=False)
    np.testing.assert_array_equal(no_refit.lam, result.lam)  # same λ choice, other rows
    assert not no_refit.refit and np.abs(no_refit.weight - result.weight).max() > 1e-3


@pytest.mark.parametrize("ridge", [0.0, 0.05])
def test_least_squares_debias_matches_sklearn_on_the_same_support(ridge: float) -> None:
    x, y = _data(seed=1)
    result = _fit(x, y, 300, debias="ls", ridge=ridge)
    lasso = _fit(x, y, 300)  # the refit LASSO whose support the debias keeps
    for t in range(y.shape[1]):
        support = np.flatnonzero(lasso.weight[:, t])
        np.testing.assert_array_equal(np.flatnonzero(result.weight[:, t]), support)
        if ridge == 0:
            ref = LinearRegression().fit(x[:, support].astype(np.float64), y[:, t])
            np.testing.assert_allclose(result.weight[support, t], ref.coef_, rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(result.bias[t], ref.intercept_, rtol=1e-4, atol=1e-4)
        else:
            # Ours: (1/2n)‖y − ȳ − Xs w‖² + (ridge/2)‖w‖² on standardised columns = sklearn's Ridge(alpha=n·ridge).
            xs, mu, sd = _standardise(x)
            ref = Ridge(alpha=len(x) * ridge, tol=1e-12).fit(xs[:, support], y[:, t])
            np.testing.assert_allclose(result.weight[support, t] * sd[support], ref.coef_, rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(result.predict(x)[:, t], ref.predict(xs[:, support]), atol=1e-4)


def test_relaxed_mix_is_the_validation_optimum_of_the_blend() -> None:
    x, y = _data(seed=2)
    kw = dict(refit=False)
    lasso = _fit(x, y, 300, **kw)
    ls = _fit(x, y, 300, debias="ls", **kw)
    relaxed = _fit(x, y, 300, debias="relaxed", **kw)
    assert relaxed.mix is not None and ((relaxed.mix >= 0) & (relaxed.mix <= 1)).all()
    xv, yv = x[300:], y[300:]
    for t in range(y.shape[1]):
        gammas = np.linspace(0, 1, 201)
        mses = [np.mean((g * lasso.predict(xv)[:, t] + (1 - g) * ls.predict(xv)[:, t] - yv[:, t]) ** 2) for g in gammas]
        assert abs(float(relaxed.mix[t]) - gammas[int(np.argmin(mses))]) <= 0.01
        blend = relaxed.mix[t] * lasso.weight[:, t] + (1 - relaxed.mix[t]) * ls.weight[:, t]
        np.testing.assert_allclose(relaxed.weight[:, t], blend, atol=1e-5)
    with pytest.raises(InputError, match="validation") as err:
        saga_lasso_path(x, y, config=SolverConfig(debias="relaxed"), device="cpu")
    assert err.value.params == ("debias",)


def test_average_is_the_mean_of_the_solutions_at_the_neighbouring_lambdas() -> None:
    x, y = _data(seed=3)
    averaged = _fit(x, y, 300, refit=False, average=1)
    plain = _fit(x, y, 300, refit=False)
    np.testing.assert_array_equal(averaged.lam_index, plain.lam_index)
    for t in range(y.shape[1]):
        k = int(plain.lam_index[t])
        steps = [s for s in (k - 1, k, k + 1) if 0 <= s < plain.lambdas.shape[0]]
        solutions = [saga_lasso_path(x[:300], y[:300], alphas=[float(plain.lambdas[s, t])],
                                     config=SolverConfig(**{**TIGHT, "refit": False}), device="cpu",
                                     dtype="float64").weight[:, t] for s in steps]
        np.testing.assert_allclose(averaged.weight[:, t], np.mean(solutions, axis=0), atol=1e-5)


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_reduced_precision_products_match_fp32_on_validation_mse(precision: str) -> None:
    rng = np.random.default_rng(4)
    x = rng.random((1200, 200)) < 0.5
    beta = np.zeros((200, 6))
    beta[:20] = rng.normal(0, 0.3, size=(20, 6))
    y = (x @ beta + rng.normal(0, 1.0, size=(1200, 6)) + 5.0).astype(np.float32)
    kw = dict(X_val=x[1000:], Y_val=y[1000:], device="cpu")
    settings = dict(n_alphas=20, eps=1e-3, batch_size=250, tol=1e-5)
    exact = saga_lasso_path(x[:1000], y[:1000], config=SolverConfig(**settings), **kw)
    reduced = saga_lasso_path(x[:1000], y[:1000], config=SolverConfig(**settings, precision=precision), **kw)
    np.testing.assert_allclose(reduced.val_mse, exact.val_mse, rtol=2e-3)
    assert np.abs(reduced.lam_index - exact.lam_index).max() <= 1
    mse = lambda r: float(np.mean((r.predict(x[1000:]) - y[1000:]) ** 2))  # noqa: E731
    assert abs(mse(reduced) - mse(exact)) <= 2e-3 * mse(exact)
    with pytest.raises(InputError, match="float32") as err:
        saga_lasso_path(x, y, config=SolverConfig(precision=precision), device="cpu", dtype="float64")
    assert err.value.params == ("precision",)


def test_bf16_products_equal_exact_products_of_the_rounded_operands() -> None:
    import torch

    from regression.products import make_design

    rng = np.random.default_rng(5)
    masks = torch.from_numpy(rng.random((64, 40)) < 0.3)
    mu = masks.double().mean(0)
    inv_sd = 1 / masks.double().std(0, unbiased=False)
    w = torch.from_numpy(rng.normal(size=(40, 3)))
    d = torch.from_numpy(rng.normal(size=(64, 3)))
    design = make_design(masks, mu.float(), inv_sd.float(), precision="bf16", dtype=torch.float32)
    xs = (masks.double() - mu) * inv_sd
    w16 = (w.float() * inv_sd.float()[:, None]).bfloat16().double() / inv_sd[:, None]  # the operand it rounds
    np.testing.assert_allclose(design.times(w.float()).double(), xs @ w16, rtol=1e-5, atol=1e-4)
    d16 = d.float().bfloat16().double()
    np.testing.assert_allclose(design.t_times(d.float()).double(), xs.T @ d16, rtol=1e-5, atol=1e-4)


def test_l2_makes_it_scikit_learns_elastic_net() -> None:
    from sklearn.linear_model import ElasticNet

    x, y = _data(seed=6)
    lam, l2 = 0.03, 0.2
    result = saga_lasso_path(x, y, alphas=[lam], config=SolverConfig(**{**TIGHT, "l2": l2}), device="cpu",
                             dtype="float64")
    xs, mu, sd = _standardise(x)
    for t in range(y.shape[1]):
        # (1/2n)‖r‖² + λ‖w‖₁ + (l2/2)‖w‖²  is ElasticNet(alpha=λ + l2, l1_ratio=λ / (λ + l2)).
        ref = ElasticNet(alpha=lam + l2, l1_ratio=lam / (lam + l2), tol=1e-12, max_iter=100_000).fit(xs, y[:, t])
        np.testing.assert_allclose(result.weight[:, t] * sd, ref.coef_, atol=1e-5)


def test_one_standard_error_rule_picks_the_largest_lambda_within_one_se_of_the_best() -> None:
    x, y = _data(seed=7, n_targets=4)
    at_min = _fit(x, y, 300, refit=False)
    one_se = _fit(x, y, 300, refit=False, choose="1se")
    np.testing.assert_allclose(one_se.val_mse_path, at_min.val_mse_path, rtol=1e-9)  # the same path
    err2 = (at_min.predict(x[300:]) - y[300:]) ** 2
    se = err2.std(0) / np.sqrt(len(err2))
    for t in range(y.shape[1]):
        path = at_min.val_mse_path[:, t]
        expected = int(np.flatnonzero(path <= path[at_min.lam_index[t]] + se[t])[0])
        assert int(one_se.lam_index[t]) == expected <= int(at_min.lam_index[t])
        # and its weights are the LASSO's at that λ on the training rows
        alone = saga_lasso_path(x[:300], y[:300], alphas=[float(one_se.lam[t])], device="cpu", dtype="float64",
                                config=SolverConfig(**{**TIGHT, "refit": False}))
        np.testing.assert_allclose(one_se.weight[:, t], alone.weight[:, t], atol=1e-5)
    assert (one_se.lam_index < at_min.lam_index).any()


@pytest.mark.cuda
@pytest.mark.parametrize("engine", ["saga", "gram"])
@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_cuda_products_match_the_cpu_in_each_precision(precision: str, engine: str) -> None:
    x, y = _data(n=800, n_features=60, n_targets=4, seed=8)
    y = y.astype(np.float32)
    kw = dict(X_val=x[700:], Y_val=y[700:], config=SolverConfig(n_alphas=15, eps=1e-3, batch_size=200,
                                                                  precision=precision, engine=engine))
    cpu = saga_lasso_path(x[:700], y[:700], device="cpu", **kw)
    gpu = saga_lasso_path(x[:700], y[:700], device="cuda", **kw)
    np.testing.assert_allclose(gpu.val_mse, cpu.val_mse, rtol=2e-3)
    assert np.abs(gpu.lam_index - cpu.lam_index).max() <= 1
