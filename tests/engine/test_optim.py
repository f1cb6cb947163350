"""SGD, Adam and clip_grad_norm_: PyTorch parity over several steps, in-place updates, resume."""
import numpy as np
import pytest

from model_core.backend import gpu_available, to_device, to_numpy
from model_core.nn import Linear
from model_core.optim import SGD, Adam, clip_grad_norm_

DEVICES = ["cpu", pytest.param("gpu", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not gpu_available(), reason="needs CuPy and a CUDA device")])]
TOL = 1e-6
SHAPES = {"weight": (3, 4), "bias": (3,)}


def _init(seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s) for k, s in SHAPES.items()}


def _noise(step):
    rng = np.random.default_rng(100 + step)
    return {k: rng.standard_normal(s) for k, s in SHAPES.items()}


def _grad(p, noise):
    """Gradient of a quadratic plus fixed noise: depends on p, so any update error compounds."""
    return 2.0 * (p - 0.5) + noise


def _run_ours(opt_cls, kwargs, device, steps=5, lr_at=None, skip_bias_at=None):
    params = {k: to_device(v, device) for k, v in _init().items()}
    opt = opt_cls(params, **kwargs)
    for t in range(steps):
        if t == lr_at:
            opt.lr *= 0.5
        noise = _noise(t)
        grads = {k: _grad(p, to_device(noise[k], device)) for k, p in params.items() if
                 not (k == "bias" and t == skip_bias_at)}
        opt.step(grads)
    return {k: to_numpy(v) for k, v in params.items()}


def _run_torch(torch, opt_cls, kwargs, steps=5, lr_at=None, skip_bias_at=None):
    params = {k: torch.tensor(v, requires_grad=True) for k, v in _init().items()}
    opt = opt_cls(list(params.values()), **kwargs)
    for t in range(steps):
        if t == lr_at:
            for group in opt.param_groups:
                group["lr"] *= 0.5
        noise = _noise(t)
        for k, p in params.items():
            p.grad = None if (k == "bias" and t == skip_bias_at) else _grad(p.detach(), torch.from_numpy(noise[k]))
        opt.step()
    return {k: v.detach().numpy() for k, v in params.items()}


SGD_CONFIGS = [
    {"lr": 0.1},
    {"lr": 0.1, "momentum": 0.9},
    {"lr": 0.05, "momentum": 0.9, "nesterov": True},
    {"lr": 0.1, "momentum": 0.8, "weight_decay": 0.01},
    {"lr": 0.1, "momentum": 0.5, "nesterov": True, "weight_decay": 0.1},
]
ADAM_CONFIGS = [
    {"lr": 0.01},
    {"lr": 0.05, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.01},
]


@pytest.mark.torch
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name,kwargs", [("SGD", c) for c in SGD_CONFIGS] + [("Adam", c) for c in ADAM_CONFIGS])
def test_matches_torch_over_5_steps(device, name, kwargs):
    torch = pytest.importorskip("torch")
    ours_cls, ref_cls = {"SGD": (SGD, torch.optim.SGD), "Adam": (Adam, torch.optim.Adam)}[name]
    # lr changed mid-run and a step where 'bias' has no gradient (torch skips grad=None too)
    opts = {"lr_at": 3, "skip_bias_at": 2}
    ours = _run_ours(ours_cls, kwargs, device, **opts)
    ref = _run_torch(torch, ref_cls, kwargs, **opts)
    for k in SHAPES:
        np.testing.assert_allclose(ours[k], ref[k], rtol=TOL, atol=TOL)


@pytest.mark.parametrize("opt_cls,kwargs", [(SGD, {"lr": 0.1, "momentum": 0.9}), (Adam, {"lr": 0.01})])
def test_updates_module_parameters_in_place(opt_cls, kwargs):
    lin = Linear(4, 3, dtype="float64", seed=0)
    live = dict(lin.parameters())
    before = lin.state_dict()
    grads = lin.zero_grads()
    grads["weight"] += 1.0
    grads_copy = {k: v.copy() for k, v in grads.items()}
    opt_cls(lin.parameters(), **kwargs).step(grads)
    assert all(lin.parameters()[k] is live[k] for k in live)  # same arrays, mutated
    assert not np.array_equal(lin.parameters()["weight"], before["weight"])
    for k in grads:  # the caller's gradients are not modified
        np.testing.assert_array_equal(grads[k], grads_copy[k])


@pytest.mark.parametrize("opt_cls,kwargs", [
    (SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    (Adam, {"lr": 0.01, "weight_decay": 0.01}),
])
def test_resume_from_state_dict_is_exact(opt_cls, kwargs):
    straight = _run_ours(opt_cls, kwargs, "cpu", steps=5)

    params = {k: v.copy() for k, v in _init().items()}
    opt = opt_cls(params, **kwargs)
    for t in range(3):
        opt.step({k: _grad(p, _noise(t)[k]) for k, p in params.items()})
    saved = opt.state_dict()
    saved_params = {k: v.copy() for k, v in params.items()}
    opt.step({k: np.ones(s) for k, s in SHAPES.items()})  # later steps must not leak into `saved`

    params = saved_params
    resumed = opt_cls(params, lr=123.0)
    resumed.load_state_dict(saved)
    assert resumed.lr == kwargs["lr"]
    for t in range(3, 5):
        resumed.step({k: _grad(p, _noise(t)[k]) for k, p in params.items()})
    for k in SHAPES:
        np.testing.assert_array_equal(params[k], straight[k])


def test_state_dict_is_plain_host_data():
    opt = Adam(_init(), lr=0.01)
    opt.step(_noise(0))
    sd = opt.state_dict()
    assert sd["state"]["weight"]["step"] == 1 and isinstance(sd["state"]["weight"]["step"], int)
    assert isinstance(sd["state"]["bias"]["exp_avg"], np.ndarray)
    assert sd["state"]["bias"]["exp_avg"] is not opt.state["bias"]["exp_avg"]


@pytest.mark.parametrize("opt_cls,key", [(SGD, "momentum_buffer"), (Adam, "exp_avg_sq")])
def test_load_state_dict_rejects_bad_state(opt_cls, key):
    opt = opt_cls(_init(), lr=0.1, momentum=0.9) if opt_cls is SGD else opt_cls(_init(), lr=0.1)
    opt.step(_noise(0))
    sd = opt.state_dict()
    sd["state"]["weight"][key] = np.zeros((4, 3))
    fresh = opt_cls(_init(), lr=0.1, momentum=0.9) if opt_cls is SGD else opt_cls(_init(), lr=0.1)
    with pytest.raises(ValueError, match="'weight'.*shape"):
        fresh.load_state_dict(sd)
    assert fresh.state == {}  # nothing half-loaded
    sd["state"]["nope"] = sd["state"].pop("weight")
    with pytest.raises(KeyError, match="nope"):
        fresh.load_state_dict(sd)
    with pytest.raises(KeyError, match="nope"):
        fresh.step({"nope": np.zeros(3)})


def test_bad_hyperparameters_raise():
    with pytest.raises(ValueError):
        SGD(_init(), lr=0.1, nesterov=True)
    with pytest.raises(ValueError):
        Adam(_init(), betas=(0.9, 1.0))
    with pytest.raises(ValueError):
        SGD(_init(), lr=-1.0)


@pytest.mark.torch
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_clip_grad_norm_matches_torch(device, max_norm):
    torch = pytest.importorskip("torch")
    grads = _noise(0)
    tensors = {k: torch.zeros(v.shape, dtype=torch.float64, requires_grad=True) for k, v in grads.items()}
    for k, t in tensors.items():
        t.grad = torch.from_numpy(grads[k].copy())
    ref_total = torch.nn.utils.clip_grad_norm_(list(tensors.values()), max_norm)
    ours = {k: to_device(v, device) for k, v in grads.items()}
    total = clip_grad_norm_(ours, max_norm)
    assert isinstance(total, float) and abs(total - ref_total.item()) < TOL
    for k in grads:
        np.testing.assert_allclose(to_numpy(ours[k]), tensors[k].grad.numpy(), rtol=TOL, atol=TOL)
    if max_norm < total:
        assert abs(np.sqrt(sum((to_numpy(g) ** 2).sum() for g in ours.values())) - max_norm) < 1e-5


def test_clip_grad_norm_edge_cases():
    assert clip_grad_norm_({}, 1.0) == 0.0
    g = {"w": np.array([np.inf, 1.0])}
    assert clip_grad_norm_(g, 1.0) == np.inf and g["w"][1] == 1.0  # left alone for the caller to skip
