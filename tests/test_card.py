"""Model cards: one strict parser, defaults that travel with the model, declared sampler and step ranges."""

import subprocess
import sys

import pytest

from derain_cli.card import DEFAULT_SDE, FAST_CALLS, ModelCard, SDESettings, parse_card
from derain_cli.errors import CardError, UsageError


def test_the_card_module_needs_no_torch():
    code = "import sys, derain_cli.card; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_an_empty_card_is_the_universal_models_settings():
    card = parse_card({}, "x.json")
    assert card == ModelCard(sde=SDESettings(**DEFAULT_SDE))
    assert card.step_limits == (1, 100) and card.cascade is None


def test_keys_the_caller_reads_itself_are_ignored_and_others_refused():
    assert parse_card({"unet": {"nf": 8}, "training": {}}, "x.json", ignore=frozenset({"unet", "training"}))
    with pytest.raises(CardError, match=r"x\.json: unknown key 'training'"):
        parse_card({"training": {}}, "x.json")


def test_the_published_models_fast_path_is_mars_at_twenty_calls():
    assert parse_card({}, "x").fast_sampling == ("mr", FAST_CALLS)
    one_step = parse_card({"steps": 1, "samplers": ["posterior"], "steps_range": [1, 1]}, "x")
    assert one_step.fast_sampling == ("posterior", 1)  # already fast: its default
    declared = parse_card({"fast": {"sampler": "ode", "steps": 8}}, "x")
    assert declared.fast_sampling == ("ode", 8)
    slow = parse_card({"samplers": ["posterior"]}, "x")
    with pytest.raises(UsageError, match="--fast: this model has no fast path"):
        slow.fast_sampling


@pytest.mark.parametrize(("raw", "message"), [
    ({"fast": {"sampler": "mr"}}, r"'fast' must be"),
    ({"fast": {"sampler": "ode", "steps": 50}, "steps_range": [1, 10], "steps": 5}, r"the fast sampler 'ode' at 50 steps"),
    ({"samplers": []}, r"'samplers' must be a list of samplers"),
    ({"samplers": ["euler"]}, r"'samplers' must be a list of samplers from \['posterior', 'sde', 'ode', 'mr'\]"),
    ({"steps_range": [5, 2]}, r"'steps_range' must be \[lowest, highest\]"),
    ({"passes": True}, r"'passes' must be a positive number of runs, got True"),
    ({"sde": {"max_sigma": 10}}, r"x sde: missing key 'T'"),
])
def test_bad_cards_name_the_file_and_the_key(raw, message):
    with pytest.raises(CardError, match=message):
        parse_card(raw, "x")


def test_sampling_outside_the_declared_range_is_a_usage_error_naming_the_range():
    card = parse_card({"steps": 1, "samplers": ["posterior"], "steps_range": [1, 1]}, "x")
    card.check_sampling("posterior", 1)
    card.check_sampling(None, None)
    with pytest.raises(UsageError, match=r"--steps 10: this model supports 1..1 steps"):
        card.check_sampling(None, 10)
    with pytest.raises(UsageError, match=r"--sampler mr: this model supports posterior"):
        card.check_sampling("mr", None)
