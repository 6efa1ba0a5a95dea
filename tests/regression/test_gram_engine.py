"""The Gram engine: its optimum, its agreement with SAGA, its bf16 products, when ``auto`` picks it, its memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import ElasticNet

from regression import SolverConfig, saga_lasso_path
from regression.gram import choose_engine, gram_bytes, resolve_precision
from regression.memory import plan_memory
from storage.errors import InputError


def _planted(n: int = 400, n_features: int = 60, n_targets: int = 4, seed: int = 1):
    rng = np.random.default_rng(seed)
    x = rng.random((n, n_features)) < 0.5
    beta = np.zeros((n_features, n_targets))
    for t in range(n_targets):
        beta[rng.choice(n_features, size=6, replace=False), t] = rng.normal(size=6)
    y = x @ beta + 0.3 * rng.normal(size=(n, n_targets))
    return x, y


def test_elastic_net_optimum_matches_sklearn_in_float64() -> None:
    x, y = _planted()
    xs = (x - x.mean(0)) / x.std(0)
    lam, l2 = 0.03, 0.2
    result = saga_lasso_path(x, y, alphas=[lam], device="cpu", dtype="float64",
                             config=SolverConfig(engine="gram", l2=l2, tol=1e-10, max_epochs=5000))
    assert result.engine == "gram" and result.precision == "fp32" and result.n_unconverged.sum() == 0
    # scikit-learn's ElasticNet: α·ρ·‖w‖₁ + α·(1 − ρ)/2·‖w‖² is λ‖w‖₁ + (l2/2)‖w‖².
    alpha = lam + l2
    for t in range(y.shape[1]):
        ref = ElasticNet(alpha=alpha, l1_ratio=lam / alpha, tol=1e-12, max_iter=100_000).fit(xs, y[:, t])
        np.testing.assert_allclose(result.predict(x)[:, t], ref.predict(xs), atol=1e-6)


def test_gram_and_saga_walk_the_same_path_and_choose_the_same_lambda() -> None:
    x, y = _planted(n=600)
    kw = dict(X_val=x[500:], Y_val=y[500:], device="cpu", dtype="float64")
    settings = dict(n_alphas=20, eps=1e-3, tol=1e-9, max_epochs=5000, patience=20, refit=False)
    gram = saga_lasso_path(x[:500], y[:500], config=SolverConfig(engine="gram", **settings), **kw)
    saga = saga_lasso_path(x[:500], y[:500], config=SolverConfig(engine="saga", **settings), **kw)
    assert (gram.engine, saga.engine) == ("gram", "saga")
    np.testing.assert_array_equal(gram.lam_index, saga.lam_index)
    np.testing.assert_allclose(gram.val_mse_path, saga.val_mse_path, rtol=1e-5)
    np.testing.assert_allclose(gram.weight, saga.weight, atol=1e-5)


def test_bf16_products_match_fp32_on_validation_mse() -> None:
    x, y = _planted(n=1200, n_features=200, n_targets=8, seed=2)
    kw = dict(X_val=x[1000:], Y_val=y[1000:], device="cpu", alphas=None)
    fp32 = saga_lasso_path(x[:1000], y[:1000], config=SolverConfig(engine="gram", precision="fp32"), **kw)
    bf16 = saga_lasso_path(x[:1000], y[:1000], config=SolverConfig(engine="gram", precision="bf16"), **kw)
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    assert bf16.n_unconverged.sum() == 0
    np.testing.assert_allclose(bf16.val_mse, fp32.val_mse, rtol=1e-2)
    np.testing.assert_allclose(bf16.weight, fp32.weight, atol=2e-2 * float(np.abs(fp32.weight).max()))


def test_backtracking_never_goes_below_the_proven_step_and_every_target_converges() -> None:
    x, y = _planted(n=300, n_features=500, n_targets=5, seed=3)  # features > rows: curvature varies most
    result = saga_lasso_path(x[:250], y[:250], X_val=x[250:], Y_val=y[250:], device="cpu",
                             config=SolverConfig(engine="gram", precision="fp32", n_alphas=30, eps=1e-3))
    assert result.n_unconverged.sum() == 0
    assert result.step_size == pytest.approx(1.0 / result.lipschitz)


def test_auto_picks_gram_when_features_are_at_most_twice_the_rows_and_it_fits() -> None:
    assert choose_engine("auto", n_rows=1000, n_features=2000, memory=1 << 30) == "gram"
    assert choose_engine("auto", n_rows=1000, n_features=2001, memory=1 << 30) == "saga"
    assert choose_engine("auto", n_rows=10_000, n_features=4000, memory=4 * gram_bytes(4000) - 1) == "saga"
    assert choose_engine("saga", n_rows=10_000, n_features=10, memory=1 << 30) == "saga"
    assert choose_engine("gram", n_rows=10, n_features=10_000, memory=0) == "gram"
    x, y = _planted(n=100, n_features=300)
    assert saga_lasso_path(x, y, device="cpu", config=SolverConfig(n_alphas=3)).engine == "saga"
    assert saga_lasso_path(x, y[:, :1], device="cpu", config=SolverConfig(n_alphas=3)).engine == "saga"
    x, y = _planted(n=300, n_features=100)
    assert saga_lasso_path(x, y, device="cpu", config=SolverConfig(n_alphas=3)).engine == "gram"


def test_auto_precision_is_fp32_for_saga_and_float64() -> None:
    cpu = torch.device("cpu")
    assert resolve_precision("auto", "saga", cpu, torch.float32) == "fp32"
    assert resolve_precision("auto", "gram", cpu, torch.float64) == "fp32"
    assert resolve_precision("tf32", "gram", cpu, torch.float32) == "tf32"
    assert resolve_precision("auto", "gram", cpu, torch.float32) in ("fp32", "bf16")


def test_memory_plan_counts_the_gram_matrices_and_no_table() -> None:
    kw = dict(n_rows=100_000, n_features=20_000, n_targets=64, output_width=1000, batch_rows=1000,
              device=torch.device("cpu"))
    saga = plan_memory(max_memory=None, **kw)
    gram = plan_memory(max_memory=None, engine="gram", **kw)
    table = 100_000 * 64 * 4
    assert gram.host_bytes - saga.host_bytes == pytest.approx(gram_bytes(20_000) - table, rel=0.05)
    with pytest.raises(InputError) as err:
        plan_memory(max_memory=2 << 30, engine="gram", **kw)  # 4 GB of Gram matrices
    assert err.value.params == ("max_memory",)
