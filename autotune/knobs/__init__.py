"""How each policy knob touches torch: optimizers and LR schedules, precision, pruning."""
