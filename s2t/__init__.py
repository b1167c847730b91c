"""Stage 2 of sign2text: cache -> batches -> model/losses -> training, evaluation, translation."""
