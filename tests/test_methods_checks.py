"""Every method config refuses a bad value when it is made, naming the setting and its consequence, before any
sampling, scoring or training."""

import pytest

from workbench.methods.adpa import AdpaConfig
from workbench.methods.baselines import BaselineConfig
from workbench.methods.pad import PadConfig
from workbench.methods.plad import PladConfig


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(beta=0.0), r"beta=0.0; the Plackett-Luce reward scale must be a positive"),
        (dict(beta=-1.0, loss="vpd"), r"beta=-1.0"),
        (dict(eval_prompts=0), r"eval_prompts=0: the run would train and then fail to evaluate"),
        (dict(eval_samples=0), r"eval_samples=0"),
        (dict(train_prompts=0), r"train_prompts=0: there would be nothing to train on"),
        (dict(batch_size=0), r"batch_size=0: no optimizer step could be taken"),
        (dict(temperature=0.0), r"temperature=0 samples greedily: the n=4 responses per prompt would be identical"),
        (dict(temperature=-0.5), r"temperature=-0.5"),
    ],
)
def test_pad_config_refuses_at_once(overrides, message):
    with pytest.raises(ValueError, match=message):
        PadConfig(**overrides)


def test_exact_ppd_is_refused_only_beyond_ten_responses_per_group():
    with pytest.raises(ValueError, match=r"loss='ppd' with groups of 11 responses .* use loss='ppd_mc'"):
        PadConfig(n=11)
    with pytest.raises(ValueError, match=r"groups of 12 responses"):
        PadConfig(n=12, m=12)
    assert PadConfig(n=12, m=4).m == 4  # exact PPD over groups of 4 (PAD §4.4)
    assert PadConfig(n=11, loss="ppd_mc").n == 11


@pytest.mark.parametrize(
    "config, overrides, message",
    [
        (AdpaConfig, dict(eval_prompts=0), r"eval_prompts=0"),
        (AdpaConfig, dict(train_prompts=0), r"train_prompts=0"),
        (AdpaConfig, dict(batch_size=0), r"batch_size=0"),
        (PladConfig, dict(eval_prompts=0), r"eval_prompts=0"),
        (PladConfig, dict(batch_size=0), r"batch_size=0"),
        (BaselineConfig, dict(train_prompts=0), r"train_prompts=0"),
        (BaselineConfig, dict(method="dpo", batch_size=0), r"batch_size=0"),
        (BaselineConfig, dict(method="pro", temperature=0.0), r"temperature=0 samples greedily"),
    ],
)
def test_every_method_config_refuses_at_once(config, overrides, message):
    with pytest.raises(ValueError, match=message):
        config(**overrides)


def test_greedy_samples_are_refused_only_where_they_are_ranked():
    with pytest.raises(ValueError, match=r"temperature=0 samples greedily: the n=4"):
        BaselineConfig(method="dpo", temperature=0.0)
    assert BaselineConfig(method="seqkd", temperature=0.0).temperature == 0.0  # its teacher samples have their own
