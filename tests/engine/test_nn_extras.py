"""Embedding, Linear and the losses: float64 finite differences, live PyTorch comparisons, errors."""
import numpy as np
import pytest

from tests.engine.gradcheck import numerical_grad, rel_error
from model_core.backend import gpu_available, to_device, to_numpy
from model_core.nn import Embedding, Linear, losses

DEVICES = ["cpu", pytest.param("gpu", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not gpu_available(), reason="needs CuPy and a CUDA device")])]
TOL = 1e-6


def _rng(seed=0):
    return np.random.default_rng(seed)


def _close(ours, ref, tol=TOL):
    ref = ref.detach().numpy() if hasattr(ref, "detach") else np.asarray(ref)
    np.testing.assert_allclose(to_numpy(ours), ref, rtol=tol, atol=tol)


# -- finite differences (float64) ---------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_embedding_gradcheck(device):
    emb = Embedding(7, 3, device=device, dtype="float64", seed=1)
    ids = to_device(np.array([[1, 4, 1], [6, 0, 1]]), device)  # repeated ids must add up
    R = to_device(_rng().standard_normal((2, 3, 3)), device)  # (B, T, E) random projection
    W = emb.parameters()["weight"]
    num = numerical_grad(lambda: float((emb(ids) * R).sum()), W)
    assert rel_error(emb.backward(ids, R)["weight"], num) < 1e-7


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bias", [True, False])
def test_linear_gradcheck(device, bias):
    lin = Linear(4, 3, bias=bias, device=device, dtype="float64", seed=2)
    x = to_device(_rng(1).standard_normal((2, 5, 4)), device)  # (B, T, I)
    R = to_device(_rng(2).standard_normal((2, 5, 3)), device)  # (B, T, O)

    def f():
        return float((lin(x) * R).sum())

    dx, grads = lin.backward(x, R)
    assert rel_error(dx, numerical_grad(f, x)) < 1e-7
    for name, p in lin.parameters().items():
        assert rel_error(grads[name], numerical_grad(f, p)) < 1e-7
    assert set(grads) == ({"weight", "bias"} if bias else {"weight"})


def _loss_case(name, rng, masked):
    """(loss_fn, pred, target, mask) for a small (B, T, ...) batch in float64."""
    shape = (3, 4)
    mask = (rng.random(shape) < 0.6).astype(np.float64) if masked else None
    if mask is not None:
        mask[0, 0] = 1.0  # at least one live element
    if name == "cross_entropy":
        return losses.cross_entropy, rng.standard_normal(shape + (5,)), rng.integers(0, 5, shape), mask
    target = rng.random(shape) if name == "bce_with_logits" else rng.standard_normal(shape)
    return getattr(losses, name), 3.0 * rng.standard_normal(shape), target, mask


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("name", ["cross_entropy", "bce_with_logits", "mse"])
def test_loss_gradcheck(device, name, masked):
    fn, pred, target, mask = _loss_case(name, _rng(3), masked)
    pred, target = to_device(pred, device), to_device(target, device)
    mask = None if mask is None else to_device(mask, device)
    loss, dpred = fn(pred, target, mask)
    assert isinstance(loss, float)
    assert rel_error(dpred, numerical_grad(lambda: fn(pred, target, mask)[0], pred)) < 1e-6


@pytest.mark.parametrize("name", ["cross_entropy", "bce_with_logits", "mse"])
def test_loss_all_masked_is_zero(name):
    fn, pred, target, _ = _loss_case(name, _rng(4), False)
    loss, dpred = fn(pred, target, np.zeros(target.shape))
    assert loss == 0.0 and not dpred.any()


def test_softmax_helpers_are_stable():
    x = np.array([[1000.0, 0.0, -1000.0], [1.0, 2.0, 3.0]])
    assert np.all(np.isfinite(losses.log_softmax(x)))
    np.testing.assert_allclose(losses.softmax(x).sum(-1), 1.0)
    np.testing.assert_allclose(np.exp(losses.log_softmax(x, axis=0)), losses.softmax(x, axis=0))


# -- against PyTorch (float64) ------------------------------------------------------------------
@pytest.mark.torch
@pytest.mark.parametrize("device", DEVICES)
def test_embedding_matches_torch(device):
    torch = pytest.importorskip("torch")
    ref = torch.nn.Embedding(9, 4, padding_idx=2, dtype=torch.float64)
    emb = Embedding(9, 4, padding_idx=2, device=device, dtype="float64")
    emb.load_state_dict(ref.state_dict())
    ids = _rng(5).integers(0, 9, (3, 6))
    ids[0, :3] = 2  # padding positions get no gradient
    dout = _rng(6).standard_normal((3, 6, 4))
    out_ref = ref(torch.from_numpy(ids))
    out_ref.backward(torch.from_numpy(dout))
    _close(emb(to_device(ids, device)), out_ref)
    _close(emb.backward(to_device(ids, device), to_device(dout, device))["weight"], ref.weight.grad)


def test_embedding_init_like_torch():
    W = Embedding(2000, 50, padding_idx=-1, seed=0).parameters()["weight"]
    assert not W[-1].any()  # padding row starts at zero
    assert abs(W[:-1].mean()) < 0.01 and abs(W[:-1].std() - 1.0) < 0.01  # N(0, 1)
    np.testing.assert_array_equal(W, Embedding(2000, 50, padding_idx=1999, seed=0).parameters()["weight"])


@pytest.mark.torch
@pytest.mark.parametrize("device", DEVICES)
def test_linear_matches_torch(device):
    torch = pytest.importorskip("torch")
    ref = torch.nn.Linear(5, 3, dtype=torch.float64)
    lin = Linear(5, 3, device=device, dtype="float64")
    lin.load_state_dict(ref.state_dict())
    x = torch.from_numpy(_rng(7).standard_normal((2, 4, 5))).requires_grad_()
    dy = _rng(8).standard_normal((2, 4, 3))
    y_ref = ref(x)
    y_ref.backward(torch.from_numpy(dy))
    xd = to_device(x.detach().numpy(), device)
    _close(lin(xd), y_ref)
    dx, grads = lin.backward(xd, to_device(dy, device))
    _close(dx, x.grad)
    _close(grads["weight"], ref.weight.grad)
    _close(grads["bias"], ref.bias.grad)


def test_linear_init_range():
    lin = Linear(16, 8, seed=0)
    bound = 1.0 / np.sqrt(16)  # U(-1/sqrt(in), 1/sqrt(in)) for both
    assert all(np.abs(p).max() <= bound for p in lin.parameters().values())
    assert np.abs(lin.parameters()["weight"]).max() > 0.9 * bound
    assert lin.parameters()["weight"].dtype == np.float32


@pytest.mark.torch
@pytest.mark.parametrize("masked", [False, True])
def test_cross_entropy_matches_torch(masked):
    torch = pytest.importorskip("torch")
    rng = _rng(9)
    logits = rng.standard_normal((4, 6, 7)) * 5.0  # (B, T, C)
    targets = rng.integers(0, 7, (4, 6))  # (B, T)
    mask = (rng.random((4, 6)) < 0.5).astype(np.float64) if masked else None
    ref_targets = targets.copy()
    if masked:
        mask[0, 0] = 1.0
        ref_targets[mask == 0] = -100  # torch's ignore_index is the same exclusion
        targets[mask == 0] = -100  # masked targets must never be read
    z = torch.from_numpy(logits).requires_grad_()
    ref = torch.nn.functional.cross_entropy(z.reshape(-1, 7), torch.from_numpy(ref_targets).reshape(-1))
    ref.backward()
    loss, dz = losses.cross_entropy(logits, targets, mask)
    assert abs(loss - ref.item()) < TOL
    _close(dz, z.grad)


@pytest.mark.torch
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("name", ["bce_with_logits", "mse"])
def test_elementwise_losses_match_torch(name, masked):
    torch = pytest.importorskip("torch")
    rng = _rng(10)
    pred = rng.standard_normal((5, 3)) * 20.0  # large logits: stability matters for BCE
    pred[0, :2] = [80.0, -80.0]
    target = rng.random((5, 3)) if name == "bce_with_logits" else rng.standard_normal((5, 3))
    mask = (rng.random((5, 3)) < 0.5).astype(np.float64) if masked else None
    keep = np.ones((5, 3), bool) if mask is None else mask.astype(bool)
    keep[0, 0] = True
    if mask is not None:
        mask[0, 0] = 1.0
    ref_fn = (torch.nn.functional.binary_cross_entropy_with_logits if name == "bce_with_logits"
              else torch.nn.functional.mse_loss)
    x = torch.from_numpy(pred).requires_grad_()
    keep_t = torch.from_numpy(keep)
    ref = ref_fn(x[keep_t], torch.from_numpy(target)[keep_t])  # mean over the kept elements
    ref.backward()
    loss, dx = getattr(losses, name)(pred, target, mask)
    assert np.isfinite(loss) and abs(loss - ref.item()) < TOL
    _close(dx, x.grad)


# -- errors -------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [10, -1, 12345])
def test_embedding_rejects_out_of_range_ids(bad):
    emb = Embedding(10, 3)
    with pytest.raises(ValueError, match=rf"id {bad} is out of range \[0, 10\)"):
        emb(np.array([[1, 2], [bad, 3]]))
    with pytest.raises(ValueError, match=str(bad)):
        emb.backward(np.array([bad]), np.ones((1, 3), np.float32))


def test_embedding_rejects_non_integer_ids():
    with pytest.raises(ValueError, match="integers"):
        Embedding(10, 3)(np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="padding_idx"):
        Embedding(10, 3, padding_idx=10)


def test_load_state_dict_wrong_shape():
    with pytest.raises(ValueError, match="weight"):
        Linear(4, 3).load_state_dict({"weight": np.zeros((4, 3)), "bias": np.zeros(3)})
    with pytest.raises(ValueError, match="weight"):
        Embedding(5, 2).load_state_dict({"weight": np.zeros((5, 3))})


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="Linear expects"):
        Linear(4, 3)(np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        losses.cross_entropy(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match="integers"):
        losses.cross_entropy(np.zeros((2, 3)), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="shape"):
        losses.mse(np.zeros((2, 3)), np.zeros((3, 2)))
