"""The engine-free half of the host kit (metagen_hooks.hosting): capabilities, seeded streams,
the budget protocol as a Protocol."""

from __future__ import annotations

import pytest

from metagen_hooks import Budget, BudgetExceeded, Capabilities, HostBudget, Seeds, derive_seed
from metagen_hooks.hosting import GENERATION


def test_seeds_number_a_generators_requests_from_the_configured_seed():
    seeds = Seeds(7)
    assert [seeds.next() for _ in range(3)] == [7, 8, 9]
    assert [Seeds(None).next() for _ in range(2)] == [None, None]  # unseeded: the engine draws
    assert Seeds.split(7, 3) == [7, 8, 9] and Seeds.split(None, 2) == [None, None]


def test_derived_seeds_are_stable_and_distinct():
    assert derive_seed(3, "prompt", 0) == derive_seed(3, "prompt", 0)
    assert len({derive_seed(3, "prompt", i) for i in range(100)}) == 100
    assert 0 <= derive_seed("x") < 2**63


def test_derived_seeds_are_the_transformers_hosts_streams():
    """The in-process host's per-request streams are seeded with this same digest."""
    pytest.importorskip("torch")
    from metagen_plugins.hosts.batching import request_generator

    material = (3, "2+2?", 1, 0)
    assert request_generator(material).initial_seed() == derive_seed(*material)


@pytest.mark.parametrize("kwargs, message", [
    ({"stop_strings": "yes"}, "Capabilities.stop_strings must be True or False"),
    ({"concurrency": 0}, "Capabilities.concurrency .* must be an int >= 1"),
    ({"concurrency": True}, "Capabilities.concurrency"),
])
def test_capabilities_reject_what_is_not_a_declaration(kwargs, message):
    with pytest.raises(TypeError, match=message):
        Capabilities(**kwargs)


def test_the_budget_keeps_the_host_budget_protocol():
    """allow before (it may shrink n), charge after; Budget is what hosts are handed."""
    budget: HostBudget = Budget(max_samples=3)
    assert budget.allow(5, 10) == (3, 10)  # fewer than n allowed
    budget.charge(samples=3, tokens_generated=12)
    with pytest.raises(BudgetExceeded):
        budget.allow(1, 10)
    assert {"max_new_tokens", "do_sample", "seed", "token_healing"} == set(GENERATION)
