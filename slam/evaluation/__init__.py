"""Trajectory evaluation: readers, association, Umeyama alignment, ATE/RPE, plots and reports."""
