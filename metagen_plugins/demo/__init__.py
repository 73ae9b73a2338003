"""The demo reasoning task: multi-step integer arithmetic with chain-of-thought, where
test-time scaling is measurable, and the small models trained on it here."""
