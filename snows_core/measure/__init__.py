"""Measurement: accuracy (`metrics`), peak memory (`memory`), and the speed of a pruned model (`speed`, with its
torch-free report `speed_report`)."""
