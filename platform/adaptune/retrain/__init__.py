"""Scheduled retraining on new company data: one round (drop, training set, sweep, score, decide, merge) under
a lock, scored on a frozen set, promoting the challenger only when it beats the champion by the margin."""
