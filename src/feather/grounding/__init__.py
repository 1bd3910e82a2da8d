"""A synthetic grounding task (coloured shapes on a 6 x 6 grid) and the recipe to train a small
LLaVA on it, so that pruning's localization cost can be measured on a model that localizes.
See docs/evaluation.md for what training reached so far."""
