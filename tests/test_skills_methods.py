"""mtl_lora, hydralora and mixlora: parity with reference implementations and written-out formulas, and the
library's guarantees (identity at init, generation, save/load, per-task export, aux loss in training,
config validation) for each.

References:
- mtl_lora: AdapterHub `adapters` (MTLLoRAConfig) through the committed fixture
  tests/parity/mtl_lora_adapters.safetensors. `adapters` pins transformers to one minor version (1.3.0:
  ~=4.57.6) and does not import beside this project's transformers 5, so it cannot run here; the fixture
  is written by tests/parity/make_mtl_lora_reference.py in its own environment (the command is in that
  script's docstring). adapters keeps the diagonal Lambda_t only (its full matrix type does not construct),
  so the full bottleneck, our default, is checked against the formula written out below.
- mixlora: the `mixlora` package (PyPI 0.2.3, a dev dependency), live. It only has FFN-block MoEs, so one
  adapted linear layer is a phi-style block with an identity activation, fc2 a frozen identity without LoRA
  and the LoRA experts on fc1: y = W1 x + b1 + sum_{top-k} p_k (alpha / r) B_k A_k x (renormalised top-k
  gates sum to 1, so fc2's share of the base output is exact).
- The load-balancing loss: the Switch/Mixtral form written out, and transformers' Mixtral
  `load_balancing_loss_func`, on the same router logits.
- hydralora: the formula written out (the official repo is a patched copy of peft, not a package).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from helpers.compose import compose_train
from helpers.factories import randomize_all, skill_config
from helpers.tiny_models import TASKS, t5_batch, tiny_t5
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from cpoly import SkillConfig, add_skills, export_task_lora, use_tasks
from cpoly.logging.local import read_metrics
from cpoly.skills import SkillConfigError, pop_aux_loss, skilled_layers, task_lora_factors

NEW_METHODS = ("mtl_lora", "hydralora", "mixlora")
MIXED = ["task_b", "task_c", "task_a"]
FIXTURE = Path(__file__).parent / "parity" / "mtl_lora_adapters.safetensors"


class OneLinear(nn.Module):
    """A model that is one linear layer, `lin`, so that add_skills / use_tasks apply to it."""

    def __init__(self, d_in: int, d_out: int, bias: bool = True, dtype=torch.float32) -> None:
        super().__init__()
        self.lin = nn.Linear(d_in, d_out, bias=bias, dtype=dtype)

    def forward(self, x):
        return self.lin(x)


# ---------------------------------------------------------------- one shared A under the other methods


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(method="poly", n_skills_a=1),
        dict(method="poly", n_skills_a=1, mixing="outputs"),
        dict(method="mhr", n_skills_a=1, n_splits=2),
        dict(method="cpoly", n_skills_a=1),
        dict(method="poly", n_skills_a=1, allocation="softmax", bottleneck="diagonal", temperature=0.7),
    ],
    ids=["poly", "poly-outputs", "mhr-S2", "cpoly", "poly-softmax-diagonal"],
)
def test_one_shared_down_projection_is_the_formula(kwargs):
    """n_skills_a=1 under the task-routed methods, in float64 against loops: for example i, the rank-r code
    h_i = sum_q x_i[q-th input block] A_q (PEFT Poly's MHR: the splits' A's stack along the input), and the
    q-th output block is scaling * h_i (sum_k w_iqk B_qk) (plus C-Poly's exclusive skills; a diagonal
    Lambda_t scales the code where set). Evaluation mode: the allocation's weights are deterministic."""
    torch.manual_seed(0)
    model = OneLinear(8, 6, dtype=torch.float64)
    add_skills(model, SkillConfig(task_names=TASKS, target_modules=["lin"], **kwargs))
    layer, c = model.lin, model.lin.config
    assert layer.shared_A.shape[1] == 1 and layer.shared_B.shape[1] == c.n_skills and c.asymmetric
    randomize_all(model)
    model.eval()
    x = torch.randn(3, 4, 8, dtype=torch.float64)
    ids = [2, 0, 1]
    with torch.no_grad(), use_tasks(model, ids):
        got = model(x)
        w = layer.shared_weights(layer.routing.batch)  # (b, S, K)
        expected = layer.base_layer(x).clone()
        S, d_in, d_out = c.n_splits, 8 // c.n_splits, 6 // c.n_splits
        for i, t in enumerate(ids):
            tw = layer.task_weights.weight[t] if c.n_task_skills else None  # C-Poly: trainable W_B's row
            code = 0
            for q in range(S):
                a = layer.shared_A[q, 0]
                if tw is not None:
                    a = a + sum(tw[j] * layer.task_A[q, j] for j in range(tw.shape[0]))
                code = code + x[i, :, q * d_in : (q + 1) * d_in] @ a
            if c.bottleneck == "diagonal":
                code = code * layer.bottleneck.weight[t]
            for q in range(S):
                b = sum(w[i, q, k] * layer.shared_B[q, k] for k in range(c.n_skills))
                if tw is not None:
                    b = b + sum(tw[j] * layer.task_B[q, j] for j in range(tw.shape[0]))
                expected[i, :, q * d_out : (q + 1) * d_out] += c.scaling * code @ b
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=0)


# ---------------------------------------------------------------- mtl_lora


def test_mtl_lora_matches_adapters_fixture():
    """cpoly's mtl_lora with a diagonal bottleneck against adapters 1.3.0's MTL-LoRA: the same weights give
    the same outputs in training and evaluation mode (fp32, 1e-6). adapters stores A (r, d_in), B_i (d_out, r)
    (ours: A (d_in, r), B_i (r, d_out)), diag(Lambda_t) as `task_specific.values` and the mixing logits w_t as
    `weights`, mixed by exp(w_t / tau) / sum: our softmax(logits_t / temperature). Regenerate the fixture with
    tests/parity/make_mtl_lora_reference.py (adapters pins transformers ~=4.57.6, so not in this venv)."""
    ref = load_file(str(FIXTURE))
    with safe_open(str(FIXTURE), "pt") as f:
        meta = f.metadata()
    assert meta["adapters"] == "1.3.0" and meta["dropout"] == "0.0"
    tasks = meta["tasks"].split(",")
    d_in, d_out, r, n = (int(meta[k]) for k in ("d_in", "d_out", "r", "n_up_projection"))
    model = OneLinear(d_in, d_out)
    with torch.no_grad():
        model.lin.weight.copy_(ref["base.weight"])
        model.lin.bias.copy_(ref["base.bias"])
    config = SkillConfig(
        method="mtl_lora",
        task_names=tasks,
        target_modules=["lin"],
        rank=r,
        n_skills=n,
        alpha=float(meta["alpha"]),
        temperature=float(meta["weights_sharpness"]),
        bottleneck="diagonal",
    )
    add_skills(model, config)
    layer = model.lin
    with torch.no_grad():
        layer.shared_A[0, 0].copy_(ref["lora_A"].T)
        for i in range(n):
            layer.shared_B[0, i].copy_(ref["lora_B"][i].T)
        for t in range(len(tasks)):
            layer.allocation.logits[t].copy_(ref[f"task{t}.weights"])
            layer.bottleneck.weight[t].copy_(ref[f"task{t}.values"])
    assert layer.shared_A.shape == (1, 1, d_in, r) and layer.shared_B.shape == (1, n, r, d_out)
    for mode in ("train", "eval"):
        model.train(mode == "train")
        with use_tasks(model, ref["task_ids"]):
            got = model(ref["x"])
        torch.testing.assert_close(got, ref[f"y_{mode}"], atol=1e-6, rtol=0)


def mtl_lora_delta(layer, x: torch.Tensor, task_ids: list[int]) -> torch.Tensor:
    """(alpha / r) x A Lambda_t sum_i softmax(w_t / tau)_i B_i, per example, written out."""
    c = layer.config
    A = layer.shared_A[0, 0]  # (d_in, r)
    out = []
    for b, t in enumerate(task_ids):
        lam = layer.bottleneck.weight[t]
        lam = lam if lam.dim() == 2 else torch.diag(lam)
        z = layer.allocation.logits[t] / c.temperature
        p = torch.exp(z - z.max()) / torch.exp(z - z.max()).sum()
        mixed_b = sum(p[i] * layer.shared_B[0, i] for i in range(c.n_skills))
        out.append((c.alpha / c.rank) * (x[b] @ A @ lam @ mixed_b))
    return torch.stack(out)


@pytest.mark.parametrize("bottleneck", ["full", "diagonal"])
def test_mtl_lora_unknown_task_mixes_uniformly_through_the_identity(bottleneck):
    """unknown_task=uniform: an unseen task gets uniform weights over the B's and Lambda = identity,
    beside known tasks in the same batch (float64)."""
    torch.manual_seed(0)
    model = OneLinear(10, 6, dtype=torch.float64)
    config = SkillConfig(
        method="mtl_lora", task_names=TASKS, target_modules=["lin"], unknown_task="uniform", bottleneck=bottleneck
    )
    add_skills(model, config)
    layer = model.lin
    randomize_all(model)
    x = torch.randn(2, 5, 10, dtype=torch.float64)
    with torch.no_grad(), use_tasks(model, ["task_b", "never_seen"]):
        got = model(x)
    mixed_b = layer.shared_B[0].mean(0)  # uniform over the n up-projections
    unseen = layer.config.scaling * (x[1] @ layer.shared_A[0, 0] @ mixed_b)
    known = mtl_lora_delta(layer, x[:1], [1])[0]
    with torch.no_grad():
        torch.testing.assert_close(got[0], layer.base_layer(x[0]) + known, atol=1e-10, rtol=0)
        torch.testing.assert_close(got[1], layer.base_layer(x[1]) + unseen, atol=1e-10, rtol=0)


def test_mtl_lora_full_bottleneck_is_the_formula():
    """The default mtl_lora (full r x r Lambda_t, identity init; n=3 up-projections; tau=0.1) in float64."""
    torch.manual_seed(0)
    model = OneLinear(10, 6, dtype=torch.float64)
    add_skills(model, skill_config("mtl_lora", target_modules=["lin"]))
    layer = model.lin
    c = layer.config
    assert (c.rank, c.n_skills, c.n_skills_a, c.temperature, c.bottleneck) == (4, 3, 1, 0.1, "full")
    assert layer.bottleneck.weight.shape == (3, 4, 4) and layer.allocation.logits.shape == (3, 3)
    torch.testing.assert_close(layer.bottleneck.weight.detach(), torch.eye(4, dtype=torch.float64).expand(3, 4, 4))
    randomize_all(model)
    x = torch.randn(4, 5, 10, dtype=torch.float64)
    ids = [2, 0, 1, 2]
    with torch.no_grad():
        expected = model.lin.base_layer(x) + mtl_lora_delta(layer, x, ids)
        for mode in ("train", "eval"):  # softmax allocation: no noise in training
            model.train(mode == "train")
            with use_tasks(model, ids):
                torch.testing.assert_close(model(x), expected, atol=1e-10, rtol=0)


# ---------------------------------------------------------------- hydralora


@pytest.mark.parametrize("temperature", [None, 0.5])
def test_hydralora_is_the_formula(temperature):
    """(alpha / r) sum_i softmax(W_g x / tau)_i x A B_i on every token, dense, float64, no task ids needed."""
    torch.manual_seed(0)
    model = OneLinear(10, 6, dtype=torch.float64)
    config = SkillConfig(
        method="hydralora", task_names=TASKS, target_modules=["lin"], alpha=2.0, temperature=temperature
    )
    add_skills(model, config)
    layer = model.lin
    assert layer.shared_A.shape == (1, 1, 10, 4) and layer.shared_B.shape == (1, 3, 4, 6)
    assert layer.gate.proj.weight.shape == (3, 10) and config.top_k is None
    randomize_all(model, std=1.0)
    tau = config.temperature
    A, Bs, Wg = layer.shared_A[0, 0], layer.shared_B[0], layer.gate.proj.weight
    for x in (torch.randn(3, 5, 10, dtype=torch.float64), torch.randn(7, 10, dtype=torch.float64)):
        with torch.no_grad():
            logits = x @ Wg.T / tau
            g = torch.exp(logits - logits.amax(-1, keepdim=True))
            g = g / g.sum(-1, keepdim=True)
            delta = sum(g[..., i : i + 1] * (x @ A @ Bs[i]) for i in range(3))
            expected = x @ layer.base_layer.weight.T + layer.base_layer.bias + (2.0 / 4) * delta
            for mode in ("train", "eval"):
                model.train(mode == "train")
                torch.testing.assert_close(model(x), expected, atol=1e-10, rtol=0)


# ---------------------------------------------------------------- mixlora


def _mixlora_reference_block(D, E, K, R, alpha, seed=7):
    """mixlora's MixLoraSparseMoe around a phi-style block that is one linear layer (see the module
    docstring), with seeded random base, router and expert weights; returns it and the weights."""
    mixlora_config = pytest.importorskip(
        "mixlora.config", reason="mixlora==0.2.3 (dev extra) is not installed: pip install -e '.[dev]'"
    )
    from mixlora.lora_linear import LoraLinear
    from mixlora.model import MixLoraSparseMoe

    config = mixlora_config.MixLoraConfig.from_config(
        {
            "bias": "none",
            "peft_type": "MIXLORA",
            "r": R,
            "lora_alpha": alpha,
            "lora_dropout": 0.1,  # mixlora asserts > 0; its experts run in eval mode below
            "target_modules": ["fc1"],
            "routing_strategy": "mixlora",
            "num_experts": E,
            "act_fn": "linear",
            "top_k": K,
            "base_model_name_or_path": "none",
            "task_type": "CAUSAL_LM",
        }
    )
    config.model_type_, config.dtype_ = "phi", torch.float32
    assert config.jitter_noise_ == 0.0
    g = torch.Generator().manual_seed(seed)
    block = nn.Module()
    block.fc1, block.fc2 = nn.Linear(D, D), nn.Linear(D, D, bias=False)
    weights = {}
    with torch.no_grad():
        block.fc1.weight.copy_(torch.randn(D, D, generator=g) * 0.3)
        block.fc1.bias.copy_(torch.randn(D, generator=g) * 0.1)
        block.fc2.weight.copy_(torch.eye(D))
    moe = MixLoraSparseMoe(block, config)
    moe.gate_ = weights["gate"] = torch.randn(E, D, generator=g)
    for e in range(E):
        a, b = torch.randn(R, D, generator=g) * 0.3, torch.randn(D, R, generator=g) * 0.3
        weights[f"A{e}"], weights[f"B{e}"] = a, b
        # experts_ is a plain dict, out of reach of moe.eval(): put each expert in eval mode (no dropout)
        moe.experts_[f"experts.{e}.fc1"] = LoraLinear(block.fc1, config, (a, b)).eval()
    return moe, block, weights


def test_mixlora_matches_the_mixlora_package():
    """Top-2 of 4 LoRA experts (r=2, alpha=4) under a softmax router, renormalised: the same outputs as
    mixlora 0.2.3 in fp32 (1e-6), our layer in training and evaluation mode (neither has noise)."""
    D, E, K, R, alpha = 8, 4, 2, 2, 4.0
    moe, block, w = _mixlora_reference_block(D, E, K, R, alpha)
    x = torch.randn(3, 5, D, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = moe(x.clone())  # it scales its input in place when jitter_noise > 0
    model = OneLinear(D, D)
    model.lin.load_state_dict(block.fc1.state_dict())
    config = SkillConfig(
        method="mixlora", task_names=TASKS, target_modules=["lin"], rank=R, n_skills=E, top_k=K, alpha=alpha
    )
    add_skills(model, config)
    layer = model.lin
    with torch.no_grad():
        layer.gate.proj.weight.copy_(w["gate"])
        for e in range(E):
            layer.shared_A[0, e].copy_(w[f"A{e}"].T)
            layer.shared_B[0, e].copy_(w[f"B{e}"].T)
    # the routing is not degenerate: the top-2 choices differ between tokens
    chosen = torch.softmax(x.reshape(-1, D) @ w["gate"].T, -1).topk(K, -1).indices.sort(-1).values
    assert len({tuple(c) for c in chosen.tolist()}) > 1
    for mode in ("train", "eval"):
        model.train(mode == "train")
        with torch.no_grad():
            got = model(x)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def switch_loss_written_out(logits: torch.Tensor, k: int) -> torch.Tensor:
    """K * sum_i f_i P_i: f_i the share of (token, choice) pairs routed to expert i (a token's k choices each
    count), P_i the mean router probability of expert i; float64, loops."""
    logits = logits.double().reshape(-1, logits.shape[-1])
    n, n_experts = logits.shape
    probs = torch.softmax(logits, -1)
    chosen = probs.topk(k, -1).indices
    f = torch.zeros(n_experts, dtype=torch.float64)
    for token in range(n):
        for j in range(k):
            f[chosen[token, j]] += 1.0 / n
    P = probs.mean(0)
    return n_experts * sum(f[i] * P[i] for i in range(n_experts))


def test_mixlora_aux_loss_is_the_switch_mixtral_loss():
    """One layer: pop_aux_loss equals the written-out loss and transformers' Mixtral load_balancing_loss_func
    on the layer's router logits; it carries a gradient to the router; none in eval mode or without grad."""
    torch.manual_seed(0)
    model = OneLinear(8, 8)
    add_skills(model, skill_config("mixlora", target_modules=["lin"]))
    layer = model.lin
    assert (layer.config.n_skills, layer.config.top_k, layer.config.aux_loss_coef) == (4, 2, 0.001)
    with torch.no_grad():
        layer.gate.proj.weight.normal_(std=1.0)  # an unbalanced router
    x = torch.randn(4, 6, 8)
    model.train()
    model(x)
    aux = pop_aux_loss(model)
    assert pop_aux_loss(model) is None  # popped
    logits = (x @ layer.gate.proj.weight.T).detach()
    expected = switch_loss_written_out(logits, 2)
    torch.testing.assert_close(aux.double(), expected, atol=1e-6, rtol=0)
    assert abs(aux.item() - 2.0) > 1e-3  # not the balanced value (k)
    mixtral = pytest.importorskip("transformers.models.mixtral.modeling_mixtral")
    hf = mixtral.load_balancing_loss_func((logits.reshape(-1, 4),), num_experts=4, top_k=2)
    torch.testing.assert_close(aux, hf, atol=1e-6, rtol=0)
    aux.backward()
    assert layer.gate.proj.weight.grad.abs().sum() > 0
    with torch.no_grad():
        model(x)
    model.eval()
    model(x)
    assert pop_aux_loss(model) is None


def test_aux_loss_pools_the_layers_as_mixtral_does():
    """On a model: one loss over every adapted layer's tokens pooled, as transformers' Mixtral function
    computes it given every layer's router logits (not the mean of per-layer losses)."""
    mixtral = pytest.importorskip("transformers.models.mixtral.modeling_mixtral")
    model = add_skills(tiny_t5(), skill_config("mixlora"))
    randomize_all(model, std=1.0)
    logits = {}
    for name, layer in skilled_layers(model):
        layer.register_forward_hook(
            lambda mod, args, out, name=name: logits.__setitem__(name, (args[0] @ mod.gate.proj.weight.T).detach())
        )
    model.train()
    batch = t5_batch()
    model(**batch)
    aux = pop_aux_loss(model)
    n_layers = sum(1 for _ in skilled_layers(model))
    assert len(logits) == n_layers == 12  # q and v of 2 encoder, 2 decoder self- and 2 cross-attention blocks
    pooled = mixtral.load_balancing_loss_func(tuple(z.reshape(-1, 4) for z in logits.values()), num_experts=4, top_k=2)
    torch.testing.assert_close(aux, pooled, atol=1e-6, rtol=0)
    per_layer = [mixtral.load_balancing_loss_func((z.reshape(-1, 4),), num_experts=4, top_k=2) for z in logits.values()]
    assert abs(aux - torch.stack(per_layer).mean()) > 1e-4  # the test tells pooling from a mean of layers


def test_aux_loss_reaches_training(tmp_path):
    """A smoke run of the train loop with mixlora logs train/aux_loss (top-2 of 4 near a balanced router:
    about k = 2)."""
    from cpoly.run import train

    overrides = [
        "debug=smoke",
        "method=mixlora",
        "benchmark.n_tasks=3",
        "benchmark.n_train_per_task=8",
        "benchmark.n_eval_per_task=2",
    ]
    results = train(compose_train(overrides, tmp_path))
    assert results["status"] == "finished" and results["method"] == "mixlora"
    logged = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "train/loss" in r]
    assert logged and all("train/aux_loss" in r for r in logged)
    assert all(1.5 < r["train/aux_loss"] < 2.5 for r in logged), logged


def test_the_aux_loss_joins_the_objective_but_not_the_logged_loss(tmp_path):
    """The same two steps with aux_loss_coef 0 and 1: the first logged loss (before any update) is equal,
    so train/loss is the task loss alone; the gates end apart, so the aux term reached backward (with
    coefficient 0 it is not even computed)."""
    from cpoly.run import train

    base = ["debug=smoke", "method=mixlora", "benchmark.n_tasks=3", "benchmark.n_train_per_task=8"]
    base += ["benchmark.n_eval_per_task=2", "trainer.max_steps=2", "trainer.log_every=1"]
    runs = {}
    for coef in (0.0, 1.0):
        out = tmp_path / f"coef{coef}"
        train(compose_train([*base, f"method.aux_loss_coef={coef}"], out))
        first = next(r for r in read_metrics(out / "metrics.jsonl") if "train/loss" in r)
        runs[coef] = (first, load_file(str(out / "last" / "adapter_model.safetensors")))
    (plain, plain_weights), (with_aux, aux_weights) = runs[0.0], runs[1.0]
    assert "train/aux_loss" not in plain and with_aux["train/aux_loss"] > 0
    assert with_aux["train/loss"] == plain["train/loss"]
    gates = [k for k in plain_weights if k.endswith("gate.proj.weight")]
    assert gates and all(not torch.equal(plain_weights[k], aux_weights[k]) for k in gates)


# ---------------------------------------------------------------- the library's guarantees, per method


def test_mtl_lora_task_factors_are_the_per_task_update():
    """task_lora_factors gives each layer's A_t = A Lambda_t and B_t = sum_i softmax(w_t / tau)_i B_i, so
    scaling * x A_t B_t is the layer's delta for task t (float64, exact up to rounding); rank r."""
    model = add_skills(tiny_t5().double(), skill_config("mtl_lora"))
    randomize_all(model)
    x = torch.randn(2, 3, 32, dtype=torch.float64)
    for t, task in enumerate(TASKS):
        factors = task_lora_factors(model, task)
        assert set(factors) == {name for name, _ in skilled_layers(model)}
        for name, layer in skilled_layers(model):
            a_t, b_t = factors[name]
            assert a_t.shape == (32, 4) and b_t.shape == (4, 32)
            c = layer.config
            torch.testing.assert_close(a_t, layer.shared_A[0, 0] @ layer.bottleneck.weight[t], atol=1e-12, rtol=0)
            p = torch.softmax(layer.allocation.logits[t] / c.temperature, -1)
            torch.testing.assert_close(b_t, torch.einsum("k,kro->ro", p, layer.shared_B[0]), atol=1e-12, rtol=0)
            with torch.no_grad(), use_tasks(model, [task, task]):
                delta = layer(x) - layer.base_layer(x)
            torch.testing.assert_close(delta, c.scaling * x @ a_t @ b_t, atol=1e-12, rtol=0)
            torch.testing.assert_close(delta, mtl_lora_delta(layer, x, [t, t]).detach(), atol=1e-12, rtol=0)


def test_mtl_lora_exports_a_peft_lora_per_task(tmp_path):
    peft = pytest.importorskip("peft")
    base = tiny_t5()
    model = add_skills(copy.deepcopy(base), skill_config("mtl_lora"))
    randomize_all(model)
    batch = t5_batch()
    for task in ("task_a", "task_c"):
        export_task_lora(model, task, tmp_path / task)
        config = json.loads((tmp_path / task / "adapter_config.json").read_text())
        assert config["peft_type"] == "LORA" and config["r"] == 4
        lora = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / task).eval()
        with use_tasks(model, [task] * 3):
            expected = model(**batch).logits
        torch.testing.assert_close(lora(**batch).logits, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["hydralora", "mixlora"])
def test_token_routed_methods_have_no_per_task_lora(method, tmp_path):
    model = add_skills(tiny_t5(), skill_config(method))
    with pytest.raises(ValueError, match=rf"{method}\b.*token"):
        task_lora_factors(model, "task_a")
    with pytest.raises(ValueError, match=rf"{method}\b.*token"):
        export_task_lora(model, "task_a", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- config validation


@pytest.mark.parametrize(
    "kwargs, field_and_value",
    [
        (dict(method="mtl_lora", n_skills=3, n_skills_a=2), "n_skills_a=2"),
        (dict(method="hydralora", n_skills=3, n_skills_a=2), "n_skills_a=2"),
        (dict(method="cpoly", bottleneck="full"), "bottleneck='full'"),
        (dict(method="cpoly", bottleneck="diagonal"), "bottleneck='diagonal'"),
        (dict(method="poly", aux_loss_coef=0.01), "aux_loss_coef=0.01"),
        (dict(method="mtl_lora", top_k=2), "top_k=2"),
    ],
)
def test_invalid_configs_name_the_field_and_value(kwargs, field_and_value):
    with pytest.raises(SkillConfigError, match=rf"SkillConfig\.{field_and_value}"):
        SkillConfig(task_names=TASKS, **kwargs)
