import pytest
import torch

from mnistlab.config import OptimConfig, ScheduleConfig
from mnistlab.errors import ConfigError
from mnistlab.optim import Schedule, build_optimizer


def _schedule(**kw) -> Schedule:
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))], OptimConfig(lr=1.0))
    return Schedule(opt, ScheduleConfig(**kw), steps_per_epoch=10, epochs=10)


def test_warmup_is_linear_then_cosine_decays_to_min():
    s = _schedule(name="cosine", warmup_epochs=1, min_lr=0.1)
    assert s.factor(0) == pytest.approx(0.1)
    assert s.factor(9) == pytest.approx(1.0)
    assert s.factor(10) == pytest.approx(1.0)
    assert s.factor(99) == pytest.approx(0.1, abs=1e-3)
    assert all(s.factor(i) >= s.factor(i + 1) - 1e-12 for i in range(10, 99))


def test_step_and_constant_and_onecycle():
    s = _schedule(name="step", step_epochs=3, gamma=0.5)
    assert [s.factor(i) for i in (0, 29, 30, 60)] == [1.0, 1.0, 0.5, 0.25]
    assert _schedule(name="constant").factor(57) == 1.0
    oc = _schedule(name="onecycle")
    peak = max(range(100), key=oc.factor)
    assert 20 <= peak <= 30 and oc.factor(99) < 0.05


def test_plateau_decays_after_patience():
    s = _schedule(name="plateau", patience=1, gamma=0.1)
    for loss in (1.0, 1.0, 1.0):
        s.epoch_end(loss)
    assert s.factor(5) == pytest.approx(0.1)
    state = s.state_dict()
    t = _schedule(name="plateau", patience=1, gamma=0.1)
    t.load_state_dict(state)
    assert t.factor(5) == s.factor(5)


def test_set_step_scales_every_group():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = build_optimizer([{"params": [a], "lr": 1.0}, {"params": [b], "lr": 0.1}], OptimConfig(lr=1.0))
    s = Schedule(opt, ScheduleConfig(name="cosine"), 10, 1)
    s.set_step(5)
    assert opt.param_groups[1]["lr"] == pytest.approx(0.1 * s.factor(5))


def test_unknown_names_are_config_errors():
    with pytest.raises(ConfigError, match="sgd"):
        build_optimizer([torch.nn.Parameter(torch.zeros(1))], OptimConfig(name="lion"))
    with pytest.raises(ConfigError, match="cosine"):
        _schedule(name="exp")


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_fused_adam_takes_the_same_steps_as_the_plain_one(name: str):
    torch.manual_seed(0)
    start = [torch.randn(5, 3), torch.randn(7)]
    grads = [[torch.randn_like(t) for t in start] for _ in range(4)]
    finals = {}
    for fused in (True, False):
        params = [torch.nn.Parameter(t.clone()) for t in start]
        opt = build_optimizer(params, OptimConfig(name=name, lr=0.1, weight_decay=0.01, fused=fused))
        assert bool(opt.defaults["fused"]) is fused
        for step in grads:
            for p, g in zip(params, step, strict=True):
                p.grad = g.clone()
            opt.step()
        finals[fused] = [p.detach() for p in params]
    for a, b, s0 in zip(finals[True], finals[False], start, strict=True):
        assert not torch.equal(a, s0)  # the steps moved the weights
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fused_is_skipped_where_no_kernel_can_take_the_parameters():
    params = [torch.nn.Parameter(torch.zeros(2, dtype=torch.float64)), torch.nn.Parameter(torch.zeros(2))]
    assert build_optimizer(params, OptimConfig(name="adamw")).defaults["fused"]
    meta = [torch.nn.Parameter(torch.zeros(2, device="meta"))]
    assert not build_optimizer(meta, OptimConfig(name="adamw")).defaults["fused"]
