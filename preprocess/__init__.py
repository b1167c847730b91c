"""Stage 1 of sign2text: manifest -> keypoints + text -> sealed cache."""
