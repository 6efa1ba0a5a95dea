"""The path solver (both engines) against scikit-learn, on tensors (no store)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import Lasso

from regression import SagaLassoPath, SolverConfig, saga_lasso_path
from storage.errors import InputError


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mu, sd = x.mean(0), x.std(0)
    return (x - mu) / sd, mu, sd


def _objective(xs: np.ndarray, y: np.ndarray, w: np.ndarray, b: float, lam: float) -> float:
    return 0.5 * float(np.mean((y - xs @ w - b) ** 2)) + lam * float(np.abs(w).sum())


def _data(kind: str, n: int = 300, n_features: int = 40, n_targets: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, n_features)) < 0.5
    if kind == "random":
        y = rng.normal(size=(n, n_targets)) + 0.3 * (x[:, :n_targets] - 0.5)
        return x, y, None
    beta = np.zeros((n_features, n_targets))
    support = [rng.choice(n_features, size=4, replace=False) for _ in range(n_targets)]
    for t, s in enumerate(support):
        beta[s, t] = rng.choice([-1, 1], size=4) * rng.uniform(1, 2, size=4)
    y = x @ beta + 0.05 * rng.normal(size=(n, n_targets)) + 3.0
    return x, y, support


@pytest.mark.parametrize("engine", ["saga", "gram"])
@pytest.mark.parametrize("kind", ["random", "planted"])
def test_objective_matches_sklearn_lasso(kind: str, engine: str) -> None:
    x, y, support = _data(kind)
    xs, mu, sd = _standardise(x.astype(np.float64))
    lam = 0.02 if kind == "random" else 0.05
    result = saga_lasso_path(x, y, alphas=[lam], config=SolverConfig(lr="auto", tol=1e-10, max_epochs=3000,
                             batch_size=100, engine=engine), device="cpu", dtype="float64")
    assert result.engine == engine
    assert result.n_unconverged.sum() == 0
    for t in range(y.shape[1]):
        ref = Lasso(alpha=lam, tol=1e-12, max_iter=100_000).fit(xs, y[:, t])
        # raw-space output back to standardised coordinates
        w_std = result.weight[:, t].astype(np.float64) * sd
        b = float(result.bias[t]) + float(mu @ result.weight[:, t])
        ours = _objective(xs, y[:, t], w_std, b, lam)
        theirs = _objective(xs, y[:, t], ref.coef_, ref.intercept_, lam)
        assert abs(ours - theirs) <= 1e-4 * theirs
        # raw-space prediction equals sklearn's on standardised inputs
        np.testing.assert_allclose(result.predict(x)[:, t], ref.predict(xs), atol=1e-3)
        if support is not None:
            assert set(np.flatnonzero(np.abs(result.weight[:, t]) > 1e-6)) == set(support[t])


def test_float32_published_lr_converges_to_sklearn() -> None:
    """The published lr (5e-3, an explicit value now) and float32: slower, still the same optimum."""
    x, y, _ = _data("planted", n=200, n_features=20, n_targets=2)
    xs, mu, sd = _standardise(x.astype(np.float64))
    result = saga_lasso_path(x, y, alphas=[0.05], config=SolverConfig(engine="saga", lr=5e-3, tol=1e-7, max_epochs=3000,
                             batch_size=50), device="cpu")
    assert result.step_size == pytest.approx(5e-3)
    for t in range(2):
        ref = Lasso(alpha=0.05, tol=1e-12, max_iter=100_000).fit(xs, y[:, t])
        ours = _objective(xs, y[:, t], result.weight[:, t] * sd, float(result.bias[t] + mu @ result.weight[:, t]), 0.05)
        theirs = _objective(xs, y[:, t], ref.coef_, ref.intercept_, 0.05)
        assert abs(ours - theirs) <= 1e-4 * theirs


def test_huge_lr_is_capped_and_converges() -> None:
    x, y, support = _data("planted", n=200, n_features=20, n_targets=2)
    result = saga_lasso_path(x, y, alphas=[0.05], config=SolverConfig(lr=100.0, tol=1e-8, max_epochs=2000, batch_size=50),
                             device="cpu")
    assert result.step_size < 1.0 / result.lipschitz * 1.0001
    assert np.isfinite(result.weight).all()
    for t in range(2):
        assert set(np.flatnonzero(np.abs(result.weight[:, t]) > 1e-4)) == set(support[t])


def test_auto_step_is_one_over_l_and_a_diverging_path_is_redone_at_the_proven_step() -> None:
    x, y, _ = _data("planted", n=200, n_features=20, n_targets=2)
    xs, mu, sd = _standardise(x.astype(np.float64))
    fast = saga_lasso_path(x, y, alphas=[0.05], config=SolverConfig(engine="saga", lr="auto", tol=1e-8, max_epochs=2000, batch_size=50),
                           device="cpu")
    assert fast.step_size == pytest.approx(1.0 / fast.lipschitz, rel=1e-6)
    assert fast.extra["step_fraction"] == 1.0
    # A start 1,000 in every weight is far over the bound every optimum obeys
    # (‖w‖₁ ≤ ‖y − ȳ‖² / 2nλ): the guard calls it divergence and the path is
    # redone at 1/(3L), which converges from anywhere.
    wild = np.full((20, 2), 1000.0)
    redone = saga_lasso_path(x, y, alphas=[0.05], coef_init=wild, device="cpu", dtype="float64",
                             config=SolverConfig(engine="saga", lr="auto", tol=1e-8, max_epochs=5000, batch_size=50))
    assert redone.extra["step_fraction"] == pytest.approx(1 / 3)
    assert redone.step_size == pytest.approx(1.0 / (3 * redone.lipschitz), rel=1e-6)
    for t in range(2):
        ref = Lasso(alpha=0.05, tol=1e-12, max_iter=100_000).fit(xs, y[:, t])
        for result in (fast, redone):
            w = result.weight[:, t]
            ours = _objective(xs, y[:, t], w * sd, float(result.bias[t] + mu @ w), 0.05)
            theirs = _objective(xs, y[:, t], ref.coef_, ref.intercept_, 0.05)
            assert abs(ours - theirs) <= 1e-4 * theirs


def test_lambda_max_zeroes_weights_and_grid_is_geometric() -> None:
    x, y, _ = _data("random", n=200, n_features=20)
    result = saga_lasso_path(x, y, config=SolverConfig(n_alphas=5, eps=1e-2, lr="auto", max_epochs=200), device="cpu")
    xs, _, _ = _standardise(x.astype(np.float64))
    lam_max = np.abs(xs.T @ (y - y.mean(0))).max(0) / len(y)
    np.testing.assert_allclose(result.lambdas[0], lam_max, rtol=1e-5)
    np.testing.assert_allclose(result.lambdas[-1], lam_max * 1e-2, rtol=1e-5)
    at_max = saga_lasso_path(x, y, alphas=lam_max.astype(np.float32)[None, :] * 1.0001, device="cpu")
    assert (at_max.nnz == 0).all()


def test_chosen_lambda_within_one_step_of_exact_validation_optimum() -> None:
    rng = np.random.default_rng(3)
    x_all = rng.random((500, 30)) < 0.5
    beta = np.zeros((30, 4))
    beta[:6] = rng.normal(0, 0.3, size=(6, 4))
    y_all = x_all @ beta + rng.normal(0, 1.0, size=(500, 4))
    x, y, xv, yv = x_all[:350], y_all[:350], x_all[350:], y_all[350:]
    k = 12
    cfg = SolverConfig(n_alphas=k, eps=1e-3, lr="auto", tol=1e-8, path_tol=1e-8, max_epochs=2000, patience=k,
                       batch_size=100)
    result = saga_lasso_path(x, y, X_val=xv, Y_val=yv, config=cfg, device="cpu", dtype="float64")
    xs, mu, sd = _standardise(x.astype(np.float64))
    xvs = (xv - mu) / sd
    for t in range(4):
        mses = []
        for lam in result.lambdas[:, t]:
            ref = Lasso(alpha=float(lam), tol=1e-12, max_iter=100_000).fit(xs, y[:, t])
            mses.append(np.mean((ref.predict(xvs) - yv[:, t]) ** 2))
        assert abs(int(result.lam_index[t]) - int(np.argmin(mses))) <= 1
        np.testing.assert_allclose(result.val_mse_path[:, t], mses, rtol=1e-3)


def test_early_stopping_stops_targets_and_refit_uses_all_rows() -> None:
    x, y, _ = _data("planted", n=400, n_features=30, n_targets=3)
    settings = dict(n_alphas=40, eps=1e-5, lr="auto", patience=2, batch_size=100)
    result = saga_lasso_path(x[:300], y[:300], X_val=x[300:], Y_val=y[300:], config=SolverConfig(**settings),
                             device="cpu")
    stopped = np.isnan(result.val_mse_path[-1])
    assert stopped.all()  # the path is far past the optimum well before λ_min
    assert (result.lam_index < 39).all()
    refit = saga_lasso_path(x[:300], y[:300], X_val=x[300:], Y_val=y[300:],
                            config=SolverConfig(**settings, refit=True), device="cpu")
    assert refit.refit and refit.n_train == 300 and refit.n_val == 100
    np.testing.assert_array_equal(refit.lam, result.lam)
    resid = refit.predict(x) - y
    assert np.mean(resid**2) < 0.02


def test_zero_variance_columns_get_zero_weight() -> None:
    x, y, _ = _data("planted", n=200, n_features=20, n_targets=2)
    x = x.copy()
    x[:, 3] = True
    x[:, 7] = False
    result = saga_lasso_path(x, y, alphas=[0.01], config=SolverConfig(lr="auto"), device="cpu")
    assert (result.weight[[3, 7]] == 0).all()
    np.testing.assert_allclose(result.predict(x).mean(0), y.mean(0), atol=1e-3)


def test_coef_init_warm_start_reaches_same_solution() -> None:
    x, y, _ = _data("planted", n=200, n_features=20, n_targets=2)
    kw = dict(alphas=[0.05], config=SolverConfig(lr="auto", tol=1e-9, max_epochs=2000, batch_size=50), device="cpu",
              dtype="float64")
    cold = saga_lasso_path(x, y, **kw)
    warm = saga_lasso_path(x, y, coef_init=cold.weight, **kw)
    np.testing.assert_allclose(warm.weight, cold.weight, atol=1e-5)
    assert warm.n_epochs.sum() < cold.n_epochs.sum()


def test_estimator_sklearn_style() -> None:
    x, y, support = _data("planted", n=300, n_features=20, n_targets=2)
    est = SagaLassoPath(n_alphas=30, eps=1e-4, lr="auto", batch_size=100, device="cpu")
    assert est.get_params()["n_alphas"] == 30 and not hasattr(est, "coef_")
    est.fit(x[:250], y[:250], X_val=x[250:], Y_val=y[250:])
    assert est.coef_.shape == (2, 20) and est.alphas_.shape == (30, 2) and est.mse_path_.shape == (30, 2)
    np.testing.assert_allclose(est.predict(x[250:]), y[250:], atol=0.3)
    with pytest.raises(InputError, match="eps"):
        SagaLassoPath(eps=2.0).fit(x, y)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"eps": 0.0}, "eps"),
        ({"eps": 1.5}, "eps"),
        ({"n_alphas": 0}, "n_alphas"),
        ({"lr": -1.0}, "lr"),
        ({"lr": "fast"}, "lr"),
        ({"batch_size": 0}, "batch_size"),
        ({"tol": float("nan")}, "tol"),
        ({"alphas": [0.1, 0.2]}, "non-increasing"),
        ({"alphas": [0.1, -0.2]}, "> 0"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_bad_parameters_raise_input_error(kwargs: dict, match: str) -> None:
    x, y, _ = _data("random", n=50, n_features=5)
    settings = {k: v for k, v in kwargs.items() if k in SolverConfig.model_fields}
    rest = {k: v for k, v in kwargs.items() if k not in settings}
    with pytest.raises(InputError, match=match) as err:
        saga_lasso_path(x, y, config=SolverConfig(**settings), **rest)
    assert err.value.params == tuple(kwargs)


def test_nan_targets_and_shape_mismatch_raise_input_error() -> None:
    x, y, _ = _data("random", n=50, n_features=5)
    bad = y.copy()
    bad[3, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        saga_lasso_path(x, bad, device="cpu")
    with pytest.raises(InputError, match="share"):
        saga_lasso_path(x[:40], y[:30], device="cpu")


@pytest.mark.cuda
@pytest.mark.parametrize("engine", ["saga", "gram"])
def test_cpu_equals_cuda(engine: str) -> None:
    x, y, _ = _data("planted", n=600, n_features=50, n_targets=5)
    kw = dict(X_val=x[500:], Y_val=y[500:],
              config=SolverConfig(n_alphas=20, eps=1e-4, lr="auto", batch_size=200, tol=1e-6, path_tol=1e-6,
                                  max_epochs=500, engine=engine, precision="fp32"))
    cpu = saga_lasso_path(x[:500], y[:500], device="cpu", **kw)
    gpu = saga_lasso_path(x[:500], y[:500], device="cuda", **kw)
    assert gpu.device.startswith("cuda") and gpu.engine == engine
    np.testing.assert_array_equal(cpu.lam_index, gpu.lam_index)
    np.testing.assert_allclose(cpu.weight, gpu.weight, atol=1e-4)
    np.testing.assert_allclose(cpu.bias, gpu.bias, atol=1e-4)
    np.testing.assert_allclose(cpu.val_mse, gpu.val_mse, rtol=1e-4)


@pytest.mark.cuda
def test_cuda_with_table_in_pinned_host_memory() -> None:
    from regression.loader import TensorSource, split_batches
    from regression import solve_source

    x, y, _ = _data("planted", n=400, n_features=30, n_targets=3)
    src = TensorSource(torch.from_numpy(x).cuda(), torch.from_numpy(y).float().cuda())
    cfg = SolverConfig(n_alphas=10, eps=1e-3, lr="auto", batch_size=100, engine="saga")  # the table is SAGA's
    train = split_batches(src.cut_points(), 0, 300, 100)
    val = split_batches(src.cut_points(), 300, 400, 100)
    on = solve_source(src, train=train, val=val, config=cfg, table_on_device=True)
    off = solve_source(src, train=train, val=val, config=cfg, table_on_device=False)
    np.testing.assert_allclose(on.weight, off.weight, atol=1e-6)


def test_estimator_params_come_from_solver_config() -> None:
    est = SagaLassoPath(lr="auto", n_alphas=10)
    params = est.get_params()
    assert set(params) == {"alphas", "device", *SolverConfig.model_fields}
    assert params["lr"] == "auto" and params["n_alphas"] == 10 and params["eps"] == SolverConfig().eps
    assert SagaLassoPath(**params).get_params() == params  # scikit-learn's clone round trip
    # config gives the settings, keywords override them
    from_config = SagaLassoPath(config=SolverConfig(lr="auto", n_alphas=10, refit=True), n_alphas=7)
    assert from_config.get_params() == {**params, "n_alphas": 7, "refit": True}
    assert est.set_params(n_alphas=12, device="cpu") is est
    assert (est.n_alphas, est.device) == (12, "cpu")
    est.set_params(config=SolverConfig(tol=1e-3))
    assert est.tol == 1e-3 and est.lr == SolverConfig().lr
    with pytest.raises(InputError, match="n_alpha") as err:
        est.set_params(n_alpha=3)
    assert err.value.params == ("n_alpha",)


def test_estimator_checks_values_at_fit_not_init() -> None:
    x, y, _ = _data("random", n=60, n_features=5)
    est = SagaLassoPath(lr=-1.0, device="cpu")  # stored as given
    assert est.lr == -1.0
    with pytest.raises(InputError, match="lr") as err:
        est.fit(x, y)
    assert err.value.params == ("lr",)
    est.set_params(lr="auto", n_alphas=3, max_epochs=20).fit(x, y)
    assert est.config_ == SolverConfig(lr="auto", n_alphas=3, max_epochs=20)
    assert est.alphas_.shape == (3, y.shape[1])
