"""The Hydra config: every option composes and validates; bad values fail at compose time or in the
cross-field checks, before any model or data is loaded."""

from __future__ import annotations

import pytest
from helpers.compose import CONF_DIR, compose_train, group_options
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from cpoly.config import ConfigError, check_config, skills_tag, to_object

GROUPS = ["backbone", "method", "benchmark", "optim", "trainer", "transfer", "logger", "paths"]


@pytest.mark.parametrize("group, option", [(g, o) for g in GROUPS for o in group_options(g)])
def test_every_option_composes_and_its_name_is_its_file_name(group, option, tmp_path):
    cfg = compose_train([f"{group}={option}"], output_dir=tmp_path)
    node = cfg[group]
    if "name" in node:
        assert node.name == option
    obj = to_object(node)  # the dataclass: schema types and __post_init__ checks
    assert type(obj).__name__.endswith("Config")


@pytest.mark.parametrize("option", group_options("experiment"))
def test_every_experiment_composes_and_passes_the_checks(option, tmp_path):
    cfg = compose_train([f"experiment={option}", f"paths.log_dir={tmp_path / 'logs'}"], output_dir=tmp_path)
    if cfg.get("init_from"):  # a transfer stage 2: every check passes up to the library, which stage 1 writes
        library = tmp_path / "logs" / "transfer_library"
        assert str(cfg.init_from).startswith(str(library))
        with pytest.raises(ConfigError, match=f"init_from={library}/.*: no such folder"):
            check_config(cfg)  # the library check is the last of the checks
        return
    check_config(cfg)


@pytest.mark.parametrize("option", group_options("debug"))
def test_debug_options_compose(option, tmp_path):
    cfg = compose_train([f"debug={option}"], output_dir=tmp_path)
    assert cfg.task_name == "debug" and cfg.logger.name == "none"


def test_default_is_cpoly_on_synthetic_with_the_pretrained_strings_t5(tmp_path):
    cfg = compose_train([], output_dir=tmp_path, test_backbone=False)
    assert (cfg.method.name, cfg.benchmark.name, cfg.backbone.name) == ("cpoly", "synthetic", "strings_t5")
    assert cfg.backbone.source == "inhouse" and cfg.benchmark.private_substitutions == 2
    assert cfg.run_name == "synthetic-strings_t5-cpoly-a3b1r2-s1"
    assert cfg.group == "synthetic-strings_t5-cpoly-a3b1r2"
    assert cfg.logger.group == cfg.group
    check_config(cfg)


RUN_NAME_TAGS = [
    (dict(method="cpoly", n_skills=3, n_task_skills=1, n_splits=1, rank=2), "a3b1r2"),
    (dict(method="mhr", n_skills=4, n_task_skills=0, n_splits=8, rank=2), "k4s8r2"),
    (dict(method="moe_lora", n_skills=4, n_task_skills=0, n_splits=1, rank=2), "e4r2"),
    (dict(method="mtl_lora"), "n3r4"),
    (dict(method="hydralora", n_skills=3, n_task_skills=0, n_splits=1, rank=4), "h3r4"),
    (dict(method="mixlora"), "e4r2"),
    # layer settings off the method default show: one shared A, softmax allocation, a bottleneck, top-k, aux
    (
        dict(method="poly", n_skills=4, n_skills_a=1, allocation="softmax", bottleneck="diagonal"),
        "k4r2ka1zsoftmaxLdiagonal",
    ),
    (dict(method="mixlora", n_skills=4, rank=2, top_k=1, aux_loss_coef=0.01), "e4r2top1aux0.01"),
    (dict(method="mixlora", n_skills=4, rank=2, n_skills_a=4, top_k=2, aux_loss_coef=0.001), "e4r2"),
    (dict(method="shared_lora", n_skills=1, n_task_skills=0, n_splits=1, rank=8), "r8"),
    (dict(method="poly"), "k4r2"),  # method defaults fill nulls
    # a parameter-matched run shows the knob it sizes as M and names what it matches
    (dict(method="poly", rank=2, match_params="cpoly", match_by="n_skills"), "kMr2-match_cpoly"),
    (dict(method="shared_lora", n_skills=1, match_params="cpoly", match_by="rank"), "rM-match_cpoly"),
    (dict(method="cpoly", n_task_skills=2, rank=2, match_params="cpoly_b3"), "aMb2r2-match_cpoly_b3"),
]


@pytest.mark.parametrize("method, tag", RUN_NAME_TAGS)
def test_run_names_carry_the_key_numbers(method, tag):
    assert skills_tag(method) == tag


def test_experiments_live_at_the_top_level_and_state_only_their_deltas(tmp_path):
    """experiments/<name>.yaml are the options of `experiment=` (no copies under conf/); a paper setting is
    one base per benchmark and backbone with the method as an ordinary override."""
    assert not (CONF_DIR / "experiment").exists()
    assert "superni-flan_t5_large" in group_options("experiment")
    for method in ("poly", "task_lora"):
        cfg = compose_train(["experiment=superni-flan_t5_large", f"method={method}"], output_dir=tmp_path)
        assert (cfg.backbone.name, cfg.benchmark.name, cfg.method.name) == ("flan_t5_large", "superni", method)
        assert cfg.trainer.max_steps == 12500
    for path in sorted((CONF_DIR.parent / "experiments").glob("*.yaml")):
        header = path.read_text().split("defaults:")[0].split("hydra:")[0]
        assert "Reproduces:" in header and "Time:" in header and "Budget" in header, path.name


def test_parameter_matching_options_are_checked_before_anything_loads(tmp_path):
    cfg = compose_train(["method=poly_matched"], output_dir=tmp_path)
    check_config(cfg)
    assert cfg.group.endswith("poly_matched-kMr2-match_cpoly")
    bad = [
        (["method.match_params=nope"], "no method option"),
        (["method=cpoly", "method.match_params=cpoly"], "matched to itself"),
        (["method=cpoly", "method.match_by=rank"], "set method.match_params"),
        (["method=task_lora", "method.match_params=cpoly", "method.match_by=n_skills"], "fixed skill count"),
        (["method=poly", "method.match_params=poly_matched"], "itself parameter-matched"),
    ]
    for overrides, message in bad:
        with pytest.raises(ConfigError, match=message):
            check_config(compose_train(overrides, output_dir=tmp_path))


def test_overrides_reach_the_method(tmp_path):
    cfg = compose_train(["method.n_skills=8", "method.n_task_skills=2", "seed=3"], output_dir=tmp_path)
    assert cfg.run_name == "synthetic-tiny_t5-cpoly-a8b2r2-s3"
    skill = to_object(cfg.method).skill_config(["a", "b"], ["q"])
    assert (skill.n_skills, skill.n_task_skills) == (8, 2)


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("method.n_skils=3", "n_skils"),
        ("method.rank=abc", "rank"),
        ("trainer.max_step=3", "max_step"),
        ("optim.lr=fast", "lr"),
        ("benchmark.n_task=3", "n_task"),
        ("backbone.kind=7", None),
        ("method=lora", "lora"),
        ("sed=1", "sed"),
    ],
)
def test_misspelled_or_mistyped_overrides_fail_at_compose_time(override, fragment, tmp_path):
    if fragment is None:  # well-typed but wrong value: caught by the schema's own validation
        cfg = compose_train([override], output_dir=tmp_path)
        with pytest.raises(ValueError, match="backbone.kind"):
            check_config(cfg)
        return
    with pytest.raises(ConfigCompositionException) as err:
        compose_train([override], output_dir=tmp_path)
    text = str(err.value) + str(err.value.__cause__)
    assert fragment in text


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["method=shared_lora", "optim.router_lr=0.1"], r"optim.router_lr=0.1: method shared_lora has no router"),
        (["method=mhr", "method.n_splits=3"], r"method.n_splits=3: does not divide the input size 128"),
        (["method=poly", "method.n_task_skills=1"], r"method.n_task_skills=1: method poly requires"),
        (["method.mixing=sum"], r"method.mixing='sum'"),
        (["trainer.max_steps=0"], r"trainer.max_steps=0"),
        (["trainer.precision=fp8"], r"trainer.precision='fp8'"),
        (["optim.scheduler=step"], r"optim.scheduler='step'"),
        (["trainer.min_task_mix=1.5"], r"trainer.min_task_mix=1.5: must lie in \[0, 1\]"),
        (["backbone.dropout=1.0"], r"backbone.dropout=1.0 .*: must be null"),
        (["resume=maybe"], r"resume='maybe'"),
    ],
)
def test_cross_field_checks_fail_fast_with_the_key_and_value(overrides, message, tmp_path, monkeypatch):
    """The checks load no weights and no data (shapes come from a meta-device model)."""
    import transformers

    def no_loading(*args, **kwargs):
        raise AssertionError("check_config loaded weights")

    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", no_loading)
    cfg = compose_train(overrides, output_dir=tmp_path)
    with pytest.raises(ConfigError, match=message):
        check_config(cfg)


def test_router_lr_is_accepted_where_there_is_a_router(tmp_path):
    for method in ("poly", "mhr", "cpoly", "moe_lora"):
        check_config(compose_train([f"method={method}", "optim.router_lr=0.1"], output_dir=tmp_path))


WANDB_SWEEPS = sorted((CONF_DIR.parent / "sweeps" / "wandb").glob("*.yaml"))


def test_sweep_files_compose():
    files = sorted((CONF_DIR / "sweep").glob("*.yaml"))
    assert files and WANDB_SWEEPS  # an empty parametrisation below would skip, not fail
    for path in files:
        node = OmegaConf.load(path)
        params = node.hydra.sweeper.params
        assert node.hydra.mode == "MULTIRUN" and params


@pytest.mark.parametrize("path", WANDB_SWEEPS, ids=lambda p: p.stem)
def test_wandb_sweeps_name_real_keys_and_pass_them_as_overrides(path, tmp_path):
    sweep = OmegaConf.to_container(OmegaConf.load(path))
    assert sweep["program"] == "train.py"
    assert "${args_no_hyphens}" in sweep["command"]
    fixed = [a for a in sweep["command"] if "=" in a and not a.startswith("${")]
    first_values = [f"{key}={spec['values'][0]}" for key, spec in sweep["parameters"].items()]
    cfg = compose_train([*fixed, *first_values], output_dir=tmp_path)  # unknown keys would fail here
    check_config(cfg)
    assert sweep["metric"]["name"].startswith("dev/avg/")  # sweeps choose on the dev split, never on test
    metric_key = sweep["metric"]["name"].removeprefix("dev/avg/")
    assert metric_key in ("rougeL", "score", "char_similarity", "exact_match")


METHOD_OPTIONS = sorted(p.stem for p in (CONF_DIR / "method").glob("*.yaml"))


def test_every_registered_method_has_its_option_file():
    """`method=<name>` selects each registered method: conf/method/<name>.yaml names it."""
    from cpoly.config import method_option
    from cpoly.skills.methods import METHODS

    for name in METHODS:
        option = method_option(name)
        assert (option.name, option.method) == (name, name)


@pytest.mark.parametrize("option_name", METHOD_OPTIONS)
def test_each_method_option_holds_only_real_variants(option_name):
    """A method file selects a registered method; every layer setting it states differs from that method's
    registry default (a restated default is a second place for one fact, and could drift)."""
    from cpoly.config import method_option
    from cpoly.skills.methods import METHODS

    option = method_option(option_name)
    assert option.method in METHODS, option_name
    defaults = METHODS[option.method].settings()
    stated = {f: getattr(option, f) for f in defaults if getattr(option, f) is not None}
    assert all(value != defaults[f] for f, value in stated.items()), (option_name, stated)
    assert option.router_lr is None  # the registry's router lr
    if option_name in METHODS:
        assert stated == {}, option_name  # a method's own file only selects it


def test_the_method_schema_has_every_layer_setting():
    """The Hydra schema and SkillConfig read one list of layer settings: every SkillConfig field but what the
    run supplies (tasks, heads) can be set from `method.`."""
    import dataclasses

    from cpoly.config import MethodConfig
    from cpoly.skills import SkillConfig
    from cpoly.skills.settings import LayerSettings

    assert issubclass(MethodConfig, LayerSettings) and issubclass(SkillConfig, LayerSettings)
    layer = {f.name for f in dataclasses.fields(SkillConfig)} - {"task_names", "modules_to_save"}
    assert layer <= {f.name for f in dataclasses.fields(MethodConfig)}
